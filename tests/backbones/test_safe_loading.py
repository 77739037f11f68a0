"""Weights are read as data only, in every format, and non-finite weights are refused.

The crafted archives here really do run code under `torch.jit.load` (each test that relies on
that checks it first), so a loader that fell back to it would fail by leaving a marker file.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_formats import TINY, OpenAILike, canonical_to_openai, random_clip_state, sample_images
from torch import nn

from ovss.backbones.convert import (
    NonFiniteWeightsError,
    PickleRefusedError,
    UnsafeWeightsError,
    WeightsCorruptError,
    load_canonical,
    read_state,
)
from ovss.backbones.factory import create_clip
from ovss.backbones.torchscript import read_torchscript

MARKER_BYTES = 16  # torch.from_file(path, True, 16) creates a 16-float file


# ----------------------------------------------------------------------------------------------
# Crafted TorchScript payloads (scripted from this file's source)


class TuplePayload(nn.Module):
    """A module whose `__setstate__` writes a file; its state is a tuple holding the path."""

    def __init__(self, target: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.target = state[1]
        self.training = state[2]
        written = torch.from_file(state[1], True, 16)
        self.weight = state[0] + written[:2] * 0.0


class DictPayload(nn.Module):
    """The same, with a dict state (so only the class's own __setstate__ gives it away)."""

    def __init__(self, target: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.target = torch.tensor([ord(c) for c in target], dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "target": self.target}

    @torch.jit.export
    def __setstate__(self, state: dict[str, torch.Tensor]) -> None:
        self.target = state["target"]
        self.training = False
        path = "".join([chr(int(c)) for c in self.target])
        written = torch.from_file(path, True, 16)
        self.weight = state["weight"] + written[:2] * 0.0


class NestedPayload(nn.Module):
    """A payload deep in an otherwise ordinary model."""

    def __init__(self, target: str):
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.blocks = nn.Sequential(nn.Linear(2, 2), TuplePayload(target))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.proj(x))


class ObjectPayload:
    """A TorchScript class (not a module) whose `__setstate__` writes a file."""

    def __init__(self, target: str):
        self.target = target

    def __getstate__(self) -> tuple[str, int]:
        return (self.target, 0)

    def __setstate__(self, state: tuple[str, int]) -> None:
        written = torch.from_file(state[0], True, 16)
        self.target = state[0] + str(int(written.numel()))


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.jit is deprecated
    ObjectPayload = torch.jit.script(ObjectPayload)  # a TorchScript class from now on


class HoldsObjectPayload(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.payload = ObjectPayload(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


PAYLOADS = {"tuple_state": TuplePayload, "dict_state": DictPayload, "nested": NestedPayload}


def _script_save(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.script(module).save(str(path))
    return path


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")


def _assert_same_state(ours: dict, ref: dict) -> None:
    """Byte copies: same keys in the same order, same dtype/shape/strides, equal values."""
    assert list(ours) == list(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape and ours[k].stride() == v.stride(), k
        assert torch.equal(ours[k], v), k


# ----------------------------------------------------------------------------------------------
# Malicious TorchScript archives


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_really_runs_under_torch_jit_load(tmp_path, kind):
    """The premise of the tests below: torch.jit.load executes the archive's __setstate__."""
    marker = tmp_path / "proof.bin"
    archive = _script_save(PAYLOADS[kind](str(marker)), tmp_path / "payload.pt")
    assert not marker.exists()  # scripting and saving run nothing
    _jit_load(archive)
    assert marker.exists() and marker.stat().st_size == 4 * MARKER_BYTES


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_archive_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "marker.bin"
    archive = _script_save(PAYLOADS[kind](str(marker)), tmp_path / "ViT-B-16.pt")
    with pytest.raises(UnsafeWeightsError, match="__setstate__") as e:
        create_clip(str(archive))
    assert str(archive) in str(e.value) and "Payload" in str(e.value)
    with pytest.raises(UnsafeWeightsError):
        read_state(archive, trust_pickle=True)  # trusting pickles never runs archive code either
    with pytest.raises(UnsafeWeightsError):
        read_torchscript(archive)
    assert not marker.exists()


def test_payload_in_a_plain_object_is_never_run(tmp_path):
    """A non-module object's __setstate__ cannot change the weights: they load, as inert data."""
    marker = tmp_path / "marker.bin"
    archive = _script_save(HoldsObjectPayload(str(marker)), tmp_path / "holder.pt")
    state = read_torchscript(archive)
    assert not marker.exists()
    _assert_same_state(state, _jit_load(archive).state_dict())  # (this call writes the marker)
    assert marker.exists()


def _rewrite(archive: Path, out: Path, replace: dict[str, bytes]) -> Path:
    """A copy of a zip archive with some records' bytes replaced (stored uncompressed, as torch does)."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, replace.get(name, src.read(name)))
    return out


class _Exec:
    """Pickles to `builtins.exec(code)`: unpickling it runs `code`."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        import builtins

        return (builtins.exec, (self.code,))


def _exec_payload(marker: Path) -> _Exec:
    return _Exec(f"open({str(marker)!r}, 'w').write('pwned')")


def test_payload_really_runs_under_pickle(tmp_path):
    marker = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_exec_payload(marker), protocol=2))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL `__builtin__ exec` / STACK_GLOBAL builtins.exec
def test_archive_with_foreign_global_is_refused_by_name(tmp_path, protocol):
    """data.pkl itself replaced by a reduce to exec: refused, naming the global; nothing runs."""
    marker = tmp_path / "marker.txt"
    genuine = _script_save(nn.Linear(2, 2), tmp_path / "lin.pt")
    top = zipfile.ZipFile(genuine).namelist()[0].split("/")[0]
    evil = _rewrite(genuine, tmp_path / "evil.pt",
                    {f"{top}/data.pkl": pickle.dumps(_exec_payload(marker), protocol=protocol)})
    with pytest.raises(UnsafeWeightsError, match=r"global (__builtin__|builtins)\.exec"):
        read_state(evil)
    with pytest.raises(UnsafeWeightsError, match=r"\.exec"):
        create_clip(str(evil), trust_pickle=True)
    assert not marker.exists()


@pytest.mark.parametrize("container", ["plain_pickle", "torch_save_zip"])
def test_pickle_payload_is_refused(tmp_path, container):
    marker = tmp_path / "marker.txt"
    f = tmp_path / "pytorch_model.bin"
    if container == "plain_pickle":
        f.write_bytes(pickle.dumps({"w": torch.zeros(2), "x": _exec_payload(marker)}, protocol=4))
    else:
        torch.save({"w": torch.zeros(2), "x": _exec_payload(marker)}, f)
    assert not marker.exists()
    with pytest.raises(PickleRefusedError, match="exec"):
        read_state(f)
    with pytest.raises(PickleRefusedError):
        create_clip(str(f.parent))  # a hub-style folder goes through the same reader
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Genuine archives: the same state dict as torch.jit.load, byte for byte


def _trace_openai(state: dict, path: Path, half: bool = False) -> Path:
    """OpenAI's archive layout: a traced model with OpenAI's attribute names (fp16, like theirs)."""
    model = OpenAILike(TINY)
    model.load_state_dict(state, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, and tracing warns about shapes
        traced = torch.jit.trace(model.eval(), sample_images()[:1])
        if half:
            traced.half()
        traced.save(str(path))
    return path


@pytest.fixture(scope="module")
def openai_archives(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archives")
    state = canonical_to_openai(random_clip_state(TINY, seed=0))
    return {"fp32": _trace_openai(state, root / "fp32.pt"),
            "fp16": _trace_openai(state, root / "fp16.pt", half=True)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_openai_archive_matches_torch_jit_load(openai_archives, precision):
    path = openai_archives[precision]
    ours = read_torchscript(path)
    _assert_same_state(ours, _jit_load(path).state_dict())
    assert "input_resolution" in ours and ours["visual.conv1.weight"].dtype == getattr(torch, {
        "fp32": "float32", "fp16": "float16"}[precision])
    _, meta = read_state(path)
    assert meta["torchscript"] and meta["format"] == "openai" and meta["act"] == "quick_gelu"
    canon, _ = load_canonical(path)
    base = random_clip_state(TINY, seed=0)
    assert sorted(canon) == sorted(base)
    for k, v in base.items():
        assert torch.equal(canon[k].float(), v), k  # the fixtures round values through fp16


class _Odd(nn.Module):
    """Storage layouts a plain state dict rarely has: views at an offset, transposes, tied
    weights, other dtypes, a non-persistent buffer, a None buffer, a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        base = torch.randn(6, 8)
        self.a = nn.Parameter(base[2:4])
        self.register_buffer("t", base.t())
        self.register_buffer("bf", torch.randn(5).bfloat16())
        self.register_buffer("i8", torch.arange(5, dtype=torch.int8))
        self.register_buffer("flags", torch.tensor([True, False]))
        self.register_buffer("scalar", torch.tensor(3.5, dtype=torch.float64))
        self.register_buffer("empty", torch.empty(0, 3))
        self.register_buffer("transient", torch.ones(2), persistent=False)
        self.register_buffer("nothing", None)
        self.plain = torch.randn(3)  # not a parameter or buffer: not in state_dict
        self.emb = nn.Embedding(4, 8)
        self.head = nn.Linear(8, 4, bias=False)
        self.head.weight = self.emb.weight
        self.twice = self.head  # one module under two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + self.a.sum() + self.t.sum() + self.plain.sum() + self.twice(x)


def test_unusual_layouts_match_torch_jit_load(tmp_path):
    path = _script_save(_Odd(), tmp_path / "odd.pt")
    ours = read_torchscript(path)
    _assert_same_state(ours, _jit_load(path).state_dict())
    assert "plain" not in ours and "nothing" not in ours and "twice.weight" in ours


def test_big_endian_archive(tmp_path):
    """Records of an archive written on a big-endian machine are byte-swapped on reading."""
    path = _script_save(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), tmp_path / "little.pt")
    expected = read_torchscript(path)
    assert all(v.dtype == torch.float32 for v in expected.values())
    with zipfile.ZipFile(path) as zf:
        top = zf.namelist()[0].split("/")[0]
        swapped = {n: bytes(torch.frombuffer(bytearray(zf.read(n)), dtype=torch.uint8).view(-1, 4).flip(1)
                            .contiguous().numpy().tobytes())
                   for n in zf.namelist() if n.startswith(f"{top}/data/")}
    big = _rewrite(path, tmp_path / "big.pt", {**swapped, f"{top}/byteorder": b"big"})
    _assert_same_state(read_torchscript(big), expected)


def test_corrupt_archives(openai_archives, tmp_path):
    path = openai_archives["fp32"]
    data = path.read_bytes()
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsCorruptError, match="truncated"):
        read_state(cut)
    with zipfile.ZipFile(path) as zf:
        top = zf.namelist()[0].split("/")[0]
        record = max((i for i in zf.infolist() if i.filename.startswith(f"{top}/data/")), key=lambda i: i.file_size)
        short = zf.read(record)[:-4]  # one float32 short: a tensor must not reach past its record
    bad = _rewrite(path, tmp_path / "short_record.pt", {record.filename: short})
    with pytest.raises(WeightsCorruptError, match="TorchScript archive.*element"):
        read_state(bad)
    odd = _rewrite(path, tmp_path / "odd_record.pt", {record.filename: short[:-1]})
    with pytest.raises(WeightsCorruptError, match="truncated tensor record"):
        read_state(odd)
    garbage = _rewrite(path, tmp_path / "garbage.pt", {f"{top}/data.pkl": os.urandom(512)})
    with pytest.raises(WeightsCorruptError, match="TorchScript"):
        read_state(garbage)


# ----------------------------------------------------------------------------------------------
# Non-finite weights


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_safetensors_refused(tmp_path, bad):
    state = canonical_to_openai(random_clip_state(TINY, seed=0))
    if bad == "nan":
        state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
        key, kind = "visual.proj", "NaN"
    else:
        state["ln_final.weight"] = state["ln_final.weight"].clone()
        state["ln_final.weight"][3] = float("-inf")
        key, kind = "ln_final.weight", "Inf"
    f = tmp_path / "model.safetensors"
    save_file(state, str(f))
    with pytest.raises(NonFiniteWeightsError, match=kind) as e:
        create_clip(str(f))
    assert repr(key) in str(e.value) and str(f) in str(e.value)
    with pytest.raises(NonFiniteWeightsError, match=repr(key)):
        read_state(f)


def test_non_finite_refused_in_every_format(tmp_path):
    clean = canonical_to_openai(random_clip_state(TINY, seed=0))
    state = dict(clean)
    state["text_projection"] = state["text_projection"].clone()
    state["text_projection"][0, 0] = float("nan")
    pt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in state.items()}}, pt)
    with pytest.raises(NonFiniteWeightsError, match="'text_projection'"):
        read_state(pt)
    archive = _trace_openai({**clean, "logit_scale": torch.tensor(float("inf"))}, tmp_path / "jit.pt", half=True)
    with pytest.raises(NonFiniteWeightsError, match="'logit_scale'"):
        create_clip(str(archive))


def test_causal_mask_may_hold_inf(tmp_path):
    """-inf in a causal attention-mask buffer is what masks are made of, not a broken weight."""
    state = canonical_to_openai(random_clip_state(TINY, seed=0))
    state["attn_mask"] = torch.full((77, 77), float("-inf")).triu_(1)
    f = tmp_path / "with_mask.safetensors"
    save_file(state, str(f))
    canon, _ = load_canonical(f)
    assert "attn_mask" not in canon and torch.isfinite(canon["visual.proj"]).all()


def test_integer_tensors_are_not_checked(tmp_path):
    state = canonical_to_openai(random_clip_state(TINY, seed=0))
    state["vocab_size"] = torch.tensor(600)
    f = tmp_path / "ints.pt"
    torch.save(state, f)
    raw, meta = read_state(f)
    assert meta["format"] == "openai" and raw["vocab_size"].item() == 600
