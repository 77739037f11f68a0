"""From an image to per-pixel query logits and a label map: the shared inference path.

preprocess (the research repos' mmseg test pipeline: keep-ratio resize to a short side with the
long side capped, CLIP mean/std on the 0-255 scale) -> sliding windows (all crops of an image in
one batch) -> a dense readout per window -> stitch (overlaps averaged, bilinear) -> decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# CLIP's mean/std on the 0-255 scale, as the SCLIP/ClearCLIP/NACLIP configs write them.
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)
# ImageNet's (MaskCLIP's official mmseg configs).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Protocol:
    """How an image is fed to the network.

    short_side: resize (keep ratio) so the short side is this; None keeps the image size.
    long_cap: the long side is capped at this (mmseg Resize scale=(long_cap, short_side)).
    crop: sliding-window size in pixels; 0 = whole image in one forward pass.
    stride: window stride in pixels.
    pad_to_patch: zero-pad each crop (symmetric, in normalised space) to a multiple of the patch
        size and crop the logits back (ClearCLIP); otherwise the remainder is dropped (SCLIP).
    mean, std: per-channel normalisation on the 0-255 scale (RGB).
    window_batch: at most this many windows per forward pass: the memory bound of the backbone.
    pad_multiple: with pad_to_patch, pad to a multiple of this instead of the patch size
        (ProxyCLIP pads to 56, a multiple of every patch size it pairs).
    """

    short_side: int | None = 336
    long_cap: int = 2048
    crop: int = 224
    stride: int = 112
    pad_to_patch: bool = False
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    window_batch: int = 32
    pad_multiple: int | None = None


def resized_size(h: int, w: int, short_side: int | None, long_cap: int) -> tuple[int, int]:
    """mmcv's keep-ratio rescale rule: factor = min(long_cap / long, short_side / short),
    new side = int(side * factor + 0.5)."""
    if short_side is None:
        return h, w
    f = min(long_cap / max(h, w), short_side / min(h, w))
    return max(int(h * f + 0.5), 1), max(int(w * f + 0.5), 1)


def preprocess(image: np.ndarray, protocol: Protocol, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 RGB -> (1, 3, h, w) normalised float32 at the protocol's size.

    The resize is bilinear with half-pixel centres and no antialiasing, rounded back to uint8,
    which is what mmcv's cv2 resize of a uint8 image does (cv2 uses fixed-point weights, so
    single pixel values can differ by one grey level).
    """
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    nh, nw = resized_size(h, w, protocol.short_side, protocol.long_cap)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        x = x.round_().clamp_(0, 255)
    mean = torch.tensor(protocol.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(protocol.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def window_boxes(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg slide-inference windows (y1, y2, x1, x2): a regular grid whose last row/column is
    snapped to the border; a side smaller than the crop gives one window covering it."""
    if crop <= 0:
        return [(0, h, 0, w)]
    hg = max(h - crop + stride - 1, 0) // stride + 1
    wg = max(w - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(hg):
        for j in range(wg):
            y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


# A readout maps a batch of normalised crops (B, 3, H, W) to patch logits (B, Q, h, w).
Readout = Callable[[torch.Tensor], torch.Tensor]


def _pad_to_multiple(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % patch, (-w) % patch
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # left, right, top, bottom
    return (F.pad(x, pad) if any(pad) else x), pad


def slide_logits(image: torch.Tensor, readout: Readout, protocol: Protocol, patch_size: int,
                 num_queries: int | None = None) -> torch.Tensor:
    """Window logits stitched on the image grid: (1, 3, H, W) -> (Q, H, W), overlaps averaged.

    Each window's patch logits are upsampled bilinearly to the window size before they are
    summed into the canvas, as in the reference `forward_slide`.
    """
    _, _, h, w = image.shape
    boxes = window_boxes(h, w, protocol.crop, protocol.stride)
    canvas = None
    count = torch.zeros(1, h, w, device=image.device, dtype=image.dtype)
    for start in range(0, len(boxes), max(protocol.window_batch, 1)):
        chunk = boxes[start : start + protocol.window_batch]
        crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        pad = (0, 0, 0, 0)
        if protocol.pad_to_patch:
            crops, pad = _pad_to_multiple(crops, protocol.pad_multiple or patch_size)
        logits = readout(crops)
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        if any(pad):
            logits = logits[..., pad[2] : logits.shape[-2] - pad[3], pad[0] : logits.shape[-1] - pad[1]]
        if canvas is None:
            canvas = torch.zeros(logits.shape[1], h, w, device=image.device, dtype=logits.dtype)
        for (y1, y2, x1, x2), lg in zip(chunk, logits):
            canvas[:, y1:y2, x1:x2] += lg
            count[:, y1:y2, x1:x2] += 1
    return canvas / count


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


@dataclass(frozen=True)
class Decision:
    """Logits -> label map, in the research repos' order.

    logit_scale: multiplies the cosine logits before the softmax over all queries.
    prob_thd: pixels whose best class probability is below this go to background (class 0).
    area_thd: SCLIP's VOC rule: a non-background class covering at most this fraction of the
        non-background argmax pixels has its probabilities zeroed (its pixels go to the next best).
    """

    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: float | None = None


def class_probabilities(logits: torch.Tensor, query_to_class: Sequence[int], num_classes: int,
                        logit_scale: float) -> torch.Tensor:
    """(Q, H, W) cosine logits -> (C, H, W): softmax over all queries, max over each class's."""
    probs = (logits * logit_scale).softmax(dim=0)
    q2c = list(query_to_class)
    if q2c == list(range(num_classes)):
        return probs
    groups: list[list[int]] = [[] for _ in range(num_classes)]
    for q, c in enumerate(q2c):
        groups[c].append(q)
    return torch.stack([probs[g].amax(0) if len(g) > 1 else probs[g[0]] for g in groups])


def decide(probs: torch.Tensor, decision: Decision) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) class probabilities -> (labels (H, W) int64, probs after the area rule)."""
    if decision.area_thd is not None:
        c = probs.shape[0]
        onehot = F.one_hot(probs.argmax(0), c)
        area = onehot[..., 1:].sum((0, 1)).to(probs.dtype)
        keep = (area > decision.area_thd * area.sum()).to(probs.dtype)
        probs = probs.clone()
        probs[1:] *= keep.view(-1, 1, 1)
    labels = probs.argmax(0)
    labels[probs.amax(0) < decision.prob_thd] = 0
    return labels, probs


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
