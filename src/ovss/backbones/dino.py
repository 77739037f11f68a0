"""DINO and DINOv2 image towers in the shared ViT (`vit.VisionTransformer`), their weight formats
and where the published weights live.

A DINO tower is the CLIP image tower with four switches (`VisionCfg`): no `ln_pre`, a biased patch
conv, LayerScale in every block (DINOv2) and register tokens (DINOv2 "with registers"); its final
`norm` is `ln_post` with no projection. LayerNorm eps 1e-6 and exact GELU throughout. The
positional embedding is resized with the +0.1 scale-factor rule both reference repos use
(facebookresearch/dino `vision_transformer.py` `interpolate_pos_encoding`; facebookresearch/dinov2
`interpolate_offset=0.1`, no antialias), which is `pos_embed.resize_pos_embed(mode="scale_factor")`.

Weight formats, all converted to the canonical layout (this tower's own state-dict keys, no
prefix):

- "dino": the official checkpoints (torch hub / dl.fbaipublicfiles `.pth`: `cls_token`,
  `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,
  mlp.fc2,ls2.gamma}`, `norm`, `register_tokens`, `mask_token`), chunked blocks
  (`blocks.C.N.`), full training checkpoints (`teacher` / `student` + `backbone.`), and timm's
  forms (the same keys; timm's register models fold pos_embed[0] into `cls_token` and keep
  `reg_token` and a patch-only `pos_embed`, which loads as an equivalent zero class-row).
- "hf_vit": transformers `ViTModel` (facebook/dino-*: `embeddings.*`, `encoder.layer.N.
  attention.attention.{query,key,value}`, `layernorm_before/after`, `intermediate.dense`,
  `output.dense`, `layernorm`).
- "hf_dinov2": transformers `Dinov2Model` / `Dinov2WithRegistersModel` (facebook/dinov2-*:
  `norm1/2`, `mlp.fc1/fc2`, `layer_scale1/2.lambda1`, `embeddings.register_tokens`).

Note: transformers' DINO (v1) configs say layer_norm_eps 1e-12 where the original model uses
1e-6; ovss follows the original (`ln_eps` overrides it).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .configs import VisionCfg
from .dino_pretrained import (
    _DINO,
    DINO_ARCHS,
    DINO_PRETRAINED,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoPretrained,
    list_dino_backbones,
    resolve_dino_name,
)
from .vit import Tap, VisionTransformer

__all__ = [
    "DINO_ARCHS",
    "DINO_PRETRAINED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DinoPretrained",
    "LoadedDino",
    "create_dino",
    "detect_dino_format",
    "dino_features",
    "dino_to_canonical",
    "infer_dino_config",
    "list_dino_backbones",
]

# ----------------------------------------------------------------------------------------------
# Formats

_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "vit.", "dinov2.", "encoder.backbone.")
_DROP = ("mask_token", "head.", "pooler.", "fc_norm.", "embeddings.mask_token", "classifier.")


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for wrapper in ("teacher", "student", "state_dict", "model"):  # DINO full checkpoints
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    # a training checkpoint's projection head lives beside the backbone
    return {k: v for k, v in state.items() if not k.startswith(_DROP)}


def detect_dino_format(state: dict[str, Tensor]) -> str:
    """"dino" (official / timm), "hf_vit" (transformers ViTModel), "hf_dinov2" or "ovss"."""
    keys = set(state)
    if "class_embedding" in keys and "conv1.weight" in keys:
        return "ovss"
    if "embeddings.cls_token" in keys:
        return "hf_dinov2" if any(".layer_scale1." in k or ".norm1." in k for k in keys) else "hf_vit"
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        return "dino"
    raise ValueError("not a DINO / DINOv2 checkpoint: none of the official, timm or transformers "
                     f"key layouts (first keys: {sorted(keys)[:6]})")


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _pos_and_cls(cls: Tensor, pos: Tensor, reg: Tensor | None) -> dict[str, Tensor]:
    cls, pos = cls.reshape(-1), _flat(pos)
    n = pos.shape[0]
    g = math.isqrt(n)
    if g * g == n:  # timm no_embed_class (register models): pos has no class row, cls holds it
        pos = torch.cat([torch.zeros_like(pos[:1]), pos], 0)
    out = {"class_embedding": cls, "positional_embedding": pos}
    if reg is not None:
        out["register_tokens"] = _flat(reg)
    return out


def _official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if any(re.search(r"mlp\.w(12|3)\.", k) for k in state):
        raise ValueError("SwiGLU DINOv2 (ViT-g) checkpoints are not supported")
    out = _pos_and_cls(state["cls_token"], state["pos_embed"], state.get("register_tokens", state.get("reg_token")))
    out["conv1.weight"] = state["patch_embed.proj.weight"]
    out["conv1.bias"] = state["patch_embed.proj.bias"]
    out["ln_post.weight"], out["ln_post.bias"] = state["norm.weight"], state["norm.bias"]
    names = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
             "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj", "ls1.gamma": "ls_1.gamma", "ls2.gamma": "ls_2.gamma"}
    for k, v in state.items():
        m = re.match(r"blocks\.(?:\d+\.)?(\d+)\.(.+)$", k)
        if not m:
            continue
        i, rest = m.groups()
        for a, b in names.items():
            if rest.startswith(a):
                out[f"transformer.resblocks.{i}.{b}{rest[len(a):]}"] = v
                break
        else:
            raise ValueError(f"unexpected DINO block key {k!r}")
    return out


_HF5 = ((re.compile(r"^layers\.(\d+)\."), r"encoder.layer.\1."),
        (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
        (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
        (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
        (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."))


def _hf_hub_names(state: dict[str, Tensor], dinov2: bool) -> dict[str, Tensor]:
    """transformers >= 5 in-memory names (`layers.N.attention.q_proj`, ViT's `mlp.fc1`) -> the
    names the hub files use (what `save_pretrained` writes)."""
    out = {}
    for k, v in state.items():
        for pat, rep in _HF5:
            k = pat.sub(rep, k)
        if not dinov2:
            k = k.replace(".mlp.fc1.", ".intermediate.dense.").replace(".mlp.fc2.", ".output.dense.")
        out[k] = v
    return out


def _hf(state: dict[str, Tensor], dinov2: bool) -> dict[str, Tensor]:
    state = _hf_hub_names(state, dinov2)
    e = "embeddings."
    out = _pos_and_cls(state[e + "cls_token"], state[e + "position_embeddings"], state.get(e + "register_tokens"))
    out["conv1.weight"] = state[e + "patch_embeddings.projection.weight"]
    out["conv1.bias"] = state[e + "patch_embeddings.projection.bias"]
    out["ln_post.weight"], out["ln_post.bias"] = state["layernorm.weight"], state["layernorm.bias"]
    if dinov2:
        names = {"norm1": "ln_1", "norm2": "ln_2", "attention.output.dense": "attn.out_proj",
                 "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "layer_scale1.lambda1": "ls_1.gamma",
                 "layer_scale2.lambda1": "ls_2.gamma"}
    else:
        names = {"layernorm_before": "ln_1", "layernorm_after": "ln_2", "attention.output.dense": "attn.out_proj",
                 "intermediate.dense": "mlp.c_fc", "output.dense": "mlp.c_proj"}
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in blocks:
        a, b = f"encoder.layer.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{b}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{a}attention.attention.{n}.{kind}"] for n in ("query", "key", "value")], 0)
        for k, v in state.items():
            if not k.startswith(a) or k.startswith(a + "attention.attention."):
                continue
            rest = k[len(a):]
            for x, y in names.items():
                if rest.startswith(x):
                    out[b + y + rest[len(x):]] = v
                    break
            else:
                raise ValueError(f"unexpected transformers key {k!r}")
    return out


def dino_to_canonical(state: dict[str, Tensor], fmt: str | None = None) -> dict[str, Tensor]:
    """Any DINO / DINOv2 state dict (see the module docstring) -> this tower's canonical keys."""
    state = _strip(dict(state))
    fmt = fmt or detect_dino_format(state)
    if fmt == "ovss":
        return state
    if fmt == "dino":
        return _official(state)
    if fmt in ("hf_vit", "hf_dinov2"):
        return _hf(state, fmt == "hf_dinov2")
    raise ValueError(f"unknown DINO format {fmt!r}")


def infer_dino_config(state: dict[str, Tensor], ln_eps: float = 1e-6) -> VisionCfg:
    """Architecture of a canonical DINO state dict (head width 64, as every published model)."""
    conv = state["conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    n_pos = state["positional_embedding"].shape[0]
    grid = math.isqrt(n_pos - 1)
    if grid * grid + 1 != n_pos:
        raise ValueError(f"positional_embedding has {n_pos} rows, not a square grid + 1")
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    reg = state.get("register_tokens")
    return VisionCfg(
        width=width, layers=layers, heads=max(width // 64, 1), patch_size=patch, image_size=grid * patch,
        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        layer_scale="transformer.resblocks.0.ls_1.gamma" in state,
        registers=0 if reg is None else reg.shape[0], **{**_DINO, "ln_eps": ln_eps},
    )


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedDino:
    model: VisionTransformer
    name: str
    source: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _read(path: Path) -> dict[str, Tensor]:
    from .convert import find_weights_file, read_state

    if path.is_dir():
        path = find_weights_file(path)
    state, _ = read_state(path)
    return state


def _resolve(source: str | os.PathLike, cache_dir=None) -> tuple[Path, str | None]:
    """A local weights path for a registered name, `timm:<name>`, `hf-hub:org/repo` or a path."""
    from .hub import fetch_first, hub_cache_dir

    s = os.fspath(source)
    p = Path(s).expanduser()
    if p.exists():
        return p, None
    timm = s.startswith("timm:")
    key = resolve_dino_name(s.removeprefix("timm:"))
    cache = hub_cache_dir(cache_dir)
    if key is not None:
        pre = DINO_PRETRAINED[key]
        repo = pre.timm_hub_id if timm else pre.hf_hub_id
        return fetch_first(repo, pre.weights, cache, f"timm:{key}" if timm else key), key
    if s.startswith("hf-hub:"):
        repo = s[len("hf-hub:"):].strip("/")
        return fetch_first(repo, ("model.safetensors", "pytorch_model.bin"), cache, None), None
    raise FileNotFoundError(f"DINO weights not found: {s!r} is not a file, folder, registered DINO "
                            f"backbone ({', '.join(list_dino_backbones())}), 'timm:<name>' or 'hf-hub:org/repo'")


def create_dino(backbone: str | os.PathLike = "dino-vitb8", weights: str | os.PathLike | dict | None = None,
                ln_eps: float = 1e-6, cache_dir=None, pretrained: bool = True) -> LoadedDino:
    """Build a DINO / DINOv2 tower and load its weights.

    Args:
        backbone: a registered name ("dino-vitb8", "dinov2-vitb14-reg", ... or an alias / hub id),
            `timm:<name>` (the timm hub form), `hf-hub:org/repo`, or a weights file / folder.
        weights: a file, folder or state dict overriding where the weights come from.
        pretrained: False builds a registered architecture with random weights (no download).
    """
    name = resolve_dino_name(os.fspath(backbone).removeprefix("timm:")) if isinstance(backbone, str) else None
    if not pretrained:
        if name is None:
            raise KeyError(f"unknown DINO architecture {backbone!r}; choose from {list_dino_backbones()}")
        return LoadedDino(VisionTransformer(DINO_ARCHS[name]).eval(), name, "random")
    if isinstance(weights, dict):
        state, source = weights, "state dict"
    else:
        path, key = _resolve(weights if weights is not None else backbone, cache_dir)
        name = name or key
        state, source = _read(path), str(path)
    canonical = dino_to_canonical(state)
    cfg = infer_dino_config(canonical, ln_eps)
    model = VisionTransformer(cfg)
    missing, unexpected = model.load_state_dict(canonical, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: DINO weights do not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return LoadedDino(model.eval(), name or Path(source).stem, source)


# ----------------------------------------------------------------------------------------------
# Features for methods


@torch.no_grad()
def dino_features(model: VisionTransformer, images: Tensor, kind: str = "tokens", layer: int = -1,
                  norm: bool = True, heads: bool = False, order: str | None = None) -> Tensor:
    """Patch features of one block of a DINO tower, as (B, C, h, w), prefix tokens dropped.

    kind: "tokens" (the block's output; `norm` applies the final LayerNorm, as the references'
        `get_intermediate_layers` do), or "q" / "k" / "v" (the block's projections of
        ln_1(input), heads concatenated (B, D, h, w) or, with `heads`, (B, heads, d_h, h, w)).
    layer: block index (negative from the end).
    order: attention arithmetic (`Attention.forward`): "qk_s" rounds as DINO's own code does.
    """
    n = len(model.blocks)
    li = layer % n
    if kind == "tokens":
        out = model.forward_tokens(images, upto=li + 1, keep_layers=(li,), order=order)
        t = out.layers[li]
        t = model.ln_post(t) if norm else t
        t = t[:, model.n_prefix:]
        h, w = out.grid
        return t.transpose(1, 2).reshape(t.shape[0], -1, h, w)
    if kind not in ("q", "k", "v"):
        raise ValueError(f"unknown feature kind {kind!r}; expected tokens, q, k or v")
    out = model.forward_tokens(images, upto=li + 1, taps={"x": Tap("qkv", (li,))}, order=order)
    q, k, v = out.taps["x"][li]
    t = {"q": q, "k": k, "v": v}[kind][:, :, model.n_prefix:]  # (B, heads, h*w, d_h)
    h, w = out.grid
    b, nh, _, dh = t.shape
    if heads:
        return t.permute(0, 1, 3, 2).reshape(b, nh, dh, h, w)
    return t.permute(0, 1, 3, 2).reshape(b, nh * dh, h, w)
