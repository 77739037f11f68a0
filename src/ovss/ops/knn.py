"""Exact k-nearest-neighbour search over a key matrix, with FAISS as an optional fast path.

FreeDA retrieves each class's `k_search` nearest keys from a FAISS index
(`models/freeda/freeda.py:294-301`). On the banks ovss builds (and any bank that fits in memory)
an exact search gives the same neighbours as FAISS's flat index; the torch path is the default,
so nothing needs faiss-cpu. Ties are broken by the smaller key index (a stable sort), as a flat
FAISS index returns them.
"""

from __future__ import annotations

import torch

__all__ = ["knn_search"]


@torch.no_grad()
def knn_search(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str = "ip",
               chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, D) queries, (N, D) keys -> (scores (Q, k'), indices (Q, k')) with k' = min(k, N),
    best first. metric "ip": inner product, larger is nearer; "l2": squared Euclidean distance,
    smaller is nearer (FAISS's METRIC_L2 reports squared distances). Keys are scanned in chunks
    of `chunk` rows so a large bank does not need an N x Q matrix at once."""
    if metric not in ("ip", "l2"):
        raise ValueError(f"unknown kNN metric {metric!r}; expected 'ip' or 'l2'")
    q = queries.float()
    k = min(int(k), keys.shape[0])
    best_s = best_i = None
    for s in range(0, keys.shape[0], chunk):
        kk = keys[s:s + chunk].to(q.device).float()
        if metric == "ip":
            sc = q @ kk.T
        else:
            sc = (q * q).sum(1, keepdim=True) - 2 * q @ kk.T + (kk * kk).sum(1)[None]
        idx = torch.arange(s, s + kk.shape[0], device=q.device).expand(q.shape[0], -1)
        if best_s is not None:
            sc = torch.cat([best_s, sc], 1)
            idx = torch.cat([best_i, idx], 1)
        # stable sort on the score, indices already ascending within ties
        order = torch.sort(sc, dim=1, descending=(metric == "ip"), stable=True).indices[:, :k]
        best_s, best_i = sc.gather(1, order), idx.gather(1, order)
    return best_s, best_i
