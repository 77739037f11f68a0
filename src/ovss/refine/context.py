"""What context-aware refiners see for one image (see `ovss.refine`)."""

from __future__ import annotations

import torch


class RefineContext:
    """What context-aware refiners see for one image.

    visual: the image tower; x: the (1, 3, h, w) normalised network input (the whole image);
    query_to_class, num_classes: the class list's query map (None: one query per class);
    cache: {"grid": (h, w), "taps": {name: value}} left by the readout's pass when the whole
        image was one window (`Tap` values under the names refiners gave them): the image
        state's `features`.
    mean, std: the normalisation of x and of the guide (0-255 scale), for refiners that
        un-normalise the guide (LPOSS+).
    """

    def __init__(self, visual, x: torch.Tensor, query_to_class=None, num_classes: int | None = None,
                 cache: dict | None = None, pos_resize: str | None = None,
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None):
        self.visual, self.x = visual, x
        self.mean, self.std = mean, std  # the normalisation x (and the guide) carry, 0-255 scale
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
