"""Read the tensors of a TorchScript archive as data: nothing in the archive is compiled or run.

OpenAI's released CLIP `.pt` files are TorchScript archives. `torch.jit.load` would compile the
archive's `code/` and call any `__setstate__` it defines while unpickling, so a crafted archive
runs whatever TorchScript it carries (e.g. `torch.from_file(path, True, n)` creates files) the
moment it is opened. This reader gives the same `state_dict()` without any of that:

* `data.pkl` (the module tree) is unpickled by `_ArchiveUnpickler`, whose `find_class` knows only
  what weights need: the tensor-rebuild function, storage dtypes, `OrderedDict`, TorchScript's
  list/type-tag helpers, and `__torch__.*` classes, which become inert `ScriptObject` records of
  their pickled state. Any other global is refused (`UnsafeWeightsError`, naming it). BUILD only
  ever stores state into such a record; no `__setstate__` from anywhere is called.
* Tensor storages are read as raw bytes from the archive's `data/<key>` records (byte-swapped
  when the archive says it was written big-endian on a little-endian host, or the reverse).
* Which attributes are parameters and buffers is declared in `code/` as
  `__parameters__ = [...]` / `__buffers__ = [...]` lines of each `class X(Module):`. Those files
  are scanned as text for these declarations only (the lists are parsed with
  `ast.literal_eval`); no code is compiled, imported or executed.
* A module whose class defines `__setstate__` restores itself by running its own code, so which
  tensors it keeps cannot be known from data: such archives are refused.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from .errors import UnsafeWeightsError, WeightsCorruptError

__all__ = ["ScriptObject", "read_torchscript"]

# `torch <Name>Storage` globals name the dtype of a storage record (TorchScript writes the scalar
# type's name + "Storage"; the first twelve are also torch.save's legacy names).
_STORAGE_NAMES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "ComplexHalfStorage": "complex32", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64", "Float8_e5m2Storage": "float8_e5m2",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2fnuzStorage": "float8_e5m2fnuz",
    "Float8_e4m3fnuzStorage": "float8_e4m3fnuz",
}
STORAGE_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, dt) for name, dt in _STORAGE_NAMES.items() if hasattr(torch, dt)
}
_MAX_DEPTH = 256  # module nesting; real models are a few dozen levels deep at most
_KEY = re.compile(r"[A-Za-z0-9_]+")
_CLASS = re.compile(r"class\s+(\w+)\s*(?:\(\s*([\w.]*)\s*\))?\s*:")
_DECL = re.compile(r"\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")
_SETSTATE = re.compile(r"\s+def\s+__setstate__\s*\(")


class ScriptObject:
    """An instance of a `__torch__.*` class from an archive, reduced to data.

    `qualname` is the TorchScript class name, `state` what the archive recorded for it (the
    attribute dict of a module, or whatever its `__getstate__` returned), `args` the constructor
    arguments in the pickle. Nothing of the archive's class is ever called.
    """

    __slots__ = ("args", "state")
    qualname = ""

    def __new__(cls, *args: Any) -> ScriptObject:  # noqa: PYI034 - typing_extensions is not a dependency
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any) -> None:  # REDUCE calls cls(*args): args are kept by __new__
        pass

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualname})"


@dataclass
class _ClassDecl:
    """What `code/` declares about one TorchScript class (read as text, never compiled)."""

    is_module: bool
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    has_setstate: bool = False


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a `torch.<X>Storage` global: only its dtype matters."""

    dtype: torch.dtype


def _bad(path: Path, what: str) -> WeightsCorruptError:
    return WeightsCorruptError(f"{path}: unreadable TorchScript archive ({what})")


def _unsafe(path: Path, what: str) -> UnsafeWeightsError:
    return UnsafeWeightsError(
        f"{path}: TorchScript archive refused: {what}. ovss reads TorchScript archives as data "
        "only (their tensor records), never runs code from them; convert such weights once, with "
        "code you trust, to a state dict or .safetensors file."
    )


def _as_list(items: Any) -> list:
    """TorchScript's `build_intlist` & co.: typed lists, here plain lists."""
    return list(items)


def _keep_value(value: Any, *_type: Any) -> Any:
    """TorchScript's `restore_type_tag(value, type_str)`: the type tag is dropped."""
    return value


def _device(spec: Any) -> str:
    """A pickled `torch.device(...)` attribute, kept as its string."""
    return str(spec)


class _ArchiveUnpickler(pickle._Unpickler):  # the pure-Python unpickler lets BUILD be overridden
    """Unpickles `data.pkl` into tensors, containers and inert `ScriptObject`s, nothing else."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, path: Path, load_storage: Callable[[str, torch.dtype], torch.UntypedStorage]):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._load_storage = load_storage
        self._classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if module == "__torch__" or module.startswith("__torch__."):
            cls = self._classes.get(full)
            if cls is None:
                cls = type(name, (ScriptObject,), {"__slots__": (), "qualname": full})
                self._classes[full] = cls
            return cls
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle":
            if name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"):
                return _as_list
            if name == "restore_type_tag":
                return _keep_value
        if module == "torch" and name == "device":
            return _device
        raise _unsafe(self._path, f"its data.pkl needs the Python global {full}, which weights never need")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _bad(self._path, f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _bad(self._path, f"storage record {key!r} has no known dtype")
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise _bad(self._path, f"bad storage key {str(key)[:80]!r}")
        return (self._load_storage(key, storage_type.dtype), storage_type.dtype)

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> Tensor:
        """A view of a storage record; requires_grad, hooks and metadata are irrelevant to weights."""
        if not (isinstance(storage, tuple) and len(storage) == 2 and isinstance(storage[0], torch.UntypedStorage)):
            raise _bad(self._path, "a tensor without a storage record")
        ints = [offset, *size, *stride] if isinstance(size, tuple) and isinstance(stride, tuple) else None
        if ints is None or not all(type(i) is int for i in ints) or len(size) != len(stride):
            raise _bad(self._path, "a tensor with a malformed shape")
        untyped, dtype = storage
        # Bounds are checked here: `set_` would silently grow the storage (uninitialised memory).
        n_elements = untyped.nbytes() // torch.empty(0, dtype=dtype).element_size()
        if offset < 0 or any(i < 0 for i in (*size, *stride)):
            raise _bad(self._path, "a tensor with a negative size, stride or offset")
        end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
        if end > n_elements:
            raise _bad(self._path, f"a tensor reaching element {end} of a {n_elements}-element record")
        try:
            return torch.empty(0, dtype=dtype).set_(untyped, offset, size, stride)
        except RuntimeError as e:
            raise _bad(self._path, f"a tensor outside its storage: {str(e).splitlines()[0]}") from e

    def _rebuild_parameter(self, data: Any, *_rest: Any) -> Tensor:
        if not isinstance(data, Tensor):
            raise _bad(self._path, "a parameter without tensor data")
        return data

    def _load_build(self) -> None:
        """BUILD: record the state on an inert ScriptObject; refuse it on anything else."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, ScriptObject):
            raise _unsafe(self._path, f"its data.pkl sets the state of a {type(inst).__name__}")
        if inst.state is not None:
            raise _bad(self._path, f"the state of a {inst.qualname} is set twice")
        inst.state = state

    dispatch[pickle.BUILD[0]] = _load_build


def _scan_classes(zf: zipfile.ZipFile, code_dir: str, path: Path) -> dict[str, _ClassDecl]:
    """Class declarations from `code/**.py`, read as text: `class X(Base):`, its `__parameters__`
    and `__buffers__` lists, and whether it defines `__setstate__`. Qualified names follow the file
    path (`code/__torch__/a/b.py`, class C -> `__torch__.a.b.C`), as the pickle's globals do."""
    classes: dict[str, _ClassDecl] = {}
    for name in zf.namelist():
        if not (name.startswith(code_dir) and name.endswith(".py")):
            continue
        module = name[len(code_dir):-3].replace("/", ".")
        try:
            text = zf.read(name).decode("utf-8")
        except (UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
            raise _bad(path, f"{name}: {e}") from e
        current: _ClassDecl | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if not line[0].isspace():
                m = _CLASS.match(line)
                current = None
                if m:
                    current = _ClassDecl(is_module=m.group(2) == "Module")
                    classes[f"{module}.{m.group(1)}"] = current
                continue
            if current is None:
                continue
            if _SETSTATE.match(line):
                current.has_setstate = True
            m = _DECL.match(line)
            if m:
                try:
                    names = ast.literal_eval(m.group(2))
                except (ValueError, SyntaxError) as e:
                    raise _bad(path, f"{name}: malformed {m.group(1)} list") from e
                if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                    raise _bad(path, f"{name}: malformed {m.group(1)} list")
                if m.group(1) == "__parameters__":
                    current.parameters = names
                else:
                    current.buffers = names
    return classes


def _flatten(root: Any, classes: dict[str, _ClassDecl], path: Path) -> dict[str, Tensor]:
    """The module tree -> `state_dict()` order and names: each module's parameters, then its
    buffers (None entries skipped, as torch does), then its submodules, in attribute order."""
    out: dict[str, Tensor] = {}

    def decl_of(obj: ScriptObject, where: str) -> _ClassDecl:
        decl = classes.get(obj.qualname)
        if decl is None:
            raise _bad(path, f"{where or 'the root'}: class {obj.qualname} is not declared in code/")
        return decl

    def visit(obj: ScriptObject, prefix: str, depth: int, seen: tuple[int, ...]) -> None:
        where = prefix[:-1]
        if depth > _MAX_DEPTH or id(obj) in seen:
            raise _bad(path, f"{where}: module tree nested too deep or cyclic")
        decl = decl_of(obj, where)
        if decl.has_setstate or not isinstance(obj.state, dict):
            raise _unsafe(path, f"module {where or '(root)'} ({obj.qualname}) restores its state by "
                                "running its own __setstate__ code")
        state: dict = obj.state
        tensors = set(decl.parameters) | set(decl.buffers)
        missing = [n for n in tensors if n not in state]
        if missing:
            raise _bad(path, f"{where or 'the root'} declares {missing[0]!r} but its data has none")
        for group in (decl.parameters, decl.buffers):
            members = set(group)
            for name, value in state.items():
                if name not in members or value is None:
                    continue
                if not isinstance(value, Tensor):
                    raise _bad(path, f"{prefix}{name} is a {type(value).__name__}, not a tensor")
                out[prefix + str(name)] = value
        for name, value in state.items():
            if name in tensors or not isinstance(value, ScriptObject):
                continue
            if decl_of(value, prefix + str(name)).is_module:
                visit(value, f"{prefix}{name}.", depth + 1, (*seen, id(obj)))

    if not isinstance(root, ScriptObject) or not decl_of(root, "").is_module:
        raise _bad(path, "data.pkl does not hold a module")
    visit(root, "", 0, ())
    return out


def _archive_dir(names: list[str], path: Path) -> str:
    """The archive's top folder (`<name>/data.pkl`); torch.jit.save always writes one."""
    tops = [n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise _bad(path, "expected exactly one <name>/data.pkl")
    return tops[0]


def read_torchscript(path: str | Path) -> dict[str, Tensor]:
    """The `state_dict()` that `torch.jit.load(path)` would give, read as data (CPU tensors).

    Raises:
        WeightsCorruptError: not a readable TorchScript archive.
        UnsafeWeightsError: the archive needs code to load (a global outside the allow-list, or a
            module restoring its state with its own `__setstate__`).
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _bad(path, str(e)) from e
    with zf:
        names = zf.namelist()
        top = _archive_dir(names, path)
        byteorder = "little"
        if f"{top}byteorder" in names:
            byteorder = zf.read(f"{top}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise _bad(path, f"unknown byteorder {byteorder[:20]!r}")
        swap = byteorder != sys.byteorder
        storages: dict[str, tuple[torch.UntypedStorage, int]] = {}

        def load_storage(key: str, dtype: torch.dtype) -> torch.UntypedStorage:
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if key in storages:
                storage, swapped_as = storages[key]
                if swap and itemsize > 1 and swapped_as != itemsize:
                    raise _bad(path, f"storage {key} is used with two element sizes")
                return storage
            record = f"{top}data/{key}"
            try:
                info = zf.getinfo(record)
                buf = torch.empty(info.file_size, dtype=torch.uint8)
                view = memoryview(buf.numpy()).cast("B")
                with zf.open(info) as f:
                    got = 0
                    while got < info.file_size:
                        n = f.readinto(view[got:])
                        if not n:
                            break
                        got += n
                    f.read(1)  # reach the end so zipfile checks the record's CRC
            except KeyError as e:
                raise _bad(path, f"missing tensor record {record}") from e
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise _bad(path, f"{record}: {e}") from e
            if got != info.file_size or info.file_size % itemsize:
                raise _bad(path, f"{record}: truncated tensor record")
            if swap and itemsize > 1:
                buf = buf.view(-1, itemsize).flip(1).contiguous().view(-1)
            storage = buf.untyped_storage()
            storages[key] = (storage, itemsize)
            return storage

        try:
            data = zf.read(f"{top}data.pkl")
        except (zipfile.BadZipFile, OSError) as e:
            raise _bad(path, f"data.pkl: {e}") from e
        classes = _scan_classes(zf, f"{top}code/", path)
        try:
            root = _ArchiveUnpickler(data, path, load_storage).load()
        except WeightsCorruptError:
            raise
        except Exception as e:  # any other failure of malformed bytes means "corrupt"
            raise _bad(path, f"data.pkl: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return _flatten(root, classes, path)
