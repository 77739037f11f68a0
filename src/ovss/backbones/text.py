"""CLIP's text transformer (causal, read out at the end-of-text token)."""

from __future__ import annotations

import torch
from torch import nn

from .configs import TextCfg
from .transformer import LayerNorm, Transformer


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextCfg):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.act, cfg.ln_eps,
                                       cfg.mlp_ratio)
        self.ln_final = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def forward(self, tokens: torch.Tensor, crop: bool = True) -> torch.Tensor:
        """Token ids (B, context) -> (B, C) text embeddings, read at each row's end-of-text token.

        The end-of-text token has the largest id in CLIP's vocabulary, so argmax finds it. With
        `crop`, positions after the longest prompt are not computed: the mask is causal, so the
        tokens before them, and thus the result, are exactly the same.
        """
        eot = tokens.argmax(dim=-1)
        if crop:
            tokens = tokens[:, : int(eot.max()) + 1]
        n = tokens.shape[1]
        dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding[:n].to(dtype)
        mask = torch.full((n, n), float("-inf"), dtype=dtype, device=x.device).triu_(1)
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
