"""Positional-embedding resizing for inputs whose patch grid is not the training grid.

The reference OVSS repos (SCLIP, NACLIP, ClearCLIP, ...) resize the square grid bicubically with a
*scale factor* of (h + 0.1) / G and (w + 0.1) / G (the DINO trick), not with an explicit output
size. The two give slightly different embeddings, so the factor rule is the default for parity;
`mode="size"` is the mmseg/MaskCLIP-official rule (resize to the target size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], mode: str = "scale_factor",
                     prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a (prefix + G*G, D) positional embedding to a (h, w) patch grid.

    Args:
        pos: positional embedding, the first `prefix_tokens` rows (class token) kept as they are.
        grid: target (h, w) patch grid (rows, columns).
        mode: "scale_factor" (SCLIP/NACLIP rule) or "size" (mmseg resize to the exact size).
    Returns:
        (prefix + h*w, D) tensor in `pos`'s dtype. Unchanged when (h, w) is the training grid.
    """
    h, w = grid
    prefix, patch = pos[:prefix_tokens], pos[prefix_tokens:]
    n = patch.shape[0]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"positional embedding has {n} patch rows, not a square grid")
    if (h, w) == (g, g):
        return pos
    d = pos.shape[-1]
    img = patch.reshape(1, g, g, d).permute(0, 3, 1, 2)
    if mode == "scale_factor":
        img = F.interpolate(img, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic",
                            align_corners=False, recompute_scale_factor=False)
    elif mode == "size":
        img = F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False)
    else:
        raise ValueError(f"unknown pos-embed resize mode {mode!r}; expected 'scale_factor' or 'size'")
    if img.shape[-2:] != (h, w):
        raise RuntimeError(f"pos-embed resize produced {tuple(img.shape[-2:])}, wanted {(h, w)}")
    return torch.cat([prefix, img.permute(0, 2, 3, 1).reshape(h * w, d)], dim=0)
