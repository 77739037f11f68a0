"""One image as the network sees it: the explicit per-image state of a `Segmenter` call.

In the style of segment-anything's predictor: `Segmenter.preprocess(image)` makes it once, and
every readout (`logits`, `features`, the full call) takes it instead of the image. What the
readout's pass leaves for refiners (backbone taps of the whole input) is kept on the state and
handed to them, never looked up elsewhere, so two calls share nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class ImageState:
    """x: (1, 3, h, w) normalised network input; size: (H, W) of the output (the original image);
    mean, std: the normalisation x carries (0-255 scale, RGB), which every guide that un-normalises
    it (PAMR's, LPOSS+'s, a DINO model's input) reads from here; rgb: the original image as given
    (uint8, or float on the 0-255 scale), kept for overlays (None when not kept); features: what the
    readout's pass left for refiners ({"taps": {name: value}, "grid": (h, w)})."""

    x: torch.Tensor
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rgb: np.ndarray | None = None
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def network_size(self) -> tuple[int, int]:
        """(h, w) of the network input: the protocol's resize of the original."""
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    def unnormalized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The network input back on the 0-255 scale (1, 3, h, w)."""
        m = torch.tensor(self.mean, dtype=dtype, device=self.x.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=dtype, device=self.x.device).view(1, 3, 1, 1)
        return self.x.to(dtype) * s + m
