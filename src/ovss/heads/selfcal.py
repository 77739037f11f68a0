"""Self-calibrated readout (SC-CLIP, Bai et al., IEEE TIP 2025) as a head plug-in.

From the backbone's one pass (taps: the penultimate tokens = the last block's input, a middle
layer `pre_layer`, an early layer `post_layer`, and the running sum of `fuse_layers`):

1. anomaly repair (`ovss.ops.anomaly`): LOF outliers among the penultimate patch tokens, replaced by
   their non-outlier 3x3 neighbour mean; the same positions are repaired in `pre_layer`'s tokens;
2. S_mid = cosine matrix of the repaired `pre_layer` patch tokens (`ovss.ops.affinity`);
   the penultimate patch tokens are aggregated by it: X <- rownorm(S_mid with entries < sim_thd
   set to 0) X;
3. pass 1: the last block on X alone (the class token leaves the sequence), its rule plus one
   external term softmax(attn_scale * (S_mid - mean S_mid), negatives masked) shared by every
   head (`Mix(..., "term")`; SC-CLIP's rule is k-k with combine="mean": the two softmaxes are
   averaged), then + res_cls * the penultimate class token (before the repair);
4. S_post = cosine matrix of `post_layer`'s (unrepaired) patch tokens, entries < sim_thd set to
   0; pass 1 is aggregated by it;
5. pass 2 (the two-pass multi-level fusion): the same block, term and CLS addition on the SUM of
   `fuse_layers`' outputs (patches; its class token for the CLS addition), aggregated by S_post;
6. output = pass 1 + pass 2 -> ln_post, projection (no class token in the output).

Every step is per image (SC-CLIP's code assumes batch 1: LOF's `squeeze(1)`, one mean of S_mid
over the batch); windows are batched here. The reference maps outlier indices to grid positions
with the number of rows for both axes (`index // rows, index % rows`), which is only right for
square windows (its crops always are); here positions are (index // columns, index % columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbones.vit import Tap
from ..core.registry import PLUGINS
from ..core.trace import record
from ..ops.affinity import aggregate, cosine_matrix, proxy_logits, threshold
from ..ops.anomaly import lof_scores, lof_threshold, repair_tokens
from .attention import Mix
from .plugin import HeadPlugin


@PLUGINS.register("selfcal")
@dataclass(frozen=True)
class SelfCalibration(HeadPlugin):
    """SC-CLIP's readout (defaults: its ViT-B/16 settings, clip/model.py:247-252 and
    configs/base_config.py:4-8 at 0417ba9).

    lof_neighbors, contamination: LOF on the penultimate patch tokens (clip/model.py:274).
    reach: LOF reach distance, "self" (SC-CLIP) or "neighbour" (classical).
    pre_layer: block whose tokens give S_mid (pre_adjust_idx 8 = layer 9).
    post_layer: block whose tokens give S_post (post_adjust_idx 3 = layer 4).
    fuse_layers: blocks summed for pass 2 (multi_start_idx 3 .. multi_end_idx 10, end excluded);
        () turns the fusion off.
    res_cls: weight of the class token added to every patch (0.3).
    sim_thd: similarities below it are dropped for the aggregations (beta 0.4).
    attn_scale: the S_mid attention term's scale (3.0); its shift is S_mid's mean.
    repair: run the anomaly detection and repair at all.
    """

    lof_neighbors: int = 30
    contamination: float = 0.05
    reach: str = "self"
    pre_layer: int = 8
    post_layer: int = 3
    fuse_layers: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9)
    res_cls: float = 0.3
    sim_thd: float = 0.4
    attn_scale: float = 3.0
    repair: bool = True

    # per batch of windows: selfcal.lof_scores (B, h*w) LOF of the penultimate patch tokens
    # (SC-CLIP's lof_pytorch scores; zeros with repair=False), selfcal.outliers (B, h*w) bool the
    # anomaly tokens, selfcal.mid_similarity (B, h*w, h*w) S_mid of the repaired middle layer
    trace_names: ClassVar[tuple[str, ...]] = ("selfcal.lof_scores", "selfcal.outliers", "selfcal.mid_similarity")

    def __post_init__(self):
        f = self.fuse_layers
        object.__setattr__(self, "fuse_layers", (f,) if isinstance(f, int) else tuple(int(i) for i in f))

    def taps(self, n_blocks: int) -> dict[str, Tap]:
        taps = {f"layer{self.pre_layer}": Tap("tokens", (self.pre_layer,)),
                f"layer{self.post_layer}": Tap("tokens", (self.post_layer,))}
        if self.fuse_layers:
            taps["sum:" + ",".join(map(str, self.fuse_layers))] = Tap("tokens", self.fuse_layers, "sum")
        return taps

    def _tap(self, ctx, layer: int) -> torch.Tensor:
        values = ctx.out.taps[f"layer{layer}"]
        return next(iter(values.values()))

    def outliers(self, ctx) -> torch.Tensor:
        """(B, h*w) bool: the anomaly tokens among the penultimate patch tokens."""
        patches = ctx.out.tokens[:, 1:]
        if not self.repair:
            record("selfcal.lof_scores", patches.new_zeros(patches.shape[:2]))
            return torch.zeros(patches.shape[:2], dtype=torch.bool, device=patches.device)
        scores, _ = lof_scores(patches, self.lof_neighbors, self.reach)
        record("selfcal.lof_scores", scores)
        return lof_threshold(scores, self.contamination)

    def _pass(self, ctx, patches: torch.Tensor, cls: torch.Tensor, term: Mix, post: torch.Tensor) -> torch.Tensor:
        y = ctx.run([term], tokens=patches) + self.res_cls * cls
        return aggregate(post, y)

    def readout(self, ctx, mixes) -> torch.Tensor:
        if mixes:
            raise ValueError("SelfCalibration runs the last block on patch tokens only; other plug-ins' "
                             "attention mixes (class token included) cannot be added to it")
        grid = ctx.grid
        x = ctx.out.tokens
        cls, patches = x[:, :1], x[:, 1:]
        mask = self.outliers(ctx)
        ctx.cache["scclip.outliers"] = mask
        record("selfcal.outliers", mask)
        patches = repair_tokens(patches, grid, mask)
        mid = repair_tokens(self._tap(ctx, self.pre_layer)[:, 1:], grid, mask)
        sim = cosine_matrix(mid)
        ctx.cache["scclip.mid_similarity"] = sim
        record("selfcal.mid_similarity", sim)
        patches = aggregate(threshold(sim, self.sim_thd), patches)
        term = Mix(proxy_logits(sim, 1.0, self.attn_scale), "term")
        post = threshold(cosine_matrix(self._tap(ctx, self.post_layer)[:, 1:]), self.sim_thd)
        out = self._pass(ctx, patches, cls, term, post)
        if self.fuse_layers:
            fused = ctx.out.taps["sum:" + ",".join(map(str, self.fuse_layers))]
            out = out + self._pass(ctx, fused[:, 1:], fused[:, :1], term, post)
        return F.normalize(ctx.visual.project(out), dim=-1)
