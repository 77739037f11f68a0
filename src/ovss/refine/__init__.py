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

from typing import Callable
from typing import Protocol as _Protocol

import torch

from .._registry import Registry


class Refiner(_Protocol):
    def __call__(self, logits: torch.Tensor, guide: torch.Tensor) -> torch.Tensor: ...


class RefineContext:
    """What context-aware refiners see for one image.

    visual: the image tower; x: the (1, 3, h, w) normalised network input (the whole image);
    query_to_class, num_classes: the class list's query map (None: one query per class);
    cache: {"grid": (h, w), "taps": {name: value}} left by the readout's pass when the whole
        image was one window (`Tap` values under the names refiners gave them).
    """

    def __init__(self, visual, x: torch.Tensor, query_to_class=None, num_classes: int | None = None,
                 cache: dict | None = None, pos_resize: str | None = None):
        self.visual, self.x = visual, x
        self.query_to_class = None if query_to_class is None else list(query_to_class)
        self.num_classes = num_classes
        self.cache = cache if cache is not None else {}
        self.pos_resize = pos_resize

    @torch.no_grad()
    def tap_values(self, taps: dict) -> tuple[dict, tuple[int, int]]:
        """{name: Tap} -> ({name: value}, grid) for the whole network input: from the readout's
        pass when it left them, else from one more backbone pass (kept for the next refiner)."""
        have = self.cache.setdefault("taps", {})
        missing = {k: t for k, t in taps.items() if k not in have}
        if missing:
            out = self.visual.forward_tokens(self.x, pos_resize=self.pos_resize, taps=missing)
            have.update(out.taps)
            self.cache.setdefault("grid", out.grid)
        return {k: have[k] for k in taps}, self.cache["grid"]


# name -> constructor taking keyword settings, for parsing "pamr" / "pamr:steps=10,dilations=8|16"
REFINERS: Registry[Callable[..., Refiner]] = Registry("refiner")


def parse_refiner(text: str, registry: Registry | None = None) -> Refiner:
    """'pamr' or 'pamr:steps=10,dilations=8|16' -> a refiner instance (`registry`: another
    registry of settings classes read with the same syntax, e.g. head plug-ins)."""
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
    return (REFINERS if registry is None else registry).get(name.strip())(**kwargs)


from . import cluster as _cluster  # noqa: F401  (registers "cluster")
from . import lposs as _lposs  # noqa: F401  (registers "lposs_plus")
from . import pamr as _pamr  # noqa: F401  (registers "pamr")
