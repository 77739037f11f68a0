"""The dense head: CLIP's last block re-done with an attention rule and block surgery.

Every CLIP-only training-free method reads patch embeddings out of the last block; what differs
is the rule that mixes tokens (`attention.AttentionRule`) and which parts of the block are kept
(`Surgery`). The output is L2-normalised patch embeddings in the text space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import AttentionRule, attend
from .backbones.transformer import Block
from .backbones.vit import VisionTransformer


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
               grid: tuple[int, int]) -> torch.Tensor:
    """Run `block` on tokens x (B, 1 + h*w, D) with `rule` and `surgery`."""
    q, k, v = block.attn.qkv(block.ln_1(x))
    y = block.attn.merge(attend(q, k, v, rule, grid))
    if surgery.residual:
        y = x + y
    if surgery.ffn:
        y = y + block.mlp(block.ln_2(y))
    return y


def dense_embeddings(visual: VisionTransformer, images: torch.Tensor, rule: AttentionRule,
                     surgery: Surgery, pos_resize: str | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised images (B, 3, H, W) -> L2-normalised patch embeddings (B, h*w, C) and (h, w).

    Blocks 0..L-2 run untouched; the last block uses `rule`/`surgery`; ln_post and the
    projection are applied to every token and the class token is dropped afterwards.
    """
    out = visual.forward_tokens(images, pos_resize=pos_resize)
    y = last_block(visual.blocks[-1], out.tokens, rule, surgery, out.grid)
    feats = visual.project(y)[:, 1:]
    return F.normalize(feats, dim=-1), out.grid


def patch_logits(visual: VisionTransformer, images: torch.Tensor, queries: torch.Tensor,
                 rule: AttentionRule, surgery: Surgery, pos_resize: str | None = None) -> torch.Tensor:
    """Cosine patch-to-query similarity: (B, 3, H, W), (Q, C) normalised -> (B, Q, h, w)."""
    feats, (h, w) = dense_embeddings(visual, images, rule, surgery, pos_resize)
    logits = feats @ queries.to(feats.dtype).T
    return logits.transpose(1, 2).reshape(images.shape[0], -1, h, w)
