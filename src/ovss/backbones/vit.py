"""One ViT image tower for CLIP (OpenAI and OpenCLIP variants).

Dense methods need more than CLIP's pooled output: the input of the last block (which they
re-run with another attention rule), sometimes a middle layer's tokens, its q-k attention map or
its q/k/v projections. `forward_tokens` runs blocks 0..L-2 once and hands back exactly what was
asked for, so no method needs a second pass; what is not asked for is not kept, and a reduction
(the mean of some layers' attention maps, the sum of some layers' tokens) is accumulated as the
blocks run, so memory holds one map, not one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .configs import VisionCfg
from .pos_embed import resize_pos_embed
from .transformer import LayerNorm, Transformer

_TAP_KINDS = ("tokens", "attn", "qkv")
_TAP_REDUCE = ("none", "mean", "sum")


@dataclass(frozen=True)
class Tap:
    """Something to hand back from the blocks `forward_tokens` runs.

    kind: "tokens" (a block's output, (B, 1 + h*w, D)), "attn" (its q-k softmax map,
        (B, heads, 1 + h*w, 1 + h*w), computed explicitly in that block) or "qkv" (its (q, k, v)
        projections of ln_1(input), each (B, heads, 1 + h*w, d_h)).
    layers: block indices (0-based; negative counts from the end of the tower).
    reduce: "none" -> {block index: value}; "mean" / "sum" -> one tensor, accumulated while the
        blocks run (in layer order), so only one map is held ("qkv" takes "none" only).
    """

    kind: str
    layers: tuple[int, ...]
    reduce: str = "none"

    def __post_init__(self):
        if self.kind not in _TAP_KINDS:
            raise ValueError(f"unknown tap kind {self.kind!r}; choose from {_TAP_KINDS}")
        if self.reduce not in _TAP_REDUCE:
            raise ValueError(f"unknown tap reduction {self.reduce!r}; choose from {_TAP_REDUCE}")
        if self.kind == "qkv" and self.reduce != "none":
            raise ValueError("a 'qkv' tap cannot be reduced")
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers:
            raise ValueError("a tap needs at least one layer")


@dataclass
class ViTTokens:
    """What `forward_tokens` returns.

    tokens: (B, 1 + h*w, D) input of the last block (class token first).
    grid: (h, w) patch grid of this input.
    layers: {block index: (B, 1 + h*w, D) output of that block} for the indices asked for.
    attn: {block index: (B, heads, 1 + h*w, 1 + h*w) q-k softmax map} for `keep_attn`.
    taps: {name: value} for the named `Tap`s asked for (see `Tap.reduce` for the value).
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    layers: dict[int, torch.Tensor] = field(default_factory=dict)
    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    taps: dict[str, object] = field(default_factory=dict)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionCfg, pos_resize: str = "scale_factor"):
        super().__init__()
        self.cfg = cfg
        self.pos_resize = pos_resize  # see pos_embed.resize_pos_embed
        w = cfg.width
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + 1, w))
        # DINOv2 register tokens: inserted after the class token, after the positional embedding
        self.register_tokens = nn.Parameter(torch.zeros(cfg.registers, w)) if cfg.registers else None
        self.ln_pre = LayerNorm(w, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.act, cfg.ln_eps, cfg.mlp_ratio,
                                       cfg.layer_scale)
        self.ln_post = LayerNorm(w, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.output_dim)) if cfg.output_dim else None

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def n_prefix(self) -> int:
        """Tokens before the patch tokens: the class token and any register tokens."""
        return 1 + self.cfg.registers

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def embed(self, x: torch.Tensor, pos_resize: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) -> (B, n_prefix + h*w, D) tokens after ln_pre (class token, then
        registers if any, then patches). A remainder of H or W that does not fill a patch is
        dropped by the strided conv, as in the reference code."""
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}px patch"
            )
        x = self.conv1(x.to(self.conv1.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_pos_embed(self.positional_embedding, grid, pos_resize or self.pos_resize).to(x.dtype)
        if self.register_tokens is not None:
            reg = self.register_tokens.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)
        return self.ln_pre(x), grid

    def forward_tokens(self, x: torch.Tensor, keep_layers: tuple[int, ...] = (),
                       upto: int | None = None, pos_resize: str | None = None,
                       keep_attn: tuple[int, ...] = (), taps: dict[str, Tap] | None = None,
                       order: str | None = None) -> ViTTokens:
        """Run blocks 0..upto-1 (default: all but the last) and keep the asked-for layers.

        Args:
            x: normalised images (B, 3, H, W).
            keep_layers: block indices whose outputs to return (negative counts from the end).
            upto: number of blocks to run; default L - 1, i.e. stop at the last block's input.
            pos_resize: positional-embedding resize rule for this call (default: the tower's).
            keep_attn: block indices whose q-k softmax attention maps to return (`ViTTokens.attn`);
                only those blocks compute their attention explicitly, the others keep the fused
                kernel.
            taps: named `Tap`s (`ViTTokens.taps`), e.g. {"rcs": Tap("attn", (5, 6, 7, 8), "mean")}.
            order: the attention arithmetic of every block (`Attention.forward`; None: fused).
        Only what is asked for is kept; a block index beyond `upto` raises ValueError.
        """
        n = len(self.blocks)
        upto = n - 1 if upto is None else upto
        taps = dict(taps or {})
        bad = sorted({i for i in (*keep_layers, *keep_attn, *(j for t in taps.values() for j in t.layers))
                      if not -n <= i < n})
        if bad:
            raise ValueError(f"block indices {bad} do not exist: this tower has {n} blocks (0..{n - 1}, or "
                             f"-{n}..-1 from the end)")
        keep = {i % n for i in keep_layers}
        keep_a = {i % n for i in keep_attn}
        tap_layers = {name: [i % n for i in t.layers] for name, t in taps.items()}
        late = sorted(i for i in keep | keep_a | {i for ls in tap_layers.values() for i in ls} if i >= upto)
        if late:
            raise ValueError(f"blocks {late} are not run (forward_tokens runs blocks 0..{upto - 1})")
        need: dict[int, set[str]] = {i: {"attn"} for i in keep_a}
        for name, t in taps.items():
            if t.kind != "tokens":
                for i in tap_layers[name]:
                    need.setdefault(i, set()).add(t.kind)
        tokens, grid = self.embed(x, pos_resize)
        layers, attn, acc = {}, {}, {}
        counts = {name: 0 for name in taps}
        for i, blk in enumerate(self.blocks[:upto]):
            extras = {}
            if i in need:
                tokens, extras = blk(tokens, keep=frozenset(need[i]), order=order)
            else:
                tokens = blk(tokens, order=order)
            if i in keep:
                layers[i] = tokens
            if i in keep_a:
                attn[i] = extras["attn"]
            for name, t in taps.items():
                hits = tap_layers[name].count(i)
                if not hits:
                    continue
                value = tokens if t.kind == "tokens" else extras[t.kind]
                if t.reduce == "none":
                    acc.setdefault(name, {})[i] = value
                    continue
                for _ in range(hits):  # a layer listed twice counts twice
                    acc[name] = value.clone() if name not in acc else acc[name].add_(value)
                    counts[name] += 1
        for name, t in taps.items():
            if t.reduce == "mean":
                acc[name] = acc[name].div_(counts[name])
        return ViTTokens(tokens, grid, layers, attn, acc)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """ln_post then projection, on any tokens (B, N, D) -> (B, N, C)."""
        x = self.ln_post(x)
        return x @ self.proj if self.proj is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding: (B, 3, H, W) -> (B, C) projected class token."""
        t = self.forward_tokens(x, upto=len(self.blocks)).tokens
        return self.project(t[:, 0])
