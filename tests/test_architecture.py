"""The package's shape: no import cycles, a small top level, leaf registries, and a registry-wide
sweep (every method x preset resolves, cites files, reads back through `--set`)."""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path

import pytest

import ovss
from ovss.core.recipe import Recipe, get_method, list_methods, parse_plugins, plugin_spec
from ovss.core.registry import METHODS, PLUGINS, REFINERS

PKG = Path(ovss.__file__).parent
GOLDEN = Path(__file__).parent / "golden"


# ---- imports --------------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """ovss modules `name` imports, at module level or inside functions; imports under
    `if TYPE_CHECKING:` never run and are not counted."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets = []
        if isinstance(node, ast.ImportFrom):
            mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != name:
                found.add(t)
    return found


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import (function-level ones included).
    A package `__init__` importing its own submodules is the one allowed back edge; a submodule
    importing its package's `__init__` back would then be a cycle, and is reported."""
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v, counter=[0]):  # noqa: B006  (a counter shared across calls)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_registries_import_nothing_of_ovss():
    mods = _modules()
    assert _imports("ovss.core.registry", mods["ovss.core.registry"], mods) == set()


def test_the_top_level_is_small():
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 12, entries


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if ast.get_docstring(ast.parse(p.read_text())) is None
               and p.name != "__main__.py"]
    assert not missing, missing


# ---- the registry sweep -------------------------------------------------------------------------
def _method_presets():
    return [(m, p) for m in list_methods() for p in [None, *get_method(m).presets]]


@pytest.mark.parametrize("method,preset", _method_presets())
def test_every_method_and_preset_resolves_and_reads_back(method, preset):
    """The resolved recipe; its `to_dict` (what `ovss methods --json` prints) read back through the
    `--set` parser gives the same recipe; every plug-in string round-trips."""
    r = get_method(method).resolve(preset)
    assert Recipe().with_overrides(json.loads(json.dumps(r.to_dict()))) == r
    for p in r.plugins:
        assert parse_plugins(plugin_spec(p)) == (p,)
    from ovss.apps.cli import parse_overrides

    # the CLI's own KEY=VALUE path too, for every override of the preset
    if preset is not None:
        over = get_method(method).presets[preset].overrides
        args = [f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in over.items()]
        assert get_method(method).resolve(None, parse_overrides(args)) == r


@pytest.mark.parametrize("method", list_methods())
def test_every_preset_number_names_its_source_file_and_class_file(method):
    spec = get_method(method)
    for name, preset in spec.presets.items():
        for key in preset.overrides:
            src = preset.sources.get(key)
            assert src, f"{method}/{name}: {key} has no source"
            # a source names a file of the reference (path with an extension) or its README
            assert re.search(r"[\w./*-]+\.(py|yaml|yml|sh|md|txt|json|cfg)\b|README", src), (method, name, key, src)
        if preset.classes is not None:
            assert (PKG / "data" / "classnames" / preset.classes).is_file(), (method, name, preset.classes)


def test_registries_know_where_each_entry_is_defined():
    for reg in (METHODS, PLUGINS, REFINERS):
        for name in reg:
            mod = reg.module_of(name)
            assert mod.startswith("ovss."), (reg.kind, name, mod)
            folder = {"method": "methods", "head plug-in": "heads", "refiner": "refine"}[reg.kind]
            assert mod.split(".")[1] == folder, (reg.kind, name, mod)


def test_methods_json_is_unchanged_for_the_methods_it_had():
    """`ovss methods --json` of the methods registered when the layout was restructured, as it
    was then (tests/golden/methods_registry.json.gz: that command's output before the change):
    a change of any preset, source or recipe shows here and must be deliberate."""
    from ovss.apps.cli import _method_dict

    before = json.loads(gzip.decompress((GOLDEN / "methods_registry.json.gz").read_bytes()))
    now = {n: json.loads(json.dumps(_method_dict(get_method(n)))) for n in before}
    changed = [n for n in before if before[n] != now[n]]
    assert not changed, changed


# ---- plug-ins ---------------------------------------------------------------------------------------
def test_conflicting_plugins_are_an_error_naming_both():
    from ovss.heads.plugin import check_plugins

    with pytest.raises(ValueError, match="SelfCalibration.*ProxyHead|ProxyHead.*SelfCalibration"):
        check_plugins(parse_plugins("selfcal+proxy"))
    with pytest.raises(ValueError, match="LPOSSHead.*CASSHead|CASSHead.*LPOSSHead"):
        check_plugins(parse_plugins("lposs+cass"))
    with pytest.raises(ValueError, match="CASSHead.*RCS"):
        check_plugins(parse_plugins("cass+rcs"))
    with pytest.raises(TypeError, match="not a head plug-in"):
        check_plugins(("rcs",))
    assert len(check_plugins(parse_plugins("rcs+sfr+presence"))) == 3


def test_plugins_declare_their_hooks():
    from ovss.heads.plugin import HOOKS, HeadPlugin

    for name in PLUGINS:
        cls = PLUGINS.get(name)
        assert issubclass(cls, HeadPlugin) and cls.hooks, name
        assert cls.hooks <= set(HOOKS)
    assert PLUGINS.get("rcs").hooks == {"taps", "mixes"}
    assert PLUGINS.get("cass").hooks == {"joint_slide"}


def test_a_new_method_in_one_file(tmp_path, monkeypatch):
    """docs/architecture.md's worked example, run as written from a module outside the package:
    a plug-in and a method registered without editing any file of ovss."""
    import sys

    import numpy as np

    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    code = re.search(r"```python\n(# my_method\.py\n.*?)```", doc, re.S).group(1)
    (tmp_path / "my_method_doc_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    if "my_method_doc_example" not in sys.modules:
        __import__("my_method_doc_example")
    assert METHODS.module_of("sharpened-naclip") == "my_method_doc_example"
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    seg = ovss.load("sharpened-naclip", backbone="tiny-synthetic", device="cpu")
    plain = ovss.load("naclip", backbone="tiny-synthetic", device="cpu", overrides={"refiners": ""})
    a = seg.logits(image, "sky, grass")
    assert a.shape == (2, 48, 64) and not np.allclose(a.numpy(), plain.logits(image, "sky, grass").numpy())
    strong = ovss.load("naclip", backbone="tiny-synthetic", device="cpu", overrides={"plugins": "sharpen:weight=0.5"})
    assert strong.recipe.plugins[0].weight == 0.5
