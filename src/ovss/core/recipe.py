"""A method is a recipe: a few choices along the shared data flow, plus published presets.

Recipes are frozen dataclasses; presets are dotted-path overrides with the source of every
number, so `ovss methods` can print where each setting came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from .decision import Decision
from .protocol import Protocol
from .registry import ADAPTERS, METHODS, PLUGINS, REFINERS, parse_spec


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a method's output for a given backbone and class list."""

    attention: AttentionRule = AttentionRule()  # last-block attention rule
    surgery: Surgery = Surgery()  # which parts of the last block are kept
    protocol: Protocol = Protocol()  # resize, windows, normalisation
    decision: Decision = Decision()  # logit scale, thresholds
    templates: str = "imagenet80"  # prompt template set (text_bank.TEMPLATE_SETS)
    pos_resize: str = "scale_factor"  # positional-embedding resize rule (backbones.pos_embed)
    refiners: tuple = ()  # pixel-level refiners applied in order (ovss.refine), e.g. (PAMR(),)
    plugins: tuple = ()  # head plug-ins of the dense readout, in order (ovss.heads.dense), e.g. (RCS(), SFR())
    tta: tuple = ()  # test-time adaptation around each call (ovss.core.tta), e.g. (MLMP(),): "mlmp:steps=10"

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Recipe":
        """Apply {"protocol.crop": 0, "attention": "qq+kk", ...}; unknown keys raise KeyError."""
        recipe = self
        for key, value in overrides.items():
            recipe = _replace_path(recipe, key.split("."), value, key)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attention"] = str(self.attention)
        d["refiners"] = [repr(r) for r in self.refiners]
        d["plugins"] = [repr(p) for p in self.plugins]
        d["tta"] = [repr(a) for a in self.tta]
        # settings added later are left out at their defaults, so existing recipes print (and
        # fingerprint their evaluation runs) exactly as before
        for path, default in _LATER_FIELDS:
            *head, last = path
            sub = d
            for k in head:
                sub = sub[k]
            if sub.get(last) == default:
                del sub[last]
        return d


_PARSERS = {AttentionRule: AttentionRule.parse}
_LATER_FIELDS = ((("tta",), []), (("protocol", "squash"), None))


def parse_chain(value: Any, registry) -> tuple:
    """'rcs+sfr:weight=0.6' (or a list of such strings / objects) -> a tuple of instances, in
    order: how recipes, presets and `--set` write head plug-ins and refiners. An item may also be
    the instance's repr ("RCS(layers=(5, 6), scale=2.0, weight=0.3)"), as `Recipe.to_dict` and
    `ovss methods --json` print it, so that output reads back."""
    if isinstance(value, str):
        value = value.strip()
        items = [value] if _is_repr(value) else [v for v in value.replace(" ", "").split("+") if v]
    else:
        items = list(value)
    out = []
    for v in items:
        if not isinstance(v, str):
            out.append(v)
        elif _is_repr(v.strip()):
            out.append(_from_repr(v.strip(), registry))
        elif v.strip():
            out.append(parse_spec(v.replace(" ", ""), registry))
    return tuple(out)


def _is_repr(text: str) -> bool:
    return "(" in text and text.endswith(")") and text.split("(", 1)[0].isidentifier()


def _from_repr(text: str, registry) -> Any:
    """'PAMR(steps=10, dilations=(8, 16))' -> the registered class of that name, built with those
    literal settings (nothing is evaluated but literals)."""
    import ast

    call = ast.parse(text, mode="eval").body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
        raise ValueError(f"cannot read {text!r} as a {registry.kind}: expected Name(key=value, ...)")
    for name in registry:
        cls = registry.get(name)
        if getattr(cls, "__name__", None) == call.func.id:
            return cls(**{k.arg: ast.literal_eval(k.value) for k in call.keywords})
    raise KeyError(f"no registered {registry.kind} class named {call.func.id!r}")


def parse_plugins(value: Any) -> tuple:
    return parse_chain(value, PLUGINS)


def parse_refiners(value: Any) -> tuple:
    return parse_chain(value, REFINERS)


def parse_adapters(value: Any) -> tuple:
    return parse_chain(value, ADAPTERS)


def plugin_spec(item: Any, registry=PLUGINS) -> str:
    """A registered plug-in (or refiner) -> its 'name:key=value,...' string (every field), which
    `parse_plugins` reads back to an equal object; presets store plug-ins this way."""
    name = registry.name_of(item)
    if name is None:
        raise ValueError(f"{type(item).__name__} is not a registered {registry.kind}")

    def fmt(v):
        if isinstance(v, tuple):
            return "|".join(map(str, v))  # a 1-tuple prints as its item; plug-ins accept both
        return str(v)

    args = ",".join(f"{f.name}={fmt(getattr(item, f.name))}" for f in dataclasses.fields(item))
    return f"{name}:{args}" if args else name


_FIELD_PARSERS = {"refiners": parse_refiners, "plugins": parse_plugins, "tta": parse_adapters}


def _replace_path(obj: Any, path: list[str], value: Any, full: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in names:
        raise KeyError(f"unknown setting {full!r}; valid here: {sorted(names)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise KeyError(f"setting {full!r}: {head!r} has no sub-settings")
        value = _replace_path(current, path[1:], value, full)
    elif dataclasses.is_dataclass(current) and isinstance(value, Mapping):
        # a whole sub-setting as a dict (as `Recipe.to_dict` writes it): each key in turn
        for k, v in value.items():
            current = _replace_path(current, [k], v, f"{full}.{k}")
        value = current
    elif dataclasses.is_dataclass(current) and not dataclasses.is_dataclass(value):
        parser = _PARSERS.get(type(current))
        if parser is None or not isinstance(value, str):
            raise TypeError(f"setting {full!r} needs a {type(current).__name__}")
        value = parser(value)
    elif head in _FIELD_PARSERS:
        value = _FIELD_PARSERS[head](value)
    elif isinstance(value, list):  # settings are frozen: lists (JSON, --set) become tuples
        value = tuple(value)
    return dataclasses.replace(obj, **{head: value})


@dataclass(frozen=True)
class Preset:
    """Published settings for one benchmark: overrides plus where each number came from."""

    overrides: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> "repo file:line"
    classes: str | None = None  # a class-name file shipped with ovss (data/classnames), if any
    note: str = ""
    background: bool = False  # class 0 of `classes` is a background class (VOC21, Context60, COCO-Object)
    eval_protocol: str = "mmseg"  # the evaluation protocol `ovss eval` uses with it (ovss.eval.runner.PROTOCOLS)

    @classmethod
    def from_values(cls, values: Mapping[str, tuple[Any, str]], sources: Mapping[str, str] | None = None,
                    **fields: Any) -> "Preset":
        """A preset from `{setting: (value, source)}` (how every method file writes its presets):
        the values become the overrides, their sources the sources, followed by `sources` (what is
        sourced but not a setting, e.g. {"classes": "repo file:line"}); `fields` are the rest."""
        return cls(overrides={k: v for k, (v, _) in values.items()},
                   sources={k: s for k, (_, s) in values.items()} | dict(sources or {}), **fields)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    recipe: Recipe
    summary: str
    paper: str = ""
    code: str = ""  # reference repository
    presets: Mapping[str, Preset] = field(default_factory=dict)
    notes: str = ""

    def resolve(self, preset: str | None = None, overrides: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> Recipe:
        """The recipe with, in order, `base` (what the backbone needs), the preset, `overrides`."""
        recipe = self.recipe.with_overrides(base or {})
        if preset is not None:
            if preset not in self.presets:
                raise KeyError(
                    f"method {self.name!r} has no preset {preset!r}; presets: {sorted(self.presets) or 'none'}"
                )
            recipe = recipe.with_overrides(self.presets[preset].overrides)
        return recipe.with_overrides(overrides or {})


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register a method under `spec.name` (the calling module is recorded as its home)."""
    import sys

    return METHODS.register(spec.name, spec, module=sys._getframe(1).f_globals.get("__name__"))


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.list(pattern)
