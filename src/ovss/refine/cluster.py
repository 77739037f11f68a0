"""Cluster voting: DBSCAN over patch affinities, then one class per cluster region (CLIPtrase).

CLIPtrase (Shao et al., ECCV 2024; leaves162/CLIPtrase clip_self_correlation.py:143-216 at
2b7de61) clusters the patches of an image by their rows of a patch-patch affinity and lets each
cluster take the majority class of the per-pixel prediction. As a refiner any method can use:

    W   = the self-correlation map of block `layer` (`affinity.self_correlation`: per head the mean
          of cos(q, q), cos(k, k), cos(v, v), then over heads), on the whole network input
    W'  = max(W[patches, patches] - W[CLS, patches], 0)     (the "global patch" denoising)
    DBSCAN(eps, min_samples) on the rows of W' (Euclidean), noise = -1; all noise: unchanged
    each cluster: the mean of its rows, an h x w map -> bilinear x `ratio` -> median filter of
          size 2 ratio - 1 (scipy's 'reflect' borders) -> bilinear to the logits' size
    region = argmax over the cluster maps (every pixel belongs to a cluster)
    vote "majority": each region takes its most frequent class of the pixels' argmax (classes
          via the query-to-class map; ties to the smallest); a pixel of another class has its
          best query's logit swapped with the best logit of a query of the region's class, so
          the decision's argmax follows the vote and the logits keep their values;
    vote "mean": every pixel of a region takes the region's mean logits (CLIPtrase's
          detectron2 version).

`dbscan` is sklearn's DBSCAN (`fit_predict`, Euclidean, brute force) in torch: neighbours within
eps (inclusive, distances in float64), core points with at least min_samples neighbours
(itself included), clusters = connected core points numbered in the order of their smallest
index, a border point joins the first-numbered cluster it touches - the labels sklearn's
depth-first expansion gives. `median_filter` equals scipy.ndimage.median_filter(size) on each
map.

The affinity needs the backbone's block `layer` q/k/v on the whole image: with one window
(CLIPtrase's protocol) they come from the readout's own pass (the refiner asks for a `Tap`);
with sliding windows the refiner runs the backbone once more on the whole input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.registry import REFINERS
from ..core.trace import record


def dbscan(x: torch.Tensor, eps: float, min_samples: int) -> torch.Tensor:
    """(N, D) points -> (N,) int64 cluster labels, -1 for noise (sklearn's labels, see above)."""
    n = x.shape[0]
    xd = x.double()
    dist = torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist")
    adj = dist <= eps
    core = adj.sum(1) >= min_samples
    big = n
    comp = torch.where(core, torch.arange(n, device=x.device), torch.full((n,), big, device=x.device))
    core_adj = adj & core.unsqueeze(0) & core.unsqueeze(1)
    while True:  # propagate the smallest index through the core graph
        nxt = torch.where(core_adj, comp.unsqueeze(0), big).amin(1)
        nxt = torch.where(core, torch.minimum(comp, nxt), comp)
        if torch.equal(nxt, comp):
            break
        comp = nxt
    border = ~core & (adj & core.unsqueeze(0)).any(1)
    comp_b = torch.where(adj & core.unsqueeze(0), comp.unsqueeze(0), big).amin(1)
    comp = torch.where(border, comp_b, comp)
    labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
    assigned = comp < big
    if assigned.any():
        ids = torch.unique(comp[assigned])  # sorted: clusters in the order of their smallest core index
        labels[assigned] = torch.searchsorted(ids, comp[assigned])
    return labels


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)  # scipy 'reflect' (d c b a | a b c d | d c b a)


def median_filter(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> each map median-filtered with a size x size window (scipy's 'reflect')."""
    c, h, w = maps.shape
    p = size // 2
    padded = maps[:, _reflect_index(h, p, maps.device)][:, :, _reflect_index(w, p, maps.device)]
    win = padded.unfold(1, size, 1).unfold(2, size, 1)  # (C, H, W, size, size)
    return win.reshape(c, h, w, size * size).median(dim=-1).values


def denoised_affinity(w: torch.Tensor) -> torch.Tensor:
    """(1 + N, 1 + N) self-correlation -> (N, N): patch rows minus the class-token row, >= 0."""
    out = w[1:, 1:] - w[0:1, 1:]
    return out.clamp(min=0)


def cluster_regions(affinity: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], eps: float,
                    min_samples: int, ratio: int = 4) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(N, N) affinity on an (h, w) grid -> (DBSCAN labels (N,), region map (H, W) with cluster
    indices), or None when every patch is noise."""
    h, w = grid
    labels = dbscan(affinity, eps, min_samples)
    record("cluster.dbscan", labels)
    n = int(labels.max().item()) + 1
    if n <= 0:
        return None
    maps = torch.stack([affinity[labels == c].mean(0) for c in range(n)]).reshape(n, h, w)
    maps = F.interpolate(maps[None], size=(ratio * h, ratio * w), mode="bilinear", align_corners=False)[0]
    if ratio > 1:
        maps = median_filter(maps, 2 * ratio - 1)
    maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return labels, maps.argmax(0)


def majority_vote(logits: torch.Tensor, regions: torch.Tensor, query_to_class, n_regions: int) -> torch.Tensor:
    """(Q, H, W) logits, (H, W) regions -> logits whose argmax class is each region's majority
    class (see the module docstring: the pixel's best logit is swapped onto that class)."""
    q = logits.shape[0]
    q2c = torch.as_tensor(list(query_to_class) if query_to_class is not None else range(q), device=logits.device)
    nc = int(q2c.max().item()) + 1
    cls = q2c[logits.argmax(0)]
    counts = torch.zeros(n_regions, nc, dtype=torch.long, device=logits.device)
    counts.index_put_((regions.flatten(), cls.flatten()), torch.ones_like(cls.flatten()), accumulate=True)
    winner = counts.argmax(1)[regions]  # (H, W); ties to the smallest class
    member = q2c.view(-1, 1, 1) == winner.unsqueeze(0)  # queries of the winning class
    best_q = torch.where(member, logits, torch.finfo(logits.dtype).min).argmax(0)
    top_q = logits.argmax(0)
    change = q2c[top_q] != winner
    out = logits.clone()
    top_v = logits.gather(0, top_q[None])[0]
    best_v = logits.gather(0, best_q[None])[0]
    out.scatter_(0, best_q[None], torch.where(change, top_v, best_v)[None])
    out.scatter_(0, top_q[None], torch.where(change, best_v, top_v)[None])
    return out


def mean_vote(logits: torch.Tensor, regions: torch.Tensor, n_regions: int) -> torch.Tensor:
    q = logits.shape[0]
    flat = logits.reshape(q, -1)
    r = regions.flatten()
    sums = torch.zeros(q, n_regions, dtype=logits.dtype, device=logits.device).index_add_(1, r, flat)
    cnt = torch.bincount(r, minlength=n_regions).clamp(min=1).to(logits.dtype)
    return (sums / cnt)[:, r].reshape_as(logits)


@REFINERS.register("cluster")
@dataclass(frozen=True)
class Cluster:
    """DBSCAN clustering of patch self-correlations, then one class per cluster region.

    eps, min_samples: DBSCAN's (CLIPtrase: 0.7, 3 at 224 px; 1.1, 7 at 336 px,
        clip_self_correlation.py:233-234).
    layer: the block whose q/k/v give the self-correlation (CLIPtrase: the 11th of 12, -2).
    ratio: the cluster maps' upsampling before the median filter (4; filter size 2 ratio - 1).
    vote: "majority" (CLIPtrase) or "mean" (its detectron2 version).
    """

    eps: float = 0.7
    min_samples: int = 3
    layer: int = -2
    ratio: int = 4
    vote: str = "majority"

    # per image: cluster.self_correlation (1 + N, 1 + N) block `layer`'s map (class token first),
    # cluster.dbscan (N,) DBSCAN's labels (-1: noise), cluster.regions (H, W) each pixel's cluster
    # (not recorded when every patch is noise), cluster.output (Q, H, W) the voted logits
    trace_names: ClassVar[tuple[str, ...]] = ("cluster.self_correlation", "cluster.dbscan", "cluster.regions",
                                              "cluster.output")

    needs_context = True  # the Segmenter passes a RefineContext (affinity source, query-to-class map)

    def __post_init__(self):
        if self.vote not in ("majority", "mean"):
            raise ValueError(f"unknown vote {self.vote!r}; choose 'majority' or 'mean'")

    def taps(self, n_blocks: int | None = None) -> dict:
        from ..backbones.vit import Tap

        return {f"qkv:{self.layer}": Tap("qkv", (self.layer,))}

    def regions(self, context, size: tuple[int, int]):
        """(DBSCAN labels, region map at `size`) for the context's image, or None."""
        from ..ops.affinity import self_correlation

        values, grid = context.tap_values(self.taps())
        q, k, v = next(iter(values[f"qkv:{self.layer}"].values()))
        w = self_correlation(q[:1], k[:1], v[:1])[0]
        record("cluster.self_correlation", w)
        found = cluster_regions(denoised_affinity(w), grid, size, self.eps, self.min_samples, self.ratio)
        if found is not None:
            record("cluster.regions", found[1])
        return found

    def __call__(self, logits: torch.Tensor, guide: torch.Tensor, context=None) -> torch.Tensor:
        if context is None:
            raise ValueError("the cluster refiner needs the backbone's features: run it through a Segmenter")
        if logits.shape[0] != 1:
            raise ValueError("the cluster refiner works on one image at a time")
        found = self.regions(context, tuple(logits.shape[-2:]))
        if found is None:
            return logits
        labels, regions = found
        n = int(labels.max().item()) + 1
        if self.vote == "mean":
            return mean_vote(logits[0], regions, n)[None]
        return majority_vote(logits[0], regions, context.query_to_class, n)[None]
