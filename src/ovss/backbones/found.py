"""FOUND (Simeoni et al., CVPR 2023, valeoai/FOUND): unsupervised saliency as DINO ViT-S/8's
last-block keys through a 1x1 convolution. CLIP-DIY fuses its foreground probability into the
class scores (`heads/clipdiy.py`).

Reference: valeoai/FOUND@1ad22bacf1a6854faff1b5d4be300d54cad6f277.
- model (model.py:24-53, 203-241; configs/found_DUTS-TR.yaml:1-7): DINO v1 ViT-S/8 (the
  official `dino_deitsmall8_300ep_pretrain.pth`), a forward hook on the last block's
  `attn.qkv` (model.py:232-239), its keys (`feats: k`), heads concatenated head-major
  (`extract_feats`, model.py:180-200), class token dropped, as a (B, 384, h/8, w/8) map; the
  decoder is `nn.Conv2d(384, 1, (1, 1))` (model.py:53).
- input and output (model.py:55-61, 91-99 `make_input_divisible`; clip-diy
  thirdparty/extract_saliency.py:259-281, the script CLIP-DIY uses): the image at its own size,
  ToTensor + ImageNet normalisation, zero-padded right/bottom to a multiple of 8; the decoder's
  map bilinear x8 (align_corners False), cropped to the image, sigmoid (`--drop-probs`: the soft
  probability, not the 0.5 mask).
- weights: the released decoder is `data/weights/decoder_weights.pt` in the repository
  (`FOUND_DECODER_URL`), a `torch.save` of `{"decoder": {"weight": (1, 384, 1, 1), "bias": (1,)}}`
  (model.py:168-174 `decoder_save_weights`). It loads by name ("found-duts-tr", from the ovss
  hub cache: `ovss download found-duts-tr` puts it there) or by file, in that layout, as a bare
  {"weight", "bias"} state dict, or with "decoder." prefixes; `.safetensors` works too.

The DINO tower is the shared one (`create_dino`, default "dino-vits8"). Note: ovss's
"dino-vits8" is the hub's `dino_deitsmall8_pretrain` checkpoint; FOUND was trained on
`dino_deitsmall8_300ep_pretrain.pth` (model.py:207-208), which loads as a file:
`dino=/path/to/dino_deitsmall8_300ep_pretrain.pth` (`FOUND_DINO_URL`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .found_pretrained import (  # noqa: F401  (re-exported: the names users look for here)
    FOUND_DECODER_URL,
    FOUND_DINO_URL,
    FOUND_PRETRAINED,
    FoundPretrained,
    resolve_found_name,
)
from .hub import download_found, found_cache_path  # noqa: F401
from .vit import VisionTransformer


def decoder_state(state: dict) -> dict[str, Tensor]:
    """A FOUND decoder checkpoint in any of its layouts -> {"weight": (1, D, 1, 1), "bias": (1,)}."""
    if "decoder" in state and isinstance(state["decoder"], dict):
        state = state["decoder"]
    state = {k.removeprefix("module.").removeprefix("decoder."): v for k, v in state.items()}
    if set(state) != {"weight", "bias"}:
        raise ValueError(f"not a FOUND decoder checkpoint: expected {{'decoder': {{'weight', 'bias'}}}}, "
                         f"got keys {sorted(state)[:6]}")
    w, b = state["weight"], state["bias"]
    if w.ndim == 2:
        w = w[:, :, None, None]
    if w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1) or b.shape != (1,):
        raise ValueError(f"FOUND decoder must be a 1x1 conv to one channel, got weight {tuple(w.shape)}, "
                         f"bias {tuple(b.shape)}")
    return {"weight": w.float(), "bias": b.float()}


def read_decoder(source: str | os.PathLike | dict, cache_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """(decoder state, where it came from) for a name, a file or a state dict."""
    if isinstance(source, dict):
        return decoder_state(source), "state dict"
    s = os.fspath(source)
    p = Path(s).expanduser()
    if not p.exists():
        key = resolve_found_name(s)
        if key is None:
            raise FileNotFoundError(f"FOUND decoder not found: {s!r} is neither a file nor a released decoder "
                                    f"({', '.join(FOUND_PRETRAINED)})")
        p = found_cache_path(key, cache_dir)
        if not p.exists():
            pre = FOUND_PRETRAINED[key]
            raise FileNotFoundError(
                f"FOUND decoder {key!r} is not in the cache ({p}). Run `ovss download {key}` on a machine "
                f"with network access, or download {pre.url} and pass its path (decoder=/path/{pre.filename})")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    return decoder_state(state), str(p)


@dataclass
class LoadedFound:
    """FOUND: a DINO tower and its 1x1 decoder; `saliency` maps images to foreground probability."""

    dino: VisionTransformer
    decoder: torch.nn.Conv2d
    name: str
    source: str

    def to(self, device: torch.device | str) -> LoadedFound:
        self.dino.to(device)
        self.decoder.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) ImageNet-normalised -> (B, 1, ceil(H/8), ceil(W/8)) decoder logits."""
        return found_logits(self.dino, self.decoder, images)

    @torch.no_grad()
    def saliency(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) ImageNet-normalised -> (B, 1, H, W) foreground probability (sigmoid)."""
        return found_saliency(self.dino, self.decoder, images)


def make_decoder(state: dict[str, Tensor]) -> torch.nn.Conv2d:
    w = state["weight"]
    conv = torch.nn.Conv2d(w.shape[1], 1, (1, 1))
    conv.load_state_dict(state)
    return conv.eval()


def create_found(decoder: str | os.PathLike | dict = "found-duts-tr", dino: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, pretrained: bool = True) -> LoadedFound:
    """FOUND with its decoder (a released name, a file, or a state dict) on a DINO tower (a zoo
    name or file; default: the decoder's own, "dino-vits8"). `pretrained=False`: random weights of
    the same shapes (no download), for tests."""
    from .dino import create_dino

    key = resolve_found_name(os.fspath(decoder)) if isinstance(decoder, (str, os.PathLike)) else None
    dino = dino or (FOUND_PRETRAINED[key].dino if key else "dino-vits8")
    tower = create_dino(dino, cache_dir=cache_dir, pretrained=pretrained).model
    if not pretrained:
        return LoadedFound(tower, torch.nn.Conv2d(tower.cfg.width, 1, (1, 1)).eval(), key or "found", "random")
    state, source = read_decoder(decoder, cache_dir)
    if state["weight"].shape[1] != tower.cfg.width:
        raise ValueError(f"FOUND decoder {source} takes {state['weight'].shape[1]} channels, the DINO tower "
                         f"{dino!r} gives {tower.cfg.width}")
    return LoadedFound(tower, make_decoder(state), key or Path(source).stem, source)


@torch.no_grad()
def found_logits(dino: VisionTransformer, decoder: torch.nn.Module, images: Tensor) -> Tensor:
    """The decoder's map on the last block's keys; the input zero-padded right/bottom to the patch
    size (model.py:91-99), as FOUND's `forward_step(for_eval=True)`."""
    from .dino import dino_features

    p = dino.patch_size
    h, w = images.shape[-2:]
    x = F.pad(images, (0, (p - w % p) % p, 0, (p - h % p) % p), value=0.0)
    # DINO v1's own attention arithmetic (q * scale) @ k^T (vision_transformer.py), as CASS
    order = "qk_s" if dino.n_prefix == 1 and not dino.cfg.layer_scale else None
    k = dino_features(dino, x, kind="k", order=order)
    return decoder(k)


@torch.no_grad()
def found_saliency(dino: VisionTransformer, decoder: torch.nn.Module, images: Tensor) -> Tensor:
    """Foreground probability at the input size: logits bilinear x patch (align_corners False),
    cropped, sigmoid (clip-diy thirdparty/extract_saliency.py:268-277 with --drop-probs)."""
    h, w = images.shape[-2:]
    pred = found_logits(dino, decoder, images)
    up = F.interpolate(pred, scale_factor=dino.patch_size, mode="bilinear", align_corners=False)[..., :h, :w]
    return torch.sigmoid(up)
