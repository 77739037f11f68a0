"""LPOSS's head (Stojnic, Kalantidis, Tolias, CVPR 2025): MaskCLIP seeds propagated over the
patches of every window jointly on one DINO kNN graph per image. The reference and the settings'
sources are in the method's file, `methods/lposs.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.protocol import stitch, window_boxes
from ..core.registry import PLUGINS
from ..core.trace import record
from ..ops.graphs import lposs_patch_graph, normalize, patch_centres, propagate
from .dense import dense_embeddings
from .plugin import HeadPlugin
from .vfm import get_vfm, to_dino_input

# OpenAI's 0-1 mean/std (models/maskclip/maskclip.py:21), on the 0-255 scale. Not CLIP_MEAN /
# CLIP_STD: those are the mmseg configs' rounded constants (122.771 vs 122.77094), 5e-6 apart.
OPENAI_MEAN = tuple(255 * v for v in (0.48145466, 0.4578275, 0.40821073))
OPENAI_STD = tuple(255 * v for v in (0.26862954, 0.26130258, 0.27577711))


@PLUGINS.register("lposs")
@dataclass(frozen=True)
class LPOSSHead(HeadPlugin):
    """LPOSS's patch-level stage over all windows of an image (see the module docstring).

    vfm: graph model (DINO registry name or a `proxyclip.register_vfm` name); feature: its last
    block's "q" | "k" | "v" or "tokens"; k, gamma, sigma, eta: the graph; alpha, maxiter,
    solver: the propagation (`graphs.propagate`).
    """

    vfm: str = "dino-vitb16"
    feature: str = "v"
    k: int = 400
    gamma: float = 3.0
    sigma: float = 0.01
    eta: float = 1.0
    alpha: float = 0.95
    maxiter: int = 10
    solver: str = "cg"

    # per image, over the patches of every window (windows in order, rows in raster order):
    # lposs.seeds (N, Q) MaskCLIP's cosine seeds Y; lposs.graph (N, N) sparse, the normalised
    # kNN graph D^-1/2 W D^-1/2; lposs.scores (N, Q) float64, the propagated Z
    trace_names: ClassVar[tuple[str, ...]] = ("lposs.seeds", "lposs.graph", "lposs.scores")

    def joint_slide(self, seg, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised input, (Q, C) unit queries -> (Q, H, W) propagated scores."""
        from ..backbones.dino import dino_features

        r, p = seg.recipe, seg.recipe.protocol
        _, _, H, W = x.shape
        boxes = window_boxes(H, W, p.crop, p.stride)
        vfm = get_vfm(self.vfm, x.device)
        norm_mean, norm_std = seg.normalization  # what x carries (OpenAI's constants for the presets)
        mean = torch.tensor(norm_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(norm_std, device=x.device).view(1, 3, 1, 1)
        # the same on the 0-1 scale
        m01 = (torch.tensor(norm_mean, dtype=torch.float64) / 255).float().to(x.device).view(1, 3, 1, 1)
        s01 = (torch.tensor(norm_std, dtype=torch.float64) / 255).float().to(x.device).view(1, 3, 1, 1)
        clip_f, dino_f, grids = [], [], []
        nb = max(p.window_batch, 1)
        for s in range(0, len(boxes), nb):
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes[s:s + nb]])
            # both inputs as there: the 0-1 image normalised with 0-1 constants
            # (models/maskclip/maskclip.py:21, 125; models/lposs/lposs.py:10, 87); the crops are a
            # uint8 image normalised, so rounding recovers it exactly
            rgb01 = (crops * std + mean).round() / 255.0
            feats, (h, w) = dense_embeddings(seg.visual, (rgb01 - m01) / s01, r.attention, r.surgery, r.pos_resize)
            d = dino_features(vfm, to_dino_input(crops, norm_mean, norm_std, round_uint8=True), kind=self.feature)
            hd, wd = d.shape[-2:]
            c = feats.transpose(1, 2).reshape(feats.shape[0], -1, h, w)
            if (h, w) != (hd, wd):
                c = F.interpolate(c, size=(hd, wd), mode="bilinear", align_corners=False)
            clip_f.append(c.flatten(2).transpose(1, 2).reshape(-1, c.shape[1]))
            dino_f.append(d.flatten(2).transpose(1, 2).reshape(-1, d.shape[1]))
            grids += [(hd, wd)] * crops.shape[0]
        clip_f = F.normalize(torch.cat(clip_f), dim=-1)
        dino_f = F.normalize(torch.cat(dino_f), dim=-1)
        seeds = clip_f @ queries.to(clip_f.dtype).T
        record("lposs.seeds", seeds)
        offsets = torch.tensor([[b[0], b[2]] for b in boxes], dtype=torch.float32, device=x.device)
        centres = patch_centres(grids, offsets, vfm.patch_size)
        graph = normalize(lposs_patch_graph(dino_f, centres, self.k, self.gamma, self.sigma, self.eta))
        record("lposs.graph", graph.W)
        # float64 seeds -> float64 scores, as there (perform_lp fills a float64 array); each window
        # is resized in float64 and added into the float32 canvas (lposs_eval.py:312-341)
        z = propagate(graph, seeds.double(), self.alpha, self.solver, self.maxiter)
        record("lposs.scores", z)

        def windows():
            start = 0
            for (y1, y2, x1, x2), (hd, wd) in zip(boxes, grids):
                blk = z[start:start + hd * wd].T.reshape(1, -1, hd, wd)
                start += hd * wd
                yield (y1, y2, x1, x2), F.interpolate(blk, size=(y2 - y1, x2 - x1), mode="bilinear",
                                                      align_corners=False)[0]

        return stitch(windows(), (H, W), dtype=seeds.dtype, count_dtype=seeds.dtype)
