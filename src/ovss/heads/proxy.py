"""ProxyCLIP's head (Lan et al., ECCV 2024): CLIP's last-block values mixed by a DINO model's
patch affinity, read out on the proxy's patch grid (the method's recipe: `methods/proxyclip.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.registry import PLUGINS
from ..core.trace import record
from .attention import AttentionRule, Mix, attention_weights
from .plugin import HeadPlugin
from .vfm import get_vfm, to_dino_input

_UNNORM_MEAN = (0.48145466, 0.4578275, 0.40821073)  # myutils.UnNormalize as the segmentor builds it
_UNNORM_STD = (0.26862954, 0.26130258, 0.27577711)


def proxy_input(crops: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised crops -> the proxy's input (ProxyCLIP: un-normalise, ImageNet-normalise)."""
    return to_dino_input(crops, _UNNORM_MEAN, _UNNORM_STD, scale=1.0)


def proxy_affinity(feats: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """(B, C, H, W) proxy features -> (B, H*W, H*W) attention logits: cosine, shifted by beta
    times its mean (per image), scaled by gamma, negatives -> -inf."""
    f = F.normalize(feats.flatten(2), dim=1)
    sim = torch.einsum("bcm,bcn->bmn", f, f)
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    return sim.masked_fill(sim < 0, float("-inf"))


@PLUGINS.register("proxy")
@dataclass(frozen=True)
class ProxyHead(HeadPlugin):
    """ProxyCLIP's last block as a head plug-in (replaces the readout).

    vfm: proxy model name (`backbones.dino` registry name, or one given to `register_vfm`).
    beta, gamma: the affinity's shift and scale.
    layer: proxy block whose normalised tokens are the features (-1: the last, as ProxyCLIP).
    """

    vfm: str = "dino-vitb8"
    beta: float = 1.2
    gamma: float = 3.0
    layer: int = -1

    # per batch of windows: proxy.features (B, C, H', W') the proxy model's patch features on its
    # own grid; proxy.affinity (B, H'*W', H'*W') the attention logits (-inf where negative)
    trace_names: ClassVar[tuple[str, ...]] = ("proxy.features", "proxy.affinity")

    def readout(self, ctx, mixes) -> torch.Tensor:
        from ..backbones.dino import dino_features

        if mixes:
            raise ValueError("the ProxyCLIP head takes no other attention mixes")
        vfm = get_vfm(self.vfm, ctx.images.device)
        feats = dino_features(vfm, proxy_input(ctx.images).to(next(vfm.parameters()).dtype), layer=self.layer)
        b, _, H, W = feats.shape
        record("proxy.features", feats)
        visual = ctx.visual
        block = visual.blocks[-1]
        x = ctx.out.tokens
        _, _, v = block.attn.qkv(block.ln_1(x))  # (B, heads, 1 + h*w, d_h)
        h, w = ctx.grid
        nh, dh = v.shape[1], v.shape[-1]
        v = v[:, :, 1:].reshape(b * nh, h, w, dh).permute(0, 3, 1, 2)
        v = F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False)
        v = v.permute(0, 2, 3, 1).reshape(b, nh, H * W, dh)
        aff = proxy_affinity(feats.to(v.dtype), self.beta, self.gamma)[:, None]
        record("proxy.affinity", aff[:, 0])
        attn = attention_weights(v, v, AttentionRule(()), (H, W), [Mix(aff, "term")])
        y = block.attn.merge(attn @ v)
        ctx.cache["readout_grid"] = (H, W)
        return F.normalize(visual.project(y), dim=-1)
