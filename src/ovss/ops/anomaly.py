"""Anomaly tokens: local outlier factor (LOF) in torch, and their repair from grid neighbours.

A few patch tokens of CLIP's deep layers carry global information instead of their patch's
("anomaly" / "global" tokens, SC-CLIP; register-like tokens). `lof_outliers` finds them per
image with the local outlier factor, `repair_tokens` replaces each by the mean of its non-outlier
3x3 grid neighbours.

LOF as SC-CLIP's `lof_pytorch` (clip/model.py:208-227 at 0417ba9) computes it, batched over
images and with memory bounded by chunks of rows:
    d(a, b)   = |a - b|^2 (squared Euclidean)
    N_k(a)    = the k nearest tokens of a, a itself excluded (the first of the k + 1 smallest)
    kdist(a)  = d to the k-th of them
    reach(a, b) = max(d(a, b), kdist(a))     (a's own k-distance: classical LOF uses b's)
    lrd(a)    = k / mean_b reach(a, b)
    LOF(a)    = mean over b in N_k(a) of lrd(b) / lrd(a)
    outliers  = LOF > the (1 - contamination) quantile of the image's LOF scores (linear
                interpolation, float32), so about `contamination` of the tokens.
`reach="neighbour"` gives the classical reach distance max(d(a, b), kdist(b)) instead.
The reference builds the (N, N, D) difference tensor at once (N = 651 tokens of 768 channels is
1.3 GB in float32); here rows are taken `_CHUNK` elements at a time, with the same arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK = 1 << 24  # elements of the (rows, N, D) difference tensor held at once


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N) |x_i - x_j|^2, as `torch.norm(a - b) ** 2` (the reference's
    arithmetic, exactly zero on the diagonal), in chunks of rows."""
    b, n, d = x.shape
    out = x.new_empty(b, n, n)
    rows = max(1, _CHUNK // max(1, b * n * d))
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        out[:, r0:r1] = torch.norm(x[:, r0:r1, None] - x[:, None, :], dim=3, p=2) ** 2
    return out


def lof_scores(x: torch.Tensor, k: int = 30, reach: str = "self") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) tokens -> LOF scores (B, N) and the neighbour indices (B, N, k).

    With N <= k, k becomes N - 1 (the reference would fail)."""
    b, n, _ = x.shape
    k = min(k, n - 1)
    if k < 1:
        return x.new_ones(b, n), torch.zeros(b, n, 0, dtype=torch.long, device=x.device)
    dist = squared_distances(x)
    knn_d, knn_i = torch.topk(dist, k=k + 1, largest=False)
    knn_d, knn_i = knn_d[..., 1:], knn_i[..., 1:]
    kdist = knn_d[..., -1]
    if reach == "self":
        reach_d = torch.max(knn_d, kdist.unsqueeze(-1).expand_as(knn_d))
    elif reach == "neighbour":
        reach_d = torch.max(knn_d, torch.gather(kdist, 1, knn_i.flatten(1)).view_as(knn_d))
    else:
        raise ValueError(f"unknown reach distance {reach!r}; choose 'self' (SC-CLIP) or 'neighbour'")
    lrd = k / torch.nan_to_num(reach_d.mean(dim=-1), nan=1e-6)
    ratios = torch.gather(lrd, 1, knn_i.flatten(1)).view_as(knn_d) / lrd.unsqueeze(-1)
    return ratios.mean(dim=-1), knn_i


def lof_threshold(scores: torch.Tensor, contamination: float = 0.05) -> torch.Tensor:
    """(B, N) LOF scores -> (B, N) bool: above each image's (1 - contamination) quantile."""
    thd = torch.quantile(scores.to(torch.float32), 1 - contamination, dim=1, keepdim=True)
    return scores > thd


def lof_outliers(x: torch.Tensor, k: int = 30, contamination: float = 0.05, reach: str = "self") -> torch.Tensor:
    """(B, N, D) tokens -> (B, N) bool: LOF above each image's (1 - contamination) quantile."""
    scores, _ = lof_scores(x, k, reach)
    return lof_threshold(scores, contamination)


def repair_tokens(tokens: torch.Tensor, grid: tuple[int, int], outliers: torch.Tensor) -> torch.Tensor:
    """Replace each outlier token (B, N = h*w, D) by the mean of its 3x3 grid neighbours that are
    not outliers (the centre excluded; positions outside the grid do not count); an outlier with
    no such neighbour is kept. SC-CLIP's `mean_interpolation` (clip/model.py:348-373) batched
    over images, with its arithmetic (grouped 3x3 convolutions)."""
    b, n, d = tokens.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
    dtype = tokens.dtype
    fmap = tokens.transpose(1, 2).reshape(b, d, h, w)
    keep = (~outliers).to(dtype).view(b, 1, h, w)
    kernel = torch.ones(d, 1, 3, 3, device=tokens.device, dtype=dtype)
    kernel[:, 0, 1, 1] = 0
    neighbour_sum = F.conv2d(F.pad(fmap * keep, (1, 1, 1, 1)), kernel, groups=d)
    valid = F.conv2d(F.pad(keep, (1, 1, 1, 1)), kernel[:1])
    has = (valid > 0).to(dtype)
    safe = valid.clone()
    safe[safe == 0] = 1
    mean = neighbour_sum / safe
    update = outliers.to(dtype).view(b, 1, h, w) * has
    fmap = fmap * (1 - update) + mean * update
    return fmap.reshape(b, d, n).transpose(1, 2)
