"""The dense head: CLIP's last block re-done with an attention rule and block surgery.

Every CLIP-only training-free method reads patch embeddings out of the last block; what differs
is the rule that mixes tokens (`attention.AttentionRule`) and which parts of the block are kept
(`Surgery`). The output is L2-normalised patch embeddings in the text space.

Head plug-ins (`Recipe.plugins`, `heads.plugin.HeadPlugin`) extend this one pass without forking
it: they ask for backbone taps, add matrices to the last block's rule, replace the readout or
adjust the logits. Plug-ins run in order; e.g. ResCLIP = (RCS, SFR): SFR's first pass already has
RCS's mix. `PassContext` is what they see: the crops, the backbone's output with the taps, the
rule, the surgery and the text queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.transformer import Block
from ..backbones.vit import Tap, VisionTransformer, ViTTokens
from .attention import AttentionRule, Mix, attend
from .plugin import check_plugins, providers


@dataclass(frozen=True)
class Surgery:
    """Which parts of the last block survive.

    residual: add the block input back after attention (CLIP, MaskCLIP, SCLIP keep it;
        ClearCLIP and NACLIP drop it).
    ffn: apply the block's FFN (with its own residual) after attention.
    """

    residual: bool = True
    ffn: bool = True

    def __str__(self) -> str:
        return f"residual={'on' if self.residual else 'off'},ffn={'on' if self.ffn else 'off'}"


def last_block(block: Block, x: torch.Tensor, rule: AttentionRule, surgery: Surgery,
               grid: tuple[int, int], mixes: tuple[Mix, ...] | list[Mix] = (),
               cls_token: bool = True) -> torch.Tensor:
    """Run `block` on tokens x (B, 1 + h*w, D) with `rule`, `surgery` and external `mixes`.

    cls_token=False drops the class token after the block's projections, so the attention runs
    over patches only and (B, h*w, D) comes back (CASS); mixes are then (h*w, h*w)."""
    q, k, v = block.attn.qkv(block.ln_1(x))
    if not cls_token:
        x, q, k, v = x[:, 1:], q[:, :, 1:], k[:, :, 1:], v[:, :, 1:]
    y = block.ls_1(block.attn.merge(attend(q, k, v, rule, grid, mixes, cls_token)))
    if surgery.residual:
        y = x + y
    if surgery.ffn:
        y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y


@dataclass
class PassContext:
    """What head plug-ins see for one batch of crops."""

    visual: VisionTransformer
    images: torch.Tensor  # (B, 3, H, W) normalised crops
    out: ViTTokens  # the backbone's one pass: last-block input, grid, taps
    rule: AttentionRule
    surgery: Surgery
    queries: torch.Tensor | None = None  # (Q, C) normalised text queries, when the caller has them
    cache: dict[str, Any] = field(default_factory=dict)  # plug-ins may leave results here

    @property
    def grid(self) -> tuple[int, int]:
        return self.out.grid

    def run(self, mixes=(), tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The last block on `tokens` (default: the backbone's last-block input) -> (B, N, D)."""
        x = self.out.tokens if tokens is None else tokens
        return last_block(self.visual.blocks[-1], x, self.rule, self.surgery, self.grid, mixes)

    def features(self, mixes=()) -> torch.Tensor:
        """L2-normalised patch embeddings (B, h*w, C) of one last-block pass with `mixes`; the
        normalised class-token embedding of that pass is left in `cache["cls"]` (B, C)."""
        feats = F.normalize(self.visual.project(self.run(mixes)), dim=-1)
        self.cache["cls"] = feats[:, 0]
        return feats[:, 1:]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, h*w, C) normalised features -> cosine patch logits (B, Q, h, w) against the queries."""
        if self.queries is None:
            raise ValueError("this head plug-in needs the text queries")
        # a readout on another grid than the backbone's (ProxyCLIP: the proxy model's) says so here
        h, w = self.cache.get("readout_grid", self.grid)
        if torch.is_autocast_enabled(feats.device.type):  # reduced precision: the cosines in float32
            with torch.autocast(device_type=feats.device.type, enabled=False):
                lg = feats.float() @ self.queries.float().T
        else:
            lg = feats @ self.queries.to(feats.dtype).T
        return lg.transpose(1, 2).reshape(feats.shape[0], -1, h, w)


def plugin_taps(plugins, n_blocks: int) -> dict[str, Tap]:
    taps: dict[str, Tap] = {}
    for p in plugins:
        for name, tap in p.taps(n_blocks).items():
            if name in taps and taps[name] != tap:
                raise ValueError(f"head plug-ins ask for two different taps named {name!r}")
            taps[name] = tap
    return taps


def pass_context(visual: VisionTransformer, images: torch.Tensor, rule: AttentionRule, surgery: Surgery,
                 pos_resize: str | None = None, plugins=(), queries: torch.Tensor | None = None,
                 extra_taps: dict[str, Tap] | None = None) -> PassContext:
    """The backbone's one pass with every plug-in's taps (and `extra_taps`), as a `PassContext`."""
    taps = plugin_taps(plugins, len(visual.blocks))
    for name, tap in (extra_taps or {}).items():
        if name in taps and taps[name] != tap:
            raise ValueError(f"two different taps named {name!r}")
        taps[name] = tap
    out = visual.forward_tokens(images, pos_resize=pos_resize, taps=taps)
    return PassContext(visual, images, out, rule, surgery, queries)


def collect_mixes(ctx: PassContext, plugins=()) -> list[Mix]:
    """Every plug-in's mixes in order; each plug-in sees those of the plug-ins before it."""
    mixes: list[Mix] = []
    for p in providers(plugins, "mixes"):
        mixes = mixes + list(p.mixes(ctx, tuple(mixes)))
    return mixes


def run_plugins(ctx: PassContext, plugins=()) -> torch.Tensor:
    """Every plug-in's mixes in order, then the readout -> normalised (B, h*w, C)."""
    plugins = check_plugins(plugins)
    readers = providers(plugins, "readout")
    mixes = collect_mixes(ctx, plugins)
    if readers:
        return readers[0].readout(ctx, tuple(mixes))
    return ctx.features(mixes)


def dense_embeddings(visual: VisionTransformer, images: torch.Tensor, rule: AttentionRule,
                     surgery: Surgery, pos_resize: str | None = None, plugins=(),
                     queries: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised images (B, 3, H, W) -> L2-normalised patch embeddings (B, h*w, C) and (h, w).

    Blocks 0..L-2 run untouched (handing back the plug-ins' taps); the last block uses
    `rule`/`surgery` and the plug-ins' mixes (or a plug-in's own readout); ln_post and the
    projection are applied to every token and the class token is dropped afterwards.
    """
    ctx = pass_context(visual, images, rule, surgery, pos_resize, plugins, queries)
    return run_plugins(ctx, plugins), ctx.grid


def patch_logits(visual: VisionTransformer, images: torch.Tensor, queries: torch.Tensor,
                 rule: AttentionRule, surgery: Surgery, pos_resize: str | None = None,
                 plugins=(), extra_taps: dict[str, Tap] | None = None, cache: dict | None = None) -> torch.Tensor:
    """Cosine patch-to-query similarity: (B, 3, H, W), (Q, C) normalised -> (B, Q, h, w).

    extra_taps: more backbone taps for the same pass; their values (and the patch grid) are put
        in `cache` ({"taps": {...}, "grid": (h, w)}) for the caller, e.g. a refiner's features.
    """
    ctx = pass_context(visual, images, rule, surgery, pos_resize, plugins, queries, extra_taps)
    feats = run_plugins(ctx, plugins)
    logits = ctx.logits(feats)
    ctx.cache["feats"] = feats  # for plug-ins that adjust the logits from the features (presence)
    for p in providers(plugins, "adjust_logits"):
        logits = p.adjust_logits(ctx, logits)
    if cache is not None:
        cache["taps"] = {k: ctx.out.taps[k] for k in (extra_taps or {})}
        cache["grid"] = ctx.grid
    return logits
