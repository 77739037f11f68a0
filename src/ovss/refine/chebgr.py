"""Cheb-GR graph re-ranking as a refiner: scores propagated over an adaptive patch graph.

Cheb-GR (Yang, Li, Du, Ye, CVPR 2025; Jinxi-Yang-WHU/Fast-GCR `utils/re_ranking.py`) re-ranks
person re-identification results by propagating features over a graph whose neighbourhoods are
cut per node at mean - lam * std of its distances (`ops.rerank`). Here the nodes are the patches
of the image and what is re-ranked is the patch-to-query scores:

    X_0 = unit patch features of the whole network input: CLIP's block `layer` ("tokens", or its
          "q" / "k" / "v" projections, heads concatenated; from the readout's own pass when the
          image is one window, else one more backbone pass, as refine.cluster) or a DINO model's
          (`source` = its name: `ovss backbones dino`, or a `heads.vfm.register_vfm` name)
    Y_0 = the logits averaged over each patch (adaptive average pooling to the patch grid)
    each of `rounds` rounds:  L = D_r^-1/2 S(X) D_c^-1/2    (graphs.threshold_graph, bistochastic)
                              X <- rownorm(L X)              (the reference's feature update)
                              Y <- (L Y) / (L 1)             (the same operator on the scores,
                                                              rows rescaled to sum to 1 so the
                                                              scores stay weighted means of cosines)
    out = logits + bilinear(Y_R - Y_0)                       (the patch-level change, added back)

so `rounds=0` is the identity and the pixel detail of the logits (PAMR's, LPOSS+'s) is kept.
Because S = F T^T is linear in F, propagating scores and propagating the features they were read
from are the same operator on either side of T^T up to the row normalisation (the method card's
"re-ranking = feature propagation"); the graph itself comes from X, re-built each round as in
Fast-GCR. Cost: a dense N x N graph per round (N = patches: 588 at 336 x 448 with patch 16).

Settings: lam, beta, rounds, mode as `ops.rerank` (its defaults: GCR's); the patch-graph
defaults (CLIP keys of the second-to-last block) are this library's choice, not the paper's (the
paper ranks person images, not patches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.registry import REFINERS
from ..ops.graphs import bistochastic, threshold_graph
from ..ops.rerank import MODES

_CLIP_FEATURES = ("tokens", "q", "k", "v")


def propagate_scores(X: torch.Tensor, Y: torch.Tensor, lam: float, beta: float, rounds: int,
                     mode: str = "nonsym") -> tuple[torch.Tensor, torch.Tensor]:
    """Cheb-GR rounds on unit node features X (N, D), carrying scores Y (N, Q) along: returns
    (X_R, Y_R) (see the module docstring)."""
    for _ in range(rounds):
        L = bistochastic(threshold_graph(X, lam, beta, sym=mode == "sym"))
        X = L @ X
        if mode != "no-norm":
            X = X / torch.linalg.norm(X, ord=2, dim=1, keepdim=True)
        Y = (L @ Y) / L.sum(1, keepdim=True)
    return X, Y


@REFINERS.register("chebgr")
@dataclass(frozen=True)
class ChebGR:
    """Cheb-GR re-ranking of patch scores over an adaptive patch graph (module docstring).

    lam: the per-node cut mean - lam * std of its squared distances (at most 1 / (1 + lam^2) of
        the patches are neighbours); beta: the kernel exp(-d / beta); rounds: propagation rounds;
        mode: "nonsym" | "sym" (S averaged with S^T) | "no-norm" (features not re-normalised).
    source: "clip" (the segmenter's own backbone) or a DINO model name.
    feature: "tokens" (block output) | "q" | "k" | "v" (for DINO as `backbones.dino.dino_features`).
    layer: the block (CLIP: up to the second-to-last, -2, the last block being the method's own).
    stage: "network" (before the resize to the original size) or "full".
    """

    lam: float = 1.0
    beta: float = 0.16
    rounds: int = 3
    mode: str = "nonsym"
    source: str = "clip"
    feature: str = "k"
    layer: int = -2
    stage: str = "network"

    needs_context = True  # the Segmenter passes a RefineContext (backbone taps, normalisation)
    trace_names: ClassVar[tuple[str, ...]] = ("chebgr.output",)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown Cheb-GR mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.feature not in _CLIP_FEATURES:
            raise ValueError(f"unknown feature {self.feature!r}; choose from {', '.join(_CLIP_FEATURES)}")
        if self.stage not in ("network", "full"):
            raise ValueError(f"unknown stage {self.stage!r}; expected 'network' or 'full'")
        if self.rounds < 0:
            raise ValueError("rounds must be >= 0")

    def taps(self, n_blocks: int | None = None) -> dict:
        """The backbone tap the readout's pass can leave for this refiner (CLIP source only)."""
        if self.source != "clip":
            return {}
        from ..backbones.vit import Tap

        kind = "tokens" if self.feature == "tokens" else "qkv"
        return {f"{kind}:{self.layer}": Tap(kind, (self.layer,))}

    @torch.no_grad()
    def node_features(self, context) -> tuple[torch.Tensor, tuple[int, int]]:
        """(h*w, D) unit patch features of the whole network input and their grid (h, w)."""
        if self.source == "clip":
            values, grid = context.tap_values(self.taps())
            v = next(iter(next(iter(values.values())).values()))  # {layer index: value}
            n0 = context.visual.n_prefix
            if self.feature == "tokens":
                f = v[0, n0:]
            else:
                t = v[{"q": 0, "k": 1, "v": 2}[self.feature]][0, :, n0:]  # (heads, h*w, d_h)
                f = t.transpose(0, 1).reshape(t.shape[1], -1)
            return F.normalize(f.float(), dim=-1), tuple(grid)
        from ..backbones.dino import dino_features
        from ..heads.vfm import get_vfm, to_dino_input

        if context.mean is None or context.std is None:
            raise ValueError("the chebgr refiner with a DINO source needs the image's normalisation: run it "
                             "through a Segmenter")
        vfm = get_vfm(self.source, context.x.device)
        d = dino_features(vfm, to_dino_input(context.x, context.mean, context.std, round_uint8=True),
                          kind=self.feature, layer=self.layer)[0]  # (C, h, w)
        return F.normalize(d.flatten(1).T.float(), dim=-1), tuple(d.shape[-2:])

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, guide: torch.Tensor, context=None) -> torch.Tensor:
        if context is None:
            raise ValueError("the chebgr refiner needs the backbone's features: run it through a Segmenter")
        if logits.shape[0] != 1:
            raise ValueError("the chebgr refiner works on one image at a time")
        if self.rounds == 0:
            return logits
        X, (h, w) = self.node_features(context)
        size = tuple(logits.shape[-2:])
        y0 = F.adaptive_avg_pool2d(logits.float(), (h, w))[0]  # (Q, h, w)
        q = y0.shape[0]
        _, y = propagate_scores(X, y0.reshape(q, -1).T, self.lam, self.beta, self.rounds, self.mode)
        delta = (y.T.reshape(1, q, h, w) - y0[None])
        delta = F.interpolate(delta, size=size, mode="bilinear", align_corners=False)
        return (logits + delta.to(logits.dtype))
