"""The CLIP model: an image tower, a text tower and the learned logit scale.

Its state dict is the canonical layout every weight format is converted to: OpenAI's key names
with the text tower under `text.` (`visual.*`, `text.token_embedding.weight`, ..., `logit_scale`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configs import ClipCfg
from .text import TextTransformer
from .vit import VisionTransformer


class CLIP(nn.Module):
    def __init__(self, cfg: ClipCfg, pos_resize: str = "scale_factor"):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, pos_resize=pos_resize)
        self.text = TextTransformer(cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor, crop: bool = True) -> torch.Tensor:
        return self.text(tokens, crop=crop)
