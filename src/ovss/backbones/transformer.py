"""The pre-norm transformer block shared by CLIP's image and text towers (and DINO's).

Parameter names follow OpenAI CLIP exactly (`attn.in_proj_weight`, `mlp.c_fc`, `ln_1`, ...), so an
OpenAI state dict loads with no renaming, and a dense head can reach into a block's pieces.
Tokens are batch-first, (B, N, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; expected 'quick_gelu' or 'gelu'")


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' dtype (as OpenAI CLIP does for fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter layout.

    `qkv` is exposed separately because dense heads re-use the projections with other rules.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, D / heads), unscaled."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d_h) per-head outputs -> (B, N, D) after the output projection."""
        b, h, n, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * dh))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: frozenset[str] | tuple = (),
                order: str | None = None):
        """(B, N, D) -> (B, N, D); with `keep` (a set of "attn", "qkv") also a dict of extras:
        "attn": the (B, heads, N, N) softmax(q k^T / sqrt(d_h)) map, computed explicitly (no
        fused kernel) in the reference repos' order, softmax((q * s) @ k^T), and used for the
        output, so asking for it costs no second pass; "qkv": the (q, k, v) projections.
        order="qk_s": explicit softmax((q @ k^T) * s) @ v, DINO's own arithmetic, for results
        that must round as the DINO reference code does (CASS casts DINO's keys to fp16)."""
        q, k, v = self.qkv(x)
        if order == "qk_s" and "attn" not in keep:
            attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if mask is not None:
                attn = attn + mask
            out = self.merge(attn.softmax(dim=-1) @ v)
        elif order not in (None, "qk_s"):
            raise ValueError(f"unknown attention order {order!r}; choose None or 'qk_s'")
        elif "attn" in keep:
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            if attn.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(attn.device.type):
                attn = attn.float()  # reduced precision (core.precision): the softmax in float32
            if mask is not None:
                attn = attn + mask
            attn = attn.softmax(dim=-1)
            out = self.merge(attn @ v)
        else:
            out = self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        if not keep:
            return out
        extras = {}
        if "attn" in keep:
            extras["attn"] = attn
        if "qkv" in keep:
            extras["qkv"] = (q, k, v)
        return out, extras


class Mlp(nn.Sequential):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_act(act)
        self.c_proj = nn.Linear(hidden, width)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (DINOv2's `ls1` / `ls2`, parameter `gamma`)."""

    def __init__(self, width: int, init: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """x + ls_1(attn(ln_1 x)), then + ls_2(mlp(ln_2 x)); ls_* (LayerScale) only with
    `layer_scale=True` (DINOv2), the identity otherwise (no parameters)."""

    def __init__(self, width: int, heads: int, act: str = "quick_gelu", ln_eps: float = 1e-5,
                 mlp_ratio: float = 4.0, layer_scale: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, round(width * mlp_ratio), act)
        self.ls_1 = LayerScale(width) if layer_scale else nn.Identity()
        self.ls_2 = LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: frozenset[str] | tuple = (),
                order: str | None = None):
        """(B, N, D) -> (B, N, D); with `keep` also the attention's extras (see `Attention.forward`)."""
        if not keep:
            x = x + self.ls_1(self.attn(self.ln_1(x), mask, order=order))
            return x + self.ls_2(self.mlp(self.ln_2(x)))
        y, extras = self.attn(self.ln_1(x), mask, keep, order)
        x = x + self.ls_1(y)
        return x + self.ls_2(self.mlp(self.ln_2(x))), extras


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, act: str = "quick_gelu",
                 ln_eps: float = 1e-5, mlp_ratio: float = 4.0, layer_scale: bool = False):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [Block(width, heads, act, ln_eps, mlp_ratio, layer_scale) for _ in range(layers)]
        )
