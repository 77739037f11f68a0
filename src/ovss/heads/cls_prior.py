"""An image-level class prior: patch logits multiplied by the class token's logits (CLIPtrase).

CLIPtrase's VOC20 evaluation (clip_self_correlation.py:159-161 at 2b7de61; every "voc" dataset in
its detectron2 version) multiplies each query's patch logits by that query's logit of the image's
class token: (100 cos(patch, t)) x (100 cos(CLS, t)). As a head plug-in the cosine patch logits
become cos(patch, t) x scale x cos(CLS, t), so the decision's logit scale (100 in CLIPtrase's
presets) gives the reference's product; the argmax is the reference's. The class token is the
one of the final readout pass (its last block's output through ln_post and the projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.registry import PLUGINS
from ..core.trace import record
from .plugin import HeadPlugin


@PLUGINS.register("clsprior")
@dataclass(frozen=True)
class ClsPrior(HeadPlugin):
    """Multiply every query's patch logits by `scale` x the class token's cosine with it."""

    scale: float = 100.0

    # clsprior.prior (B, Q): scale x the class token's cosine with each query, per batch of windows
    trace_names: ClassVar[tuple[str, ...]] = ("clsprior.prior",)

    def taps(self, n_blocks: int) -> dict:
        return {}

    def adjust_logits(self, ctx, logits):
        cls = ctx.cache.get("cls")
        if cls is None:
            raise ValueError("the class-token prior needs a readout that keeps the class token")
        prior = (cls @ ctx.queries.to(cls.dtype).T) * self.scale  # (B, Q)
        record("clsprior.prior", prior)
        return logits * prior[:, :, None, None]
