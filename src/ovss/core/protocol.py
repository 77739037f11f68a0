"""How an image is fed to the network: resize, normalise, sliding windows, stitching.

preprocess (the research repos' mmseg test pipeline: keep-ratio resize to a short side with the
long side capped, mean/std on the 0-255 scale) -> sliding windows (all crops of an image in one
batch) -> a dense readout per window -> stitch (overlaps averaged, bilinear). `resize` takes the
stitched logits to the image size and `decision` turns them into a label map.
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
    mean, std: per-channel normalisation on the 0-255 scale (RGB); None (the default): the
        backbone's own statistics (its zoo entry's, `Segmenter.normalization`). Method recipes
        set the exact constants their reference uses.
    window_batch: at most this many windows per forward pass: the memory bound of the backbone.
    pad_multiple: with pad_to_patch, pad to a multiple of this instead of the patch size
        (ProxyCLIP pads to 56, a multiple of every patch size it pairs).
    squash: (a, b): resize to exactly a x b pixels, aspect not kept, instead of short_side /
        long_cap: a landscape image (w > h) becomes b high and a wide, any other a high and b
        wide (MLMP's `ResizeAndPatchify`: (224, 224); Cityscapes (1120, 560)). See `squashed_size`.
    """

    short_side: int | None = 336
    long_cap: int = 2048
    crop: int = 224
    stride: int = 112
    pad_to_patch: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    window_batch: int = 32
    pad_multiple: int | None = None
    squash: tuple[int, int] | None = None


def resized_size(h: int, w: int, short_side: int | None, long_cap: int) -> tuple[int, int]:
    """mmcv's keep-ratio rescale rule: factor = min(long_cap / long, short_side / short),
    new side = int(side * factor + 0.5)."""
    if short_side is None:
        return h, w
    f = min(long_cap / max(h, w), short_side / min(h, w))
    return max(int(h * f + 0.5), 1), max(int(w * f + 0.5), 1)


def squashed_size(h: int, w: int, squash: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after `Protocol.squash`: mmcv's target size (width, height) is `squash` for a
    landscape image and reversed otherwise (MLMP utils/mm_transforms.py:103-105)."""
    a, b = (int(v) for v in squash)
    return (b, a) if w > h else (a, b)


def preprocess(image: np.ndarray, protocol: Protocol, device: torch.device | str = "cpu",
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """HxWx3 RGB (uint8, or float on the 0-255 scale) -> (1, 3, h, w) normalised float32 at the
    protocol's size, with `mean`/`std` (default: the protocol's; one of them must be set).

    The resize is bilinear with half-pixel centres and no antialiasing; a uint8 image is rounded
    back to uint8 after it, which is what mmcv's cv2 resize of a uint8 image does (cv2 uses
    fixed-point weights, so single pixel values can differ by one grey level). A float image is
    taken as given: resized, never quantised.
    """
    mean = protocol.mean if mean is None else tuple(mean)
    std = protocol.std if std is None else tuple(std)
    if mean is None or std is None:
        raise ValueError("preprocess needs the normalisation: the protocol has none, pass mean= and std=")
    h, w = image.shape[:2]
    quantised = not np.issubdtype(image.dtype, np.floating)
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    nh, nw = (squashed_size(h, w, protocol.squash) if protocol.squash
              else resized_size(h, w, protocol.short_side, protocol.long_cap))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if quantised:
            x = x.round_().clamp_(0, 255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


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
