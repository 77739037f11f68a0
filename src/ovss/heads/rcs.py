"""Residual cross-correlation: middle layers' q-k attention mixed into the last block's attention.

ResCLIP's RCS (Yang et al., CVPR 2025) as a head plug-in that works with any attention rule:

    A_c = mean over `layers` of softmax(s q_l k_l^T)         (per head, class token included)
    A   = scale * ((1 - weight) * A_rule + weight * A_c)      after the rule's softmaxes

The maps come from the backbone's one pass (`Tap("attn", layers, "mean")`: the blocks named
compute their attention explicitly and only the running mean is held, one (B, heads, N, N) map).
ResCLIP averages layers 6-9 (0-based 5..8) for every backbone and sets scale (tau) = 2.0 and
weight (lambda) per benchmark (its configs' `attn_rcs_weights=[tau, lambda]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..backbones.vit import Tap
from ..core.registry import PLUGINS
from ..core.trace import record
from .attention import Mix
from .plugin import HeadPlugin


@PLUGINS.register("rcs")
@dataclass(frozen=True)
class RCS(HeadPlugin):
    """Mix the mean q-k attention of middle `layers` into the last block's attention.

    layers: block indices (0-based; ResCLIP: 5, 6, 7, 8 = layers 6-9, clip/model.py:327-329).
    scale, weight: A = scale * ((1 - weight) * A + weight * A_c) (clip/model.py:494, tau and
        lambda of `attn_rcs_weights`).
    """

    layers: tuple[int, ...] = (5, 6, 7, 8)
    scale: float = 2.0
    weight: float = 0.3

    # rcs.attention: A_c (B, heads, 1 + h*w, 1 + h*w) per batch of windows
    trace_names: ClassVar[tuple[str, ...]] = ("rcs.attention",)

    def __post_init__(self):
        layers = (self.layers,) if isinstance(self.layers, int) else tuple(int(i) for i in self.layers)
        if not layers:
            raise ValueError("RCS needs at least one layer")
        object.__setattr__(self, "layers", layers)

    def taps(self, n_blocks: int) -> dict[str, Tap]:
        return {self._name(): Tap("attn", self.layers, "mean")}

    def _name(self) -> str:
        return "rcs:" + ",".join(map(str, self.layers))

    def middle_attention(self, ctx):
        """A_c: (B, heads, 1 + h*w, 1 + h*w)."""
        return ctx.out.taps[self._name()]

    def mixes(self, ctx, mixes) -> list[Mix]:
        a_c = self.middle_attention(ctx)
        record("rcs.attention", a_c)
        return [Mix(a_c, "attn", weight=self.weight, scale=self.scale)]
