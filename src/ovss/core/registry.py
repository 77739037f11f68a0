"""Every registry of ovss, in one leaf module that imports nothing of ovss.

A registry maps names to things (method specs, head plug-in classes, refiner classes, evaluation
protocols, datasets). Things register themselves where they are defined, by decorator:

    @PLUGINS.register("rcs")
    @dataclass(frozen=True)
    class RCS: ...

A registry is filled lazily: on the first look-up it imports the packages named in `loads`
(whose `__init__` imports their modules), so no module has to import the modules that fill it
and the import graph stays acyclic. Each entry remembers the module that defined it
(`module_of`), which `ovss methods` and error messages print.

`parse_spec` reads the one settings syntax all of them share on the command line:
"name:key=value,key=a|b" ('|' separates the items of a tuple).
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> items of one kind, filled by decorators where the items are defined."""

    def __init__(self, kind: str, loads: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules: dict[str, str] = {}
        self._loads = loads
        self._loaded = not loads

    def register(self, name: str, item: T | None = None, module: str | None = None) -> Any:
        """`register(name, item)` -> item, or `@register(name)` as a decorator. `module`: the
        defining module (default: the class's or function's own, else the caller's)."""
        if item is None:
            def deco(obj: T) -> T:
                self._add(name, obj, module)
                return obj

            return deco
        self._add(name, item, module or _caller_module())
        return item

    def _add(self, name: str, item: Any, module: str | None) -> None:
        if name in self._items:
            raise KeyError(f"{self.kind} {name!r} is already registered (by {self._modules[name]})")
        self._items[name] = item
        if isinstance(item, type) or callable(item) and hasattr(item, "__qualname__"):
            module = item.__module__
        self._modules[name] = module or "?"

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # before importing: the packages register into this registry
            for mod in self._loads:
                importlib.import_module(mod)

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(unknown_name_message(self.kind, name, list(self._items))) from None

    def module_of(self, name: str) -> str:
        """The module that registered `name` (where a reader finds its code)."""
        self._ensure_loaded()
        self.get(name)
        return self._modules[name]

    def name_of(self, item: Any) -> str | None:
        """The name `item` (or its class) is registered under, or None."""
        self._ensure_loaded()
        for n, v in self._items.items():
            if v is item or v is type(item):
                return n
        return None

    def list(self, pattern: str = "*") -> list[str]:
        self._ensure_loaded()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._ensure_loaded()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._items)


def _caller_module() -> str:
    import sys

    return sys._getframe(2).f_globals.get("__name__", "?")


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(sorted(valid))}"


def parse_spec_args(text: str) -> tuple[str, dict[str, Any]]:
    """'pamr:steps=10,dilations=8|16' -> ('pamr', {'steps': 10, 'dilations': (8, 16)})."""
    name, _, args = text.partition(":")
    kwargs: dict[str, Any] = {}
    for part in filter(None, args.split(",")):
        k, _, v = part.partition("=")
        if "|" in v:
            kwargs[k.strip()] = tuple(_literal(x) for x in v.split("|"))
        else:
            kwargs[k.strip()] = _literal(v)
    return name.strip(), kwargs


def _literal(v: str) -> Any:
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v  # a bare word (a name, a path)


def parse_spec(text: str, registry: "Registry[Callable[..., Any]]") -> Any:
    """'name:key=value,...' -> registry.get(name)(**settings)."""
    name, kwargs = parse_spec_args(text)
    return registry.get(name)(**kwargs)


# ---- the registries ----------------------------------------------------------------------------
# Each names the package whose import registers its entries.
METHODS: Registry[Any] = Registry("method", loads=("ovss.methods",))
PLUGINS: Registry[Callable[..., Any]] = Registry("head plug-in", loads=("ovss.heads",))
REFINERS: Registry[Callable[..., Any]] = Registry("refiner", loads=("ovss.refine",))
EVAL_PROTOCOLS: Registry[Any] = Registry("evaluation protocol", loads=("ovss.eval",))
# test-time adaptation (`Recipe.tta`, run around one call by `core.tta`); MLMP's is in heads/mlmp.py
ADAPTERS: Registry[Callable[..., Any]] = Registry("test-time adaptation", loads=("ovss.heads",))
