"""A method is a recipe: a few choices along the shared data flow, plus published presets.

Recipes are frozen dataclasses; presets are dotted-path overrides with the source of every
number, so `ovss methods` can print where each setting came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .._registry import Registry
from ..attention import AttentionRule
from ..dense import Surgery
from ..inference import Decision, Protocol


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
    plugins: tuple = ()  # head plug-ins of the dense readout, in order (ovss.dense), e.g. (RCS(), SFR())

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
        return d


_PARSERS = {AttentionRule: AttentionRule.parse}


def _parse_refiners(value: Any) -> tuple:
    from ..refine import parse_refiner

    # "pamr+lposs_plus:r=5": several refiners, applied in order (as plug-ins are written)
    items = value.replace(" ", "").split("+") if isinstance(value, str) else list(value)
    return tuple(parse_refiner(v) if isinstance(v, str) else v for v in items if v != "")


def _parse_plugins(value: Any) -> tuple:
    from ..dense import parse_plugins

    return parse_plugins(value)


_FIELD_PARSERS = {"refiners": _parse_refiners, "plugins": _parse_plugins}


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
    elif dataclasses.is_dataclass(current) and not dataclasses.is_dataclass(value):
        parser = _PARSERS.get(type(current))
        if parser is None or not isinstance(value, str):
            raise TypeError(f"setting {full!r} needs a {type(current).__name__}")
        value = parser(value)
    elif head in _FIELD_PARSERS:
        value = _FIELD_PARSERS[head](value)
    elif isinstance(current, tuple) and isinstance(value, list):
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
    eval_protocol: str = "mmseg"  # the evaluation protocol `ovss eval` uses with it (ovss.evaluate.PROTOCOLS)


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


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.register(spec.name, spec)


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.list(pattern)
