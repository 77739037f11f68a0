"""Bilinear resizes of logits to the image size, whole or in bands of rows (bounded memory)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(Q, h, w) -> (Q, H, W) bilinear, align_corners=False (the reference's final resize).

    float64 logits (a reference that resizes float64 scores, e.g. LPOSS+) are resized in float64,
    source coordinates included, a few queries at a time, and returned in float32: the full-size
    tensor stays float32. (In float32 the source coordinate of a column near 400 has an ulp of
    3e-5, which moves a bilinear value by that fraction of the step between neighbours.)"""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float() if logits.dtype == torch.float64 else logits
    if logits.dtype != torch.float64:
        return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    out = torch.empty(logits.shape[0], *size, dtype=torch.float32, device=logits.device)
    for q in range(0, logits.shape[0], 4):
        out[q:q + 4] = F.interpolate(logits[None, q:q + 4], size=size, mode="bilinear", align_corners=False)[0]
    return out


def _bilinear_taps(n_in: int, n_out: int, device, dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Source indices and weights of torch's bilinear resize (align_corners=False, size given).
    scale = n_in / n_out
    src = ((torch.arange(n_out, device=device, dtype=dtype) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, src - i0


def upsample_rows(logits: torch.Tensor, size: tuple[int, int], rows: int):
    """Bilinear upsampling (align_corners=False) yielded in bands of output rows.

    Equal to `upsample` up to float round-off, but never holds the full-size (Q, H, W) tensor:
    this is what bounds memory for very large images. Yields (row0, row1, (Q, row1-row0, W)),
    float32 (float64 logits are resized in float64, as `upsample` does).
    """
    h, w = logits.shape[-2:]
    H, W = size
    tap = torch.float64 if logits.dtype == torch.float64 else torch.float32
    y0, y1, ly = _bilinear_taps(h, H, logits.device, tap)
    x0, x1, lx = _bilinear_taps(w, W, logits.device, tap)
    lx = lx.to(logits.dtype)
    for r0 in range(0, H, rows):
        r1 = min(r0 + rows, H)
        wy = ly[r0:r1].to(logits.dtype).view(1, -1, 1)
        band = logits[:, y0[r0:r1]] * (1 - wy) + logits[:, y1[r0:r1]] * wy
        band = band[:, :, x0] * (1 - lx) + band[:, :, x1] * lx
        yield r0, r1, band.float() if band.dtype == torch.float64 else band
