"""Minimum-cost assignment (the Hungarian problem) without SciPy.

CASS pairs CLIP's attention heads with DINO's by `scipy.optimize.linear_sum_assignment`. Its
cost matrices have exact ties (several head swaps give the same total in float32), so *which*
optimum comes out decides the result. This is the shortest-augmenting-path algorithm of
Crouse (2016, "On implementing 2D rectangular assignment algorithms", Algorithm 2), in the
row-by-row order, scan order and tie rule SciPy's implementation uses, so ties break the same
way; the tests compare it with brute force and with SciPy's choices on tie-heavy matrices.
"""

from __future__ import annotations

import numpy as np


def linear_sum_assignment(cost, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cost (n, m) -> (rows, cols): the minimum-total assignment of min(n, m) pairs, rows sorted."""
    c = np.array(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"expected a 2-D cost matrix, got shape {c.shape}")
    if np.isnan(c).any() or np.isneginf(c).any() or (maximize and np.isposinf(c).any()):
        raise ValueError("the cost matrix holds NaN or -inf")
    if c.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    transposed = c.shape[1] < c.shape[0]
    if transposed:
        c = c.T
    if maximize:
        c = -c
    nr, nc = c.shape
    u, v = np.zeros(nr), np.zeros(nc)
    col4row = np.full(nr, -1, dtype=np.int64)
    row4col = np.full(nc, -1, dtype=np.int64)
    path = np.full(nc, -1, dtype=np.int64)
    for cur in range(nr):
        sink, min_val, sr, sc, spc = _augmenting_path(c, u, v, path, row4col, cur)
        u[cur] += min_val
        for i in range(nr):
            if sr[i] and i != cur:
                u[i] += min_val - spc[col4row[i]]
        for j in range(nc):
            if sc[j]:
                v[j] -= min_val - spc[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    if transposed:
        order = np.argsort(col4row, kind="stable")
        return col4row[order], order.astype(np.int64)
    return np.arange(nr, dtype=np.int64), col4row


def _augmenting_path(c, u, v, path, row4col, i):
    nc = c.shape[1]
    remaining = list(range(nc - 1, -1, -1))
    n_rem = nc
    sr = np.zeros(c.shape[0], dtype=bool)
    sc = np.zeros(nc, dtype=bool)
    spc = np.full(nc, np.inf)
    min_val, sink = 0.0, -1
    while sink == -1:
        index, lowest = -1, np.inf
        sr[i] = True
        for it in range(n_rem):
            j = remaining[it]
            r = min_val + c[i, j] - u[i] - v[j]
            if r < spc[j]:
                path[j] = i
                spc[j] = r
            # among equal lowest costs prefer a free column (a sink)
            if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1):
                lowest = spc[j]
                index = it
        min_val = lowest
        if min_val == np.inf:
            raise ValueError("the cost matrix is infeasible")
        j = remaining[index]
        if row4col[j] == -1:
            sink = j
        else:
            i = row4col[j]
        sc[j] = True
        n_rem -= 1
        remaining[index] = remaining[n_rem]
    return sink, min_val, sr, sc, spc
