"""Cheb-GR re-ranking (Yang, Li, Du, Ye, CVPR 2025) on any query / gallery features, and the
retrieval metrics its paper reports (mAP, rank-k).

Reference: Jinxi-Yang-WHU/Fast-GCR@a3f67722 `utils/re_ranking.py` (`fast_mergesetfeat4`: one
round, lines 21-76; `fast_run_gcr`: the rounds, 78-100; `fast_gcrv_image`: the final distance,
103-110) and `utils/cmc.py` (`ComputeEuclid2`, `GetMAP`, `GetRanks`). The code is GCR (Graph
Convolution Re-ranking) with its fixed-k neighbourhood replaced by a per-node statistical cut;
there is no Chebyshev polynomial in it (the name is Chebyshev's inequality: with the one-sided
bound, at most 1 / (1 + lam^2) of a row lies below mean - lam * std, whatever the distances).

One round on X = [queries; gallery] (queries first):

    d_ij = |x_i - x_j|^2                     (float32, the reference's order: `graphs.sq_distances`)
    t_i  = max(mean_i(d) - lam * std_i(d), max_k d_kk)       (`graphs.threshold_graph`)
    S_ij = exp(-d_ij / beta) where d_ij <= t_i, else 0        (mode "sym": (S + S^T) / 2)
    L    = D_r^-1/2 S D_c^-1/2                                (`graphs.bistochastic`)
    X   <- L X, each row L2-normalised                         (mode "no-norm": not normalised)

The graph is rebuilt from the propagated features every round (`rounds` = GCR's GAL_ROUND); the
re-ranked distance is |q - g|^2 / 2 in float64 (`ComputeEuclid2`: cdist, then 1 - (1 - d^2 / 2),
rounded as there). Because the propagation is linear in X before the row normalisation, propagating
features and propagating scores computed from them are the same operator applied on either side;
`refine.chebgr` uses it on patch graphs.

Settings: the repository ships no configuration (its `cfg` object is not in the repo). The
defaults here are GCR's (WesleyZhang1991/GCN_rerank config/defaults.py: GAL_ROUND 3, MODE
'nonsym', BETA1 0.08 on a cosine kernel exp(cos / 0.08), i.e. beta 0.16 on squared distances of
unit features, since |x - y|^2 = 2 - 2 cos) with lam 1 (at most half of each row kept).

A small retrieval example (two identities seen by two cameras):

    >>> import torch
    >>> from ovss.ops.rerank import chebgr_rerank, retrieval_metrics
    >>> g = torch.Generator().manual_seed(0)
    >>> centres = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=1)
    >>> ids = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> feats = torch.nn.functional.normalize(centres[ids] + 0.3 * torch.randn(6, 8, generator=g), dim=1)
    >>> query, gallery = feats[[0, 3]], feats[[1, 2, 4, 5]]
    >>> dist = chebgr_rerank(query, gallery, lam=1.0, beta=0.16, rounds=3)   # (2, 4) float64
    >>> m = retrieval_metrics(dist, ids[[0, 3]], ids[[1, 2, 4, 5]])
    >>> sorted(m)
    ['mAP', 'rank1', 'rank10', 'rank5']
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .graphs import bistochastic, sq_distances, threshold_graph

__all__ = [
    "MODES",
    "chebgr_features",
    "chebgr_rerank",
    "chebgr_round",
    "euclid2_distance",
    "retrieval_metrics",
]

MODES = ("nonsym", "sym", "no-norm")  # the reference's MODE values ('fixA' behaves as 'nonsym')


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown Cheb-GR mode {mode!r}; choose from {', '.join(MODES)}")


def chebgr_round(X: Tensor, lam: float = 1.0, beta: float = 0.16, mode: str = "nonsym") -> Tensor:
    """One round of Cheb-GR on (N, D) features: the adaptive graph of X, its row/column
    normalisation, X <- L X (rows L2-normalised unless mode "no-norm")."""
    _check_mode(mode)
    S = threshold_graph(X, lam, beta, sym=mode == "sym", dist=sq_distances(X))
    out = bistochastic(S) @ X
    if mode != "no-norm":
        out = out / torch.linalg.norm(out, ord=2, dim=1, keepdim=True)
    return out


def chebgr_features(X: Tensor, lam: float = 1.0, beta: float = 0.16, rounds: int = 3,
                    mode: str = "nonsym") -> Tensor:
    """`rounds` rounds of `chebgr_round` on (N, D) features, the graph rebuilt each round."""
    for _ in range(rounds):
        X = chebgr_round(X, lam, beta, mode)
    return X


def euclid2_distance(a: Tensor, b: Tensor) -> Tensor:
    """|a_i - b_j|^2 / 2 in float64 as Fast-GCR's `ComputeEuclid2` rounds it (cdist, then
    1 - (1 - d^2 / 2)); for unit rows this is 1 - cos."""
    dist = torch.cdist(a.to(torch.float64), b.to(torch.float64), p=2)
    sim = 1 - dist**2 / 2.0
    return 1 - sim


def chebgr_rerank(query: Tensor, gallery: Tensor, lam: float = 1.0, beta: float = 0.16, rounds: int = 3,
                  mode: str = "nonsym", return_features: bool = False):
    """Re-ranked (Nq, Ng) float64 distances of query (Nq, D) and gallery (Ng, D) features (unit
    rows, as the reference expects): `chebgr_features` on the joint set (queries first), then
    `euclid2_distance`. With `return_features`, also the propagated query and gallery features."""
    nq = query.shape[0]
    X = chebgr_features(torch.cat([query, gallery]).float(), lam, beta, rounds, mode)
    dist = euclid2_distance(X[:nq], X[nq:])
    return (dist, X[:nq], X[nq:]) if return_features else dist


def retrieval_metrics(dist, query_ids, gallery_ids, query_cams=None, gallery_cams=None,
                      topk: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """mAP and rank-k (CMC) of a (Nq, Ng) distance matrix, as Fast-GCR's `GetMAP` / `GetRanks`
    score them (utils/cmc.py:11-43, 45-79): each query's gallery sorted by distance; with cameras,
    gallery items of the query's own identity *and* camera are dropped from its ranking
    (separate_camera); AP = sum over hits of (hits so far / position) / (hits + 1e-5); queries
    with no valid match count 0 in the sums but not in the number of queries. The sort is stable
    (the reference's quicksort orders ties arbitrarily; ties are rare with float distances).
    Returns {"mAP": ..., "rank1": ..., ...} as fractions in [0, 1]."""
    d = np.asarray(dist.detach().cpu() if isinstance(dist, Tensor) else dist, dtype=np.float64)
    qi, gi = (np.asarray(x.cpu() if isinstance(x, Tensor) else x) for x in (query_ids, gallery_ids))
    separate = query_cams is not None and gallery_cams is not None
    if separate:
        qc, gc = (np.asarray(x.cpu() if isinstance(x, Tensor) else x) for x in (query_cams, gallery_cams))
    order = np.argsort(d, axis=1, kind="stable")
    ap_sum, hits_at = 0.0, np.zeros(len(topk))
    n_valid = 0
    for i in range(d.shape[0]):
        idx = order[i]
        same = gi[idx] == qi[i]
        if separate:
            keep = ~(same & (gc[idx] == qc[i]))
            idx, same = idx[keep], same[keep]
        if same.any():
            n_valid += 1
        hits = np.cumsum(same)
        pos = np.arange(1, len(idx) + 1)
        ap_sum += float((hits[same] / pos[same]).sum()) / (hits[-1] + 0.00001) if len(idx) else 0.0
        for j, k in enumerate(topk):
            hits_at[j] += bool(same[:k].any())
    if n_valid == 0:
        raise ValueError("no query has a valid match in the gallery")
    out = {"mAP": ap_sum / n_valid}
    out.update({f"rank{k}": float(h / n_valid) for k, h in zip(topk, hits_at)})
    return out
