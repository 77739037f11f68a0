"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as SCLIP and NACLIP run it.

The logits are repeatedly replaced by an affinity-weighted average of their dilated 3x3
neighbours (the centre excluded), the affinities coming from the guide image:

    for each dilation d and each of the 8 neighbour offsets o in {-d, 0, d}^2 \\ {0}
        (raster order, dilations in the given order: P = 8 * len(dilations) neighbours):
        a[b, k, p, y, x] = |g[b, k, y, x] - g[b, k, (y, x) + o_p]|
    s[b, k, y, x]  = unbiased std over the 9 * len(dilations) window values g[(y, x) + o]
                     (every dilation's 3x3 window, centre included, once per dilation)
    w[b, p, y, x]  = softmax_p( mean_k( -a / (1e-8 + 0.1 * s) ) )
    repeat `steps` times:
        m[b, c, y, x] <- sum_p w[b, p, y, x] * m[b, c, (y, x) + o_p]

Positions outside the image are read from the nearest border pixel (replicate padding, as the
reference pads by d before each dilated convolution); a dilation larger than the image is fine,
it simply clamps to the border, exactly as the reference's replicate padding does.

Numerics follow the reference (SCLIP `pamr.py` at b56bd30, NACLIP `pamr.py` at 0cac3a6, both
from the 1-stage-wseg original): the same operation order, the same (B, C, P, H, W) layout for
the std and the neighbour sum, so float32 results agree to the last bit or close to it
(tests/refine/test_pamr.py, goldens in tests/golden/pamr.safetensors).

dtype: the logits are cast to the guide's dtype and everything is computed in that dtype, as
SCLIP does (its caller passes `logits.to(img.dtype)`); the result is cast back to the logits'
dtype. In practice both references run in float32: their PAMR module is only moved `.to(device)`,
so its float32 kernels reject a half guide, and the guide comes from the float32 preprocessor.
With the module cast to half/bfloat16 SCLIP runs in that dtype (ovss equals it bit for bit there
too), while NACLIP fails on the second step: its affinity buffer is `torch.empty` without a dtype
(float32), so the refined mask turns float32 and no longer matches its half kernels.

Logits of another size than the guide are first resized to it, bilinear with
align_corners=True, as the reference does inside PAMR (the ovss pipeline passes logits already at
the guide's size, where that resize is the identity).

Memory (B = batch, Q = logits channels, H x W = guide size, P = 8 * len(dilations), n = number
of dilations, D = max(dilations), elements of the compute dtype):
    guide affinities: 9n * 3 * H * W (window values for the std, freed after it) then
    3 * P * H * W (|differences|), reduced to the P * H * W softmax weights kept for the loop;
    loop: one (B, Q, P, H, W) buffer reused across the steps, plus the padded logits
    Q * (H + 2D) * (W + 2D) and the Q * H * W result.
The reference allocates, per step, the per-dilation convolution outputs, their concatenation
and the product `m * x` (about three (B, Q, P, H, W) tensors); here it is one. For Q = 21 at
512 x 683 with dilations (8, 16) that buffer is 21 * 16 * 512 * 683 * 4 bytes = 470 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.registry import REFINERS

# 3x3 window offsets in raster order (the reference's kernel channel order), in units of d
_WINDOW = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_NEIGHBOURS = tuple(o for o in _WINDOW if o != (0, 0))


def _shifted(x: torch.Tensor, dilations: tuple[int, ...], offsets, out: torch.Tensor | None = None):
    """(B, C, H, W) -> (B, C, len(dilations) * len(offsets), H, W): x read at each dilated
    offset, out-of-image positions clamped to the border (replicate padding)."""
    B, C, H, W = x.shape
    pad = max(dilations)
    xp = F.pad(x, [pad] * 4, mode="replicate")
    if out is None:
        out = x.new_empty((B, C, len(dilations) * len(offsets), H, W))
    p = 0
    for d in dilations:
        for dy, dx in offsets:
            y0, x0 = pad + dy * d, pad + dx * d
            out[:, :, p].copy_(xp[:, :, y0:y0 + H, x0:x0 + W])
            p += 1
    return out


@REFINERS.register("pamr")
@dataclass(frozen=True)
class PAMR:
    """Pixel-adaptive mask refinement: `steps` propagation steps over dilated 3x3 neighbourhoods.

    SCLIP and NACLIP use PAMR(10, (8, 16)). `__call__(logits (B, Q, h, w), guide (B, 3, H, W))`
    returns (B, Q, H, W) logits in the logits' dtype; steps=0 returns the logits unchanged
    (resized to the guide if needed). See the module docstring for the exact computation and
    its memory.
    """

    steps: int = 10
    dilations: tuple[int, ...] = (8, 16)

    # pamr.output (Q, H, W): the refined logits (recorded by `Segmenter.refine`)
    trace_names: ClassVar[tuple[str, ...]] = ("pamr.output",)

    def __post_init__(self):
        dil = self.dilations
        dil = (dil,) if isinstance(dil, int) else tuple(dil)
        if not dil or not all(isinstance(d, int) and d >= 1 for d in dil):
            raise ValueError(f"PAMR dilations must be positive integers, got {self.dilations!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"PAMR steps must be a non-negative integer, got {self.steps!r}")
        object.__setattr__(self, "dilations", dil)

    def __call__(self, logits: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or guide.dim() != 4 or logits.shape[0] != guide.shape[0]:
            raise ValueError(f"PAMR wants logits (B, Q, H, W) and guide (B, C, H, W), got "
                             f"{tuple(logits.shape)} and {tuple(guide.shape)}")
        out_dtype = logits.dtype
        mask = logits.to(guide.dtype)
        H, W = guide.shape[-2:]
        if mask.shape[-2:] != (H, W):
            mask = F.interpolate(mask, size=(H, W), mode="bilinear", align_corners=True)
        if self.steps == 0:
            return mask.to(out_dtype)
        weights = self.affinity(guide)
        buf = None
        for _ in range(self.steps):
            buf = _shifted(mask, self.dilations, _NEIGHBOURS, out=buf)
            mask = buf.mul_(weights).sum(2)
        return mask.to(out_dtype)

    def affinity(self, guide: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) guide -> (B, 1, P, H, W) neighbour weights (softmax over P)."""
        std = _shifted(guide, self.dilations, _WINDOW).std(2, keepdim=True)
        denom = std.mul_(0.1).add_(1e-8)
        aff = _shifted(guide, self.dilations, _NEIGHBOURS)
        # |centre - neighbour| (the reference's +1/-1 kernel), then -aff / denom
        aff = aff.sub_(guide.unsqueeze(2)).abs_().div_(denom).neg_()
        return aff.mean(1, keepdim=True).softmax(2)
