"""LPOSS+ pixel-level label propagation as a refiner (Stojnic, Kalantidis, Tolias, CVPR 2025).

vladan-stojnic/LPOSS@e489a7445528922ddfe4e39631ef2fe34827c873,
segmentation/evaluation/lposs_eval.py:
- pixel graph on the resized input (lines 106-135, 138-156): RGB in [0, 1] -> CIE-Lab (kornia
  `rgb_to_lab`), divided by (100, 128, 128); every pixel linked to the (r x r) - 1 others of its
  window (neigh = r // 2, line 348), weight exp(-|lab_u - lab_v|_2 / tau);
- the symmetric normalisation with zero degrees set to 1 (`normalize_connection_graph`, 37-48);
- (I - alpha W) Z = Y per class by CuPy's CG with x0 = 0, tol 1e-6, maxiter 10 (`dfs_search`,
  `perform_lp`, lines 89-103), in float64 (`eye(N) - alpha * Wn` is float64 there, its entries
  the float32 `alpha * Wn`; `graphs.PixelGraph` rounds them the same way); the float64 result is
  returned as it is at the network stage, and `inference.upsample` resizes it in float64 as the
  reference's final resize does (lines 356-361);
- hyper-parameters alpha 0.95, tau 0.01, r 13 (configs/lposs_plus.yaml).
Seeds are whatever logits the method hands over (LPOSS: its patch-level LP, upsampled).

`stage="network"` (default) runs it on the stitched logits at the network resolution, before the
resize to the original size, as LPOSS does; "full" runs it at the original size like PAMR.
The pixel graph is applied matrix-free (`graphs.PixelGraph`), so memory is O(Q x H x W) plus
the weight maps when they fit the cache budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.registry import REFINERS
from ..ops.graphs import PixelGraph, lab_guide, propagate


@REFINERS.register("lposs_plus")
@dataclass(frozen=True)
class LPOSSPlus:
    """Pixel label propagation on a Lab colour graph of the guide image.

    alpha, tau, r: propagation weight, colour kernel width, window side (odd).
    maxiter: CG steps (10 as LPOSS); solver: "cg" | "exact" | "chebyshev".
    mean, std: the normalisation the guide carries (0-255 scale), undone to get RGB in [0, 1];
        None (the default): the image's own, from the Segmenter (so the refiner composes onto
        any preset, CLIP- or ImageNet-normalised).
    stage: "network" (LPOSS's place: before the resize to the original size) or "full".
    """

    alpha: float = 0.95
    tau: float = 0.01
    r: int = 13
    maxiter: int = 10
    solver: str = "cg"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    stage: str = "network"

    # lposs_plus.output (Q, h, w): the pixel-propagated scores (recorded by `Segmenter.refine`)
    trace_names: ClassVar[tuple[str, ...]] = ("lposs_plus.output",)

    def __post_init__(self):
        if self.stage not in ("network", "full"):
            raise ValueError(f"unknown LPOSS+ stage {self.stage!r}; expected 'network' or 'full'")

    needs_context = True  # for the image's normalisation when mean/std are not set

    def rgb(self, guide: torch.Tensor, mean=None, std=None) -> torch.Tensor:
        """The guide back to RGB in [0, 1]. At the network stage the guide is the network input,
        a uint8 image normalised, so the 0-255 values are rounded back to those integers (the
        colour kernel exp(-d / 0.01) would magnify the float round trip)."""
        mean = self.mean if self.mean is not None else mean
        std = self.std if self.std is not None else std
        if mean is None or std is None:
            raise ValueError("LPOSS+ needs the guide's normalisation: run it through a Segmenter or set mean/std")
        m = torch.tensor(mean, dtype=torch.float64, device=guide.device).view(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float64, device=guide.device).view(-1, 1, 1)
        v = guide.double() * s + m
        if self.stage == "network":
            v = v.round()
        return (v / 255.0).to(guide.dtype)

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, guide: torch.Tensor, context=None) -> torch.Tensor:
        _, q, h, w = logits.shape
        mean, std = (context.mean, context.std) if context is not None else (None, None)
        graph = PixelGraph(lab_guide(self.rgb(guide[0], mean, std)), neigh=self.r // 2, tau=self.tau)
        y = logits[0].permute(1, 2, 0).reshape(h * w, q)
        z = propagate(graph, y.double(), self.alpha, self.solver, self.maxiter)
        z = z.reshape(h, w, q).permute(2, 0, 1)[None]
        # network stage: float64 out, as LPOSS's scores (its final resize runs in float64;
        # `inference.upsample` does the same and hands float32 on)
        return z if self.stage == "network" else z.to(logits.dtype)
