"""Pixel-level refiners: applied to per-pixel query logits at the original image size.

A refiner is a frozen dataclass (its settings) with `__call__(logits, guide) -> logits`, where
logits are (1, Q, H, W) cosine logits before the logit scale and guide is the (1, 3, H, W)
normalised network input resized back to the original size (as SCLIP/NACLIP give PAMR).
Refiners compose with any method through `Recipe.refiners` (e.g. `--set refiners=pamr`).
"""

from __future__ import annotations

from typing import Callable, Protocol as _Protocol

import torch

from .._registry import Registry


class Refiner(_Protocol):
    def __call__(self, logits: torch.Tensor, guide: torch.Tensor) -> torch.Tensor: ...


# name -> constructor taking keyword settings, for parsing "pamr" / "pamr:steps=10,dilations=8|16"
REFINERS: Registry[Callable[..., Refiner]] = Registry("refiner")


def parse_refiner(text: str) -> Refiner:
    """'pamr' or 'pamr:steps=10,dilations=8|16' -> a refiner instance."""
    import ast

    name, _, args = text.partition(":")
    kwargs = {}
    for part in filter(None, args.split(",")):
        k, _, v = part.partition("=")
        if "|" in v:
            kwargs[k.strip()] = tuple(ast.literal_eval(x) for x in v.split("|"))
        else:
            try:
                kwargs[k.strip()] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                kwargs[k.strip()] = v
    return REFINERS.get(name.strip())(**kwargs)


from . import pamr as _pamr  # noqa: F401  (registers "pamr")
