"""How an image is fed to the network: resize, normalise, sliding windows, stitching.

preprocess (the research repos' mmseg test pipeline: keep-ratio resize to a short side with the
long side capped, mean/std on the 0-255 scale) -> sliding windows (all crops of an image in one
batch) -> a dense readout per window -> stitch (overlaps averaged, bilinear). `resize` takes the
stitched logits to the image size and `decision` turns them into a label map.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Sequence

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

    Memory: a large uint8 image is never converted to float as a whole (an 8000x6000 photo would
    be a 576 MB float copy): `_resize_uint8_banded` converts a band of rows at a time and gives
    torch's result bit for bit.
    """
    mean = protocol.mean if mean is None else tuple(mean)
    std = protocol.std if std is None else tuple(std)
    if mean is None or std is None:
        raise ValueError("preprocess needs the normalisation: the protocol has none, pass mean= and std=")
    h, w = image.shape[:2]
    quantised = not np.issubdtype(image.dtype, np.floating)
    nh, nw = (squashed_size(h, w, protocol.squash) if protocol.squash
              else resized_size(h, w, protocol.short_side, protocol.long_cap))
    fresh = quantised  # x is a new tensor (not a view of the caller's float array): normalise in place
    if (nh, nw) != (h, w) and image.dtype == np.uint8 and torch.device(device).type == "cpu" \
            and image.ndim == 3 and image.shape[2] == 3 and image.nbytes * 4 >= _BANDED_MIN_BYTES \
            and nh <= h and nw <= w and _two_pass_is_exact(nh, nw, torch.get_num_threads()):
        x = _resize_uint8_banded(image, nh, nw).round_().clamp_(0, 255)
    else:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
            fresh = True
            if quantised:
                x = x.round_().clamp_(0, 255)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    if fresh:  # the same arithmetic as (x - m) / s, without a second full-size tensor
        return x.sub_(m).div_(s)
    return (x - m) / s


# Below this many bytes of float input the one-shot resize is kept: its full-size copy is small.
_BANDED_MIN_BYTES = 64 << 20
_BAND_BYTES = 8 << 20  # float rows converted at a time


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resize_uint8_banded(image: np.ndarray, nh: int, nw: int, band_bytes: int | None = None) -> torch.Tensor:
    """torch's bilinear resize (half-pixel centres, no antialias) of an HxWx3 uint8 image to
    (1, 3, nh, nw) float32, without a full-size float copy, equal bit for bit to
    `F.interpolate(image as float, (nh, nw))` wherever torch uses its separable CPU kernel.

    That kernel computes each output pixel as t0 * h0 + t1 * h1, where t0 and t1 are the two source
    rows already interpolated along the width (v[x0] * w0 + v[x1] * w1), every product and sum
    rounded to float32. So the width pass runs first, on the source rows the height pass will read
    (converted to float a band at a time; the height is kept, so its weights are exactly 1 and 0),
    into an (H, nw) float image whose other rows stay 0; the height pass then runs on that (the width
    kept: weights 1 and 0). Both passes are torch's own kernel, with torch's own indices and weights,
    so nothing of its arithmetic is re-derived here. `_two_pass_is_exact` checks the premise (torch
    picks another kernel for tiny outputs and for a single thread).
    """
    h, w = image.shape[:2]
    src = torch.from_numpy(np.ascontiguousarray(image))  # (h, w, 3) uint8, shared with the array
    # (1, 3, h, nw) built exactly as the one-shot input is (HWC memory, permuted, a batch dim added),
    # so torch gives the output the same memory layout (and picks its kernel the same way)
    wide = torch.zeros((h, nw, 3), dtype=torch.float32).permute(2, 0, 1)[None]
    need = _rows_read(h, nh)
    rows = max(1, (band_bytes or _BAND_BYTES) // (w * 3 * 4))
    for k in range(0, len(need), rows):
        r = need[k : k + rows]
        band = src.index_select(0, r).permute(2, 0, 1)[None].float()
        wide[:, :, r] = _bilinear(band, (len(r), nw))
    return _bilinear(wide, (nh, nw))


def _rows_read(h: int, nh: int) -> torch.Tensor:
    """Every source row the height pass of an h -> nh bilinear resize can read, with a margin: torch
    reads rows y0 = floor(s), y0 + 1 at s = max(h / nh * (i + 0.5) - 0.5, 0) in float32, which is
    within a few hundredths of this float64 s, so floor(s) - 1 .. floor(s) + 2 holds both. Rows
    outside are never read (and stay 0), so converting only these is exact."""
    s = np.maximum(h / nh * (np.arange(nh) + 0.5) - 0.5, 0.0)
    f = np.floor(s).astype(np.int64)
    rows = np.unique(np.clip(np.concatenate([f - 1, f, f + 1, f + 2]), 0, h - 1))
    return torch.from_numpy(rows)


@lru_cache(maxsize=256)
def _two_pass_is_exact(nh: int, nw: int, threads: int) -> bool:
    """Whether `_resize_uint8_banded` equals the one-shot resize to (nh, nw) under this thread
    count: torch resizes a 3-channel image with its separable kernel unless the output is tiny
    (height + width <= 128) or torch runs one thread, and the other kernel rounds differently.
    Checked on a random probe (cheap, once per size), so a torch that changes its choice is caught
    here instead of changing pixels."""
    if nh + nw <= 128 or threads == 1:
        return False
    g = torch.Generator().manual_seed(nh * 7919 + nw)
    ph, pw = nh + nh // 2 + 3, nw + nw // 3 + 5
    probe = torch.randint(0, 256, (ph, pw, 3), generator=g, dtype=torch.uint8).numpy()
    one_shot = _bilinear(torch.from_numpy(probe).permute(2, 0, 1)[None].float(), (nh, nw))
    banded = _resize_uint8_banded(probe, nh, nw, band_bytes=pw * 3 * 4 * 5)  # several bands, as in use
    return bool(torch.equal(one_shot, banded)) and one_shot.stride() == banded.stride()


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


def stitch(windows: Iterable[tuple[tuple[int, int, int, int], torch.Tensor]], size: tuple[int, int],
           dtype: torch.dtype | None = None, count_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-window logits on the image grid, overlaps averaged (mmseg `forward_slide`'s
    `preds += F.pad(logits)`, `count_mat += 1`, `preds / count_mat`).

    windows: (box, (Q, y2 - y1, x2 - x1) logits at the window's size) pairs, as `window_boxes`
    gives the boxes. Each block is added in place into a (Q, H, W) canvas of `dtype` (default:
    the first block's), so a block of another dtype is rounded to the canvas's as it is added (as
    LPOSS adds float64 blocks into a float32 canvas); the canvas is divided by a `count_dtype`
    count of the windows over each pixel.
    """
    h, w = size
    canvas = count = None
    for (y1, y2, x1, x2), block in windows:
        if canvas is None:
            canvas = torch.zeros(block.shape[0], h, w, device=block.device, dtype=dtype or block.dtype)
            count = torch.zeros(1, h, w, device=block.device, dtype=count_dtype)
        canvas[:, y1:y2, x1:x2] += block
        count[:, y1:y2, x1:x2] += 1
    if canvas is None:
        raise ValueError("stitch needs at least one window")
    return canvas / count


def slide_logits(image: torch.Tensor, readout: Readout, protocol: Protocol, patch_size: int,
                 num_queries: int | None = None) -> torch.Tensor:
    """Window logits stitched on the image grid: (1, 3, H, W) -> (Q, H, W), overlaps averaged.

    Each window's patch logits are upsampled bilinearly to the window size before they are
    summed into the canvas (`stitch`), as in the reference `forward_slide`.
    """
    _, _, h, w = image.shape
    boxes = window_boxes(h, w, protocol.crop, protocol.stride)

    def windows():
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
            yield from zip(chunk, logits)

    return stitch(windows(), (h, w), count_dtype=image.dtype)
