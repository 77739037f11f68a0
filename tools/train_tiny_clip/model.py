"""The model: a tiny CLIP, its optimiser groups and schedule, the contrastive loss, and the
OpenAI-layout state dict it ships as."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ovss.backbones.clip import CLIP
from ovss.backbones.configs import ClipCfg, TextCfg, VisionCfg, infer_clip_config

from .options import CONTEXT, IMAGE_SIZE, PATCH, WEIGHTS_NAME


def build_model(args: argparse.Namespace, vocab_size: int) -> CLIP:
    cfg = ClipCfg(
        VisionCfg(width=args.vision_width, layers=args.vision_layers, heads=args.vision_width // 64,
                  patch_size=PATCH, image_size=IMAGE_SIZE, output_dim=args.embed_dim, act="quick_gelu"),
        TextCfg(width=args.text_width, layers=args.text_layers, heads=args.text_width // 64,
                context_length=CONTEXT, vocab_size=vocab_size, output_dim=args.embed_dim, act="quick_gelu"),
    )
    model = CLIP(cfg)
    # OpenAI's `initialize_parameters` for the text tower (the image tower keeps module defaults,
    # as in OpenAI's ViT).
    t = model.text
    w, n = cfg.text.width, cfg.text.layers
    attn_std, proj_std, fc_std = w**-0.5, w**-0.5 * (2 * n) ** -0.5, (2 * w) ** -0.5
    for blk in t.transformer.resblocks:
        torch.nn.init.normal_(blk.attn.in_proj_weight, std=attn_std)
        torch.nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
        torch.nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
        torch.nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
    return model


def param_groups(model: CLIP, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "ln" in name or name == "logit_scale":
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine from --lr to --min-lr at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(args.steps - args.warmup, 1)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def encode_image_train(model: CLIP, images: torch.Tensor, drop: float, gen: torch.Generator | None) -> torch.Tensor:
    """CLIP's image embedding, optionally from a random subset of the patch tokens (FLIP-style
    patch dropout: training only; the model and its inference path are unchanged)."""
    visual = model.visual
    if drop <= 0:
        return visual(images)
    x, _ = visual.embed(images)
    b, n1, d = x.shape
    keep = max(1, round((n1 - 1) * (1 - drop)))
    idx = torch.rand(b, n1 - 1, generator=gen).argsort(dim=1)[:, :keep] + 1
    x = torch.cat([x[:, :1], x.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))], dim=1)
    for blk in visual.blocks:
        x = blk(x)
    return visual.project(x[:, 0])


def clip_loss(model: CLIP, images: torch.Tensor, tokens: torch.Tensor, drop: float = 0.0,
              gen: torch.Generator | None = None) -> torch.Tensor:
    img = F.normalize(encode_image_train(model, images, drop, gen), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def openai_state(model: CLIP, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Canonical state dict -> OpenAI layout: text keys at top level, plus OpenAI's scalar entries."""
    out = {}
    for k, v in model.state_dict().items():
        key = k.removeprefix("text.")
        out[key] = v.detach().to(dtype).contiguous().clone()
    cfg = model.cfg
    out["input_resolution"] = torch.tensor(cfg.vision.image_size)
    out["context_length"] = torch.tensor(cfg.text.context_length)
    out["vocab_size"] = torch.tensor(cfg.text.vocab_size)
    return out


def load_shipped(out: Path) -> CLIP:
    """The weights file in `out` read back as a model (OpenAI layout -> canonical), in float32."""
    from safetensors.torch import load_file

    state = load_file(str(out / WEIGHTS_NAME))
    canon = {("text." + k if not k.startswith(("visual.", "logit_scale")) else k): v.float()
             for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    model = CLIP(infer_clip_config(canon))
    model.load_state_dict(canon)
    return model.eval()
