"""Semantic feedback: a coarse label map turned into a patch-affinity prior for a second pass.

ResCLIP's SFR (Yang et al., CVPR 2025), as pieces any recipe can use:

- `seed_labels`: patch logits -> crop-size logits (bilinear) -> optional PAMR on the crop ->
  softmax(logit_scale x) over the queries -> argmax, pixels whose best probability is below
  `seed_thd` go to query 0 -> the most frequent label of each patch (ties to the smallest).
- `label_affinity`: a patch label map -> (N, N) prior: 1 for two patches with the same label,
  damped by exp(-d_cheb / max d_cheb) where the straight path between them leaves the label
  (`line_of_sight`), smoothed along each row, ReLU, rows normalised to sum 1 (+1e-8).
- `SFR`: the head plug-in: a first pass with the mixes of the plug-ins before it (RCS), its seed
  map, the prior (class-token row and column zero, divided by its max, optionally rounded to half
  precision) mixed into every term's logits of the final pass:
      L = scale * ((1 - weight) * L + weight * prior)        (before the Gaussian prior, softmax)

ResCLIP's code (clip/model.py at 0e085f7) does four things its paper does not say; `SFR`'s
defaults reproduce them (the "parity" behaviour) and each can be switched:
- PAMR(10, (8, 16)) refines the seed logits on the crop (create_logit_temp, lines 279-284;
  skipped there silently on a RuntimeError such as out-of-memory; here always run):
  `pamr_steps=0` turns it off.
- The path test samples the segment at t = k / max_steps for k <= steps(i, j), where max_steps is
  the largest Chebyshev distance of the whole grid (check_path, lines 132-148): only the first
  steps(i, j) / max_steps of the segment is checked. `line="partial"` reproduces this,
  `line="full"` checks the whole segment (t = k / steps(i, j)), `line="none"` skips the damping
  (`delete_same_entity=False`). It is a line-of-sight test, not connected components.
- The smoothing is a 1-D Gaussian (std `std`, width int(6 std + 1) made odd, zero padding) along
  each row of the N x N matrix in raster order (lines 216-230), so it mixes the ends of adjacent
  grid rows: `smooth="raster"`; `smooth="grid"` is the 2-D Gaussian over the patch grid that the
  paper's description suggests.
- The prior is cast to float16 after the division by its max (custom_attn, lines 477-478), and
  weight * prior is computed in half precision: `half=True`; `half=False` keeps float32.

Memory: the reference builds every pair's sampled path at once, (N^2, max_steps + 1, 2) int64
coordinates plus float copies: for a whole 336 x 500 image (N = 21 x 31 = 651, 30 steps) that is
about 200 MB per tensor. `line_of_sight` walks the start patches in chunks, holding at most
`_CHUNK` sampled positions (~16 MB of int64 coordinates); the prior itself is N x N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.registry import PLUGINS
from ..core.trace import record
from .attention import Mix
from .plugin import HeadPlugin

_CHUNK = 1 << 20  # sampled path positions held at once by line_of_sight


def patch_mode(labels: torch.Tensor, patch: int, num_labels: int) -> torch.Tensor:
    """(B, H, W) pixel labels -> (B, H // patch, W // patch): each patch's most frequent label,
    ties to the smallest (what `torch.mode` gives on CPU); a remainder row/column is dropped."""
    b, H, W = labels.shape
    h, w = H // patch, W // patch
    x = labels[:, : h * patch, : w * patch].reshape(b, h, patch, w, patch).permute(0, 1, 3, 2, 4)
    x = x.reshape(b, h * w, patch * patch)
    counts = torch.zeros(b, h * w, num_labels, dtype=torch.int32, device=labels.device)
    counts.scatter_add_(2, x, torch.ones_like(x, dtype=torch.int32))
    return counts.argmax(-1).reshape(b, h, w)  # argmax: the first (smallest) of equal counts


def _coords(n: int, w: int, device) -> torch.Tensor:
    idx = torch.arange(n, device=device)
    return torch.stack((torch.div(idx, w, rounding_mode="floor"), idx % w), dim=-1)  # (n, 2) row, col


def line_of_sight(labels: torch.Tensor, mode: str = "partial") -> torch.Tensor:
    """(h, w) patch labels -> (N, N) bool: does the straight path from patch i to patch j stay on
    i's label? `mode` "partial" = ResCLIP's sampling (see the module docstring), "full" = every
    rounded point of the whole segment. Positions are rounded half to even (torch.round)."""
    h, w = labels.shape
    n = h * w
    flat = labels.reshape(-1)
    pos = _coords(n, w, labels.device)
    if n == 1:
        return torch.ones(1, 1, dtype=torch.bool, device=labels.device)
    max_steps = max(h, w) - 1  # the largest Chebyshev distance of the grid
    out = torch.empty(n, n, dtype=torch.bool, device=labels.device)
    rows = max(1, _CHUNK // (n * (max_steps + 1)))
    k = torch.arange(max_steps + 1, device=labels.device)
    if mode == "partial":
        t = torch.linspace(0, 1, steps=max_steps + 1, device=labels.device).unsqueeze(1).unsqueeze(0)
    end = pos  # (n, 2)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        # pairs (i, j) for i in [r0, r1), all j, in the reference's flattened order
        start = pos[r0:r1].unsqueeze(1).expand(r1 - r0, n, 2).reshape(-1, 2)
        stop = end.unsqueeze(0).expand(r1 - r0, n, 2).reshape(-1, 2)
        steps = (stop - start).abs().amax(1)
        if mode == "partial":
            cur = start.unsqueeze(1) * (1 - t) + stop.unsqueeze(1) * t  # the reference's expression
        else:
            tt = k.unsqueeze(0) / steps.clamp(min=1).unsqueeze(1)  # (P, S+1): t = k / steps(i, j)
            cur = start.unsqueeze(1) + (stop - start).unsqueeze(1) * tt.unsqueeze(-1)
        cur = cur.round().long().clamp_(min=0)
        cur[..., 0].clamp_(max=h - 1)
        cur[..., 1].clamp_(max=w - 1)
        live = k.unsqueeze(0) <= steps.unsqueeze(1)
        same = flat[cur[..., 0] * w + cur[..., 1]] == flat[r0:r1].repeat_interleave(n).unsqueeze(1)
        out[r0:r1] = (same | ~live).all(1).view(r1 - r0, n)
    return out


def _gaussian_1d(std: float, size: int, device) -> torch.Tensor:
    x = torch.arange(size, device=device) - size // 2
    g = torch.exp(-(x**2) / (2 * std**2))  # as ResCLIP writes it (integer x, float32 result)
    return g / g.sum()


def _kernel_size(std: float, limit: int) -> int:
    size = min(limit, int(6 * std + 1))
    return size if size % 2 == 1 else size + 1


def label_affinity(labels: torch.Tensor, line: str = "partial", std: float = 5.0,
                   smooth: str = "raster") -> torch.Tensor:
    """(h, w) patch labels -> (N, N) affinity prior, rows summing to 1 (see the module docstring).

    line: "partial" / "full" (damp same-label pairs without line of sight by
        exp(-d_cheb / max d_cheb)) or "none".
    smooth: "raster" (ResCLIP: 1-D Gaussian along each row in raster order), "grid" (2-D Gaussian
        over the patch grid, separable, zero padding) or "none".
    """
    h, w = labels.shape
    n = h * w
    flat = labels.reshape(-1)
    aff = (flat.unsqueeze(1) == flat.unsqueeze(0)).float()
    if line != "none":
        if line not in ("partial", "full"):
            raise ValueError(f"unknown line-of-sight mode {line!r}; choose 'partial', 'full' or 'none'")
        valid = line_of_sight(labels, line)
        pos = _coords(n, w, labels.device)
        steps = (pos.unsqueeze(0) - pos.unsqueeze(1)).abs().amax(-1)  # Chebyshev distance
        max_steps = int(steps.max().item())
        if max_steps > 0:
            aff = torch.where(valid, aff, aff * torch.exp(-steps / max_steps))
    if smooth == "raster":
        size = _kernel_size(std, n)
        kernel = _gaussian_1d(std, size, labels.device)
        aff = F.conv1d(aff.unsqueeze(1), kernel.view(1, 1, -1), padding=size // 2).squeeze(1)
    elif smooth == "grid":
        kernel = _gaussian_1d(std, _kernel_size(std, 10**9), labels.device)
        size = kernel.numel()
        maps = aff.view(n, 1, h, w)
        maps = F.conv2d(maps, kernel.view(1, 1, size, 1), padding=(size // 2, 0))
        maps = F.conv2d(maps, kernel.view(1, 1, 1, size), padding=(0, size // 2))
        aff = maps.reshape(n, n)
    elif smooth != "none":
        raise ValueError(f"unknown smoothing {smooth!r}; choose 'raster', 'grid' or 'none'")
    aff = F.relu(aff)
    return aff / (aff.sum(dim=1, keepdim=True) + 1e-8)


@PLUGINS.register("sfr")
@dataclass(frozen=True)
class SFR(HeadPlugin):
    """Semantic feedback refinement (ResCLIP): a seed label map from a first pass becomes an
    affinity prior mixed into the logits of every term of the final pass.

    scale, weight: L = scale * ((1 - weight) * L + weight * prior) (tau, lambda of ResCLIP's
        `attn_sfr_weights`, clip/model.py:484).
    seed_thd: pixels whose best seed probability is below it take query 0 (`temp_thd`).
    logit_scale: the seed softmax's temperature (the segmentor's logit_scale, 40).
    pamr_steps, pamr_dilations: PAMR on the seed logits, guided by the crop (0 steps: off).
    line, std, smooth, half: see `label_affinity` and the module docstring.
    """

    scale: float = 2.1
    weight: float = 0.7
    seed_thd: float = 0.25
    logit_scale: float = 40.0
    pamr_steps: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    line: str = "partial"
    std: float = 5.0
    smooth: str = "raster"
    half: bool = True

    # per batch of windows: sfr.seed_labels (B, h, w) the first pass's patch labels (query
    # indices); sfr.affinity (B, 1, 1 + h*w, 1 + h*w) `label_affinity` with the class-token row and
    # column zero (ResCLIP's generate_attention_sfr); sfr.prior: that divided by its max (half)
    trace_names: ClassVar[tuple[str, ...]] = ("sfr.seed_labels", "sfr.affinity", "sfr.prior")

    def __post_init__(self):
        d = self.pamr_dilations
        object.__setattr__(self, "pamr_dilations", (d,) if isinstance(d, int) else tuple(d))
        if self.line not in ("partial", "full", "none"):
            raise ValueError(f"unknown line-of-sight mode {self.line!r}")
        if self.smooth not in ("raster", "grid", "none"):
            raise ValueError(f"unknown smoothing {self.smooth!r}")

    def taps(self, n_blocks: int) -> dict:
        return {}

    def seed_labels(self, ctx, mixes=()) -> torch.Tensor:
        """The first pass's patch label map (B, h, w), query indices. The crop-size steps run
        one window at a time: PAMR's buffer is (Q, 8 x dilations, H, W) per window (67 MB for
        21 queries on a 224 crop), not per batch of windows."""
        from ..refine.pamr import PAMR

        logits = ctx.logits(ctx.features(mixes))
        pamr = PAMR(self.pamr_steps, self.pamr_dilations) if self.pamr_steps > 0 else None
        out = []
        for i in range(logits.shape[0]):
            up = F.interpolate(logits[i : i + 1], size=ctx.images.shape[-2:], mode="bilinear", align_corners=False)
            if pamr is not None:
                up = pamr(up, ctx.images[i : i + 1])
            probs = (up * self.logit_scale).softmax(dim=1)
            pred = probs.argmax(dim=1)
            pred[probs.amax(dim=1) < self.seed_thd] = 0
            out.append(patch_mode(pred, ctx.visual.patch_size, logits.shape[1]))
        return torch.cat(out)

    def prior(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, h, w) patch labels -> (B, 1, 1 + h*w, 1 + h*w) prior (class-token row/column 0),
        divided by its max and, with `half`, rounded to float16."""
        b, h, w = labels.shape
        out = torch.zeros(b, 1, h * w + 1, h * w + 1, device=labels.device)
        for i in range(b):
            out[i, 0, 1:, 1:] = label_affinity(labels[i], self.line, self.std, self.smooth)
        record("sfr.affinity", out)
        out = out / out.amax(dim=(-2, -1), keepdim=True)
        out = out.half() if self.half else out
        record("sfr.prior", out)
        return out

    def mixes(self, ctx, mixes) -> list[Mix]:
        labels = self.seed_labels(ctx, mixes)
        ctx.cache["sfr.seed_labels"] = labels
        record("sfr.seed_labels", labels)
        return [Mix(self.prior(labels), "logits", weight=self.weight, scale=self.scale)]
