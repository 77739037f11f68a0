"""Agglomerative (Ward) clustering of a few hundred vectors, cut at a height, without SciPy.

CASS groups the class-name embeddings of a vocabulary (`scipy.cluster.hierarchy.linkage(...,
'ward')` on cosine distances, then `fcluster(Z, t, 'distance')`), so that only the most likely
member of a group of near-synonyms is adapted to the image. Ward is a reducible linkage, so the
naive closest-pair algorithm with the Lance-Williams update gives SciPy's merge heights; the
flat cut keeps a merge when its height is <= t (Ward's heights are monotone).
"""

from __future__ import annotations

import numpy as np
import torch


def cosine_distances(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, d) -> (n, n) float64 1 - cosine similarity, clipped to [0, 2], zero diagonal."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def ward_linkage(dist: np.ndarray) -> np.ndarray:
    """(n, n) distances -> SciPy-style linkage (n - 1, 4): [a, b, height, size], new ids from n."""
    d = np.array(dist, dtype=np.float64)
    n = d.shape[0]
    if d.shape != (n, n):
        raise ValueError(f"expected a square distance matrix, got {d.shape}")
    out = np.zeros((max(n - 1, 0), 4))
    if n < 2:
        return out
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    ids = np.arange(n)
    size = np.ones(n)
    alive = np.ones(n, dtype=bool)
    for step in range(n - 1):
        flat = int(np.argmin(d))
        i, j = divmod(flat, n)
        if ids[i] > ids[j]:
            i, j = j, i
        h = d[i, j]
        out[step] = (ids[i], ids[j], h, size[i] + size[j])
        others = alive.copy()
        others[[i, j]] = False
        k = np.nonzero(others)[0]
        ni, nj, nk = size[i], size[j], size[k]
        new = np.sqrt(((ni + nk) * d[i, k] ** 2 + (nj + nk) * d[j, k] ** 2 - nk * h**2) / (ni + nj + nk))
        d[i, k] = d[k, i] = new  # the merged cluster takes row i
        d[j, :] = d[:, j] = np.inf
        alive[j] = False
        size[i] += size[j]
        ids[i] = n + step
    return out


def cut_tree(linkage: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Flat clusters (labels 0..K-1, in order of first appearance) joining every merge of height
    <= threshold (`fcluster(..., criterion='distance')` for a monotone linkage)."""
    parent = list(range(2 * n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for step, (a, b, h, _) in enumerate(linkage):
        node = n + step
        if h <= threshold:
            parent[find(int(a))] = node
            parent[find(int(b))] = node
    roots: dict[int, int] = {}
    return np.array([roots.setdefault(find(i), len(roots)) for i in range(n)], dtype=np.int64)


def ward_clusters(embeddings: torch.Tensor | np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels (n,) of row vectors: Ward linkage on cosine distance, cut at `threshold`."""
    d = cosine_distances(embeddings)
    return cut_tree(ward_linkage(d), d.shape[0], threshold)
