"""Pixel-level refiners: applied to per-pixel query logits at the original image size.

A refiner is a frozen dataclass (its settings) with `__call__(logits, guide) -> logits`, where
logits are (1, Q, H, W) cosine logits before the logit scale and guide is the (1, 3, H, W)
normalised network input resized back to the original size (as SCLIP/NACLIP give PAMR).
Refiners compose with any method through `Recipe.refiners` (e.g. `--set refiners=pamr`).
A refiner with `stage = "network"` (LPOSS+) runs on the stitched logits at the network
resolution, before the resize to the original size, with the network input as its guide.

A refiner that needs more than the logits and the guide sets `needs_context = True` and is
called as `refiner(logits, guide, context=RefineContext)`: the context knows the query-to-class
map and hands out backbone features of the whole network input (`tap_values`); a refiner that
declares `taps()` gets them from the readout's own pass when the image is one window.
"""

from __future__ import annotations

from typing import Protocol as _Protocol

import torch

from ..core.registry import REFINERS, parse_spec
from . import chebgr, cluster, lposs, pamr  # noqa: F401  (registration)
from .context import RefineContext


class Refiner(_Protocol):
    def __call__(self, logits: torch.Tensor, guide: torch.Tensor) -> torch.Tensor: ...


def parse_refiner(text: str) -> Refiner:
    """'pamr' or 'pamr:steps=10,dilations=8|16' -> a refiner instance."""
    return parse_spec(text, REFINERS)


__all__ = ["REFINERS", "RefineContext", "Refiner", "parse_refiner"]
