"""Affinity graphs and propagation on them, shared by every method that refines scores on a graph
(LPOSS / LPOSS+, CASS's affinities, Cheb-GR-style re-ranking).

Graphs:
- `knn` / `knn_graph`: exact inner-product kNN (self included, as FAISS returns it), chunked so
  memory is O(chunk x N), never N x N.
- `lposs_patch_graph`: LPOSS's patch graph: kNN on unit features, max(0, s)^gamma times the
  geometric kernel exp(-sigma * |p_i - p_j|^eta) on patch centres (computed on the edges only),
  then W + W^T.
- `threshold_graph`: Cheb-GR's adaptive neighbourhood, per-row cut at mean - lambda * std (floored
  at the self distance), exp(-d / beta) kernel; `bistochastic` its D_r^-1/2 S D_c^-1/2; both in
  Fast-GCR's float32 order of operations (`ops.rerank` runs the rounds of feature propagation).
- `gaussian_kernel`, `geometric_kernel`.
- `PixelGraph`: a pixel graph on local windows (LPOSS+: every pixel linked to its (2n+1)^2 - 1
  neighbours, weight exp(-|lab_u - lab_v| / tau)), matrix-free: its weights are one (H, W) map
  per offset, so memory is O(offsets x H x W) at most (or O(H x W) when not cached) and a 2048 px
  image never builds an edge list.
- `normalize`: the symmetric D^-1/2 W D^-1/2 with the diagonal removed and zero degrees set to 1
  (LPOSS `normalize_connection_graph`).

Propagation, all on many columns at once (one per class):
- `cg_solve`: conjugate gradient on (I - alpha W) Z = Y, each column its own CG with the
  reference's rules (cupyx.scipy.sparse.linalg.cg: x0 = 0, stop when |r| <= tol |b|, maxiter), so
  LPOSS's 10-iteration truncation is reproduced.
- `exact_solve`: (I - alpha W)^-1 Y by a direct solve.
- `chebyshev_resolvent` / `poly_filter`: polynomial filters of W.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

import torch
from torch import Tensor

__all__ = [
    "PixelGraph",
    "SparseGraph",
    "bistochastic",
    "cg_solve",
    "chebyshev_resolvent",
    "edge_distance",
    "exact_solve",
    "gaussian_kernel",
    "geometric_kernel",
    "knn",
    "knn_graph",
    "lab_guide",
    "lposs_patch_graph",
    "normalize",
    "patch_centres",
    "poly_filter",
    "propagate",
    "rgb_to_lab",
    "sq_distances",
    "threshold_graph",
]


# ----------------------------------------------------------------------------------------------
# Kernels


def geometric_kernel(dist: Tensor, sigma: float, eta: float = 1.0) -> Tensor:
    """exp(-sigma * dist^eta) (LPOSS's positional term; eta 1 = Laplacian, 2 = Gaussian)."""
    return torch.exp(-sigma * dist**eta)


def gaussian_kernel(dist: Tensor, bandwidth: float) -> Tensor:
    """exp(-dist^2 / (2 bandwidth^2))."""
    return torch.exp(-(dist**2) / (2 * bandwidth**2))


# ----------------------------------------------------------------------------------------------
# Sparse graphs


@dataclass
class SparseGraph:
    """A square sparse matrix as a coalesced COO tensor, with the products propagation needs."""

    W: Tensor  # torch.sparse_coo (N, N), coalesced

    @property
    def n(self) -> int:
        return self.W.shape[0]

    def matmul(self, x: Tensor) -> Tensor:
        """W @ x in the precision of x (float64 x: a float64 product of W's stored values)."""
        W = self.W if x.dtype == self.W.dtype else self.W.to(x.dtype)
        return torch.sparse.mm(W, x)

    def shifted(self, alpha: float, dtype: torch.dtype = torch.float64) -> Callable[[Tensor], Tensor]:
        """x -> (I - alpha W) x with LPOSS's rounding of the Laplacian: the entries alpha * W_ij are
        formed in W's own precision (float32 there: `eye(N) - alpha * Wn` of a float32 `Wn`, the
        scalar cast to float32 first), then the product runs in `dtype` (float64, as the float64
        Laplacian there)."""
        aW = (torch.tensor(alpha, dtype=self.W.dtype) * self.W).to(dtype)
        return lambda x: x - torch.sparse.mm(aW, x.to(dtype))

    def to_dense(self) -> Tensor:
        return self.W.to_dense()

    def degree(self) -> Tensor:
        return torch.sparse.sum(self.W, dim=1).to_dense()


def _coo(rows: Tensor, cols: Tensor, vals: Tensor, n: int) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()


def knn(feats: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Exact inner-product kNN of every row against all rows (self included).

    Returns (sims, idx), each (N, k), best first. Memory O(chunk x N).
    """
    n = feats.shape[0]
    k = min(k, n)
    sims, idx = [], []
    for s in range(0, n, chunk):
        v, i = (feats[s:s + chunk] @ feats.T).topk(k, dim=1)
        sims.append(v)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def knn_graph(feats: Tensor, k: int, gamma: float = 1.0, symmetric: bool = True) -> SparseGraph:
    """kNN graph with weights max(0, <f_i, f_j>)^gamma; W + W^T when `symmetric`."""
    sims, idx = knn(feats, k)
    n, kk = idx.shape
    vals = sims.clamp(min=0) ** gamma
    rows = torch.arange(n, device=feats.device).repeat_interleave(kk)
    W = _coo(rows, idx.flatten(), vals.flatten(), n)
    if symmetric:
        W = (W + W.transpose(0, 1)).coalesce()
    return SparseGraph(W)


def patch_centres(grids: list[tuple[int, int]], offsets: Tensor, patch_size: int) -> Tensor:
    """(N, 2) (y, x) pixel centres of the patches of several windows, window by window, row-major.

    offsets: (n_windows, 2) top-left (y, x) of each window in the full image.
    """
    out = []
    for (h, w), off in zip(grids, offsets):
        yy = torch.arange(h, device=offsets.device).view(-1, 1).expand(h, w).flatten()
        xx = torch.arange(w, device=offsets.device).view(1, -1).expand(h, w).flatten()
        out.append(torch.stack([off[0] + patch_size // 2 + yy * patch_size,
                                off[1] + patch_size // 2 + xx * patch_size], 1))
    return torch.cat(out).to(offsets.dtype)


def edge_distance(centres: Tensor, rows: Tensor, cols: Tensor, mm_rule: bool = True) -> Tensor:
    """Euclidean distance between centres[rows] and centres[cols], per edge.

    mm_rule: the way torch.cdist computes it for more than 25 points (the reference's dense
    call): sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-30)) in float32, whose rounding gives coincident
    centres (overlapping windows) a distance of ~0.1 px instead of 0; kept for parity.
    False: the exact difference norm."""
    a, b = centres[rows].float(), centres[cols].float()
    if not mm_rule:
        return (a - b).norm(dim=1)
    an, bn = (a * a).sum(1), (b * b).sum(1)
    ab = (-2 * a[:, 0]) * b[:, 0] + (-2 * a[:, 1]) * b[:, 1]
    return (ab + an + bn).clamp(min=1e-30).sqrt()


def lposs_patch_graph(feats: Tensor, centres: Tensor, k: int = 400, gamma: float = 3.0,
                      sigma: float = 0.01, eta: float = 1.0, mm_rule: bool = True) -> SparseGraph:
    """LPOSS's patch graph (`get_lposs_laplacian` before the normalisation).

    feats: (N, D) unit node features (DINO values); centres: (N, 2) patch centres in pixels.
    Directed kNN (k, self included) weighted max(0, s)^gamma * exp(-sigma |p_i - p_j|^eta), then
    W + W^T. The geometric term is evaluated on the N*k edges only (the reference builds the
    dense N x N distance matrix to gather it).
    """
    sims, idx = knn(feats, k)
    n, kk = idx.shape
    rows = torch.arange(n, device=feats.device).repeat_interleave(kk)
    cols = idx.flatten()
    dist = edge_distance(centres, rows, cols, mm_rule)
    vals = sims.clamp(min=0).flatten() ** gamma * geometric_kernel(dist, sigma, eta).to(sims.dtype)
    W = _coo(rows, cols, vals, n)
    return SparseGraph((W + W.transpose(0, 1)).coalesce())


def sq_distances(feats: Tensor) -> Tensor:
    """|x_i - x_j|^2 (N, N) by the expansion, clamped at 0, in Fast-GCR's order of float
    operations ((-2 X X^T + |x_i|^2) + |x_j|^2, re_ranking.py:42-44), so that the threshold
    below cuts the same entries as the reference (distance-to-threshold gaps of ~1e-6 occur)."""
    sq = (feats * feats).sum(1, keepdim=True)
    return (-2.0 * feats @ feats.T + sq + sq.T).clamp(min=0.0)


def threshold_graph(feats: Tensor, lam: float = 1.0, beta: float = 0.1, sym: bool = False,
                    dist: Tensor | None = None) -> Tensor:
    """Cheb-GR's adaptive graph (dense): d_ij = |x_i - x_j|^2 (`sq_distances`, or `dist`); row cut
    t_i = max(mean_i - lam * std_i, max_k d_kk) (unbiased std over the whole row, self included;
    the floor keeps every self-edge); S_ij = exp(-d_ij / beta) where d_ij <= t_i, else 0;
    (S + S^T) / 2 if `sym` (Fast-GCR re_ranking.py:47-58)."""
    d = sq_distances(feats) if dist is None else dist
    t = torch.clamp(d.mean(1, keepdim=True) - lam * d.std(1, keepdim=True), min=d.diagonal().max().item())
    S = torch.where(d <= t, torch.exp(-d / beta), torch.zeros_like(d))
    return 0.5 * (S + S.T) if sym else S


def bistochastic(S: Tensor) -> Tensor:
    """S_ij / sqrt(r_i c_j) with row sums r and column sums c (Cheb-GR / GCR), as Fast-GCR rounds
    it: outer(sqrt(1 / r), sqrt(1 / c)) * S (re_ranking.py:65-67). Every row and column of a
    `threshold_graph` has its self-edge, so no sum is zero."""
    d_row = torch.sqrt(1.0 / S.sum(1))
    d_col = torch.sqrt(1.0 / S.sum(0))
    return torch.outer(d_row, d_col) * S


def _row_sums(rows: Tensor, vals: Tensor, n: int) -> Tensor:
    """Row sums accumulated in float64 and rounded once to the values' precision.

    LPOSS sums its float32 graph in float32 (`W.sum(axis=1)`), in whatever order the sparse
    library takes (cuSPARSE on the GPU, numpy's pairwise `add.reduceat` in scipy); the rounded
    float64 sum is within half an ulp of the exact one, i.e. as close to any of those as they are
    to each other (see `tests/refine/test_lposs_plus.py` for what that order is worth)."""
    acc = torch.zeros(n, dtype=torch.float64, device=vals.device).index_add_(0, rows, vals.double())
    return acc.to(vals.dtype)


def normalize(W: SparseGraph | Tensor) -> SparseGraph | Tensor:
    """D^-1/2 W D^-1/2 with the diagonal removed and zero degrees set to 1 (dense or sparse).

    Sparse: LPOSS's `normalize_connection_graph` in W's precision: degrees rounded to it (see
    `_row_sums`), D^-1/2 = 1 / sqrt(d), entries (d_i^-1/2 W_ij) d_j^-1/2, each product rounded."""
    if isinstance(W, SparseGraph):
        A = W.W
        i, v = A.indices(), A.values()
        off = i[0] != i[1]
        i, v = i[:, off], v[off]
        deg = _row_sums(i[0], v, A.shape[0])
        deg[deg == 0] = 1
        dm = deg.rsqrt()  # 1 / sqrt(d), each step rounded (as `1.0 / cp.sqrt(S)`)
        return SparseGraph(torch.sparse_coo_tensor(i, (dm[i[0]] * v) * dm[i[1]], A.shape, check_invariants=False).coalesce())
    A = W - torch.diag(W.diagonal())
    deg = A.sum(1)
    deg[deg == 0] = 1
    dm = deg.rsqrt()
    return dm[:, None] * A * dm[None, :]


# ----------------------------------------------------------------------------------------------
# Pixel graphs


def rgb_to_lab(image: Tensor) -> Tensor:
    """sRGB in [0, 1] (..., 3, H, W) -> CIE-Lab (D65), as kornia.color.rgb_to_lab computes it."""
    lin = torch.where(image > 0.04045, torch.pow((image + 0.055) / 1.055, 2.4), image / 12.92)
    r, g, b = lin[..., 0, :, :], lin[..., 1, :, :], lin[..., 2, :, :]
    x = 0.412453 * r + 0.357580 * g + 0.180423 * b
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = 0.019334 * r + 0.119193 * g + 0.950227 * b
    xyz = torch.stack([x, y, z], -3)
    white = torch.tensor([0.95047, 1.0, 1.08883], device=image.device, dtype=image.dtype)[..., :, None, None]
    xyz = xyz / white
    thr = 0.008856
    f = torch.where(xyz > thr, torch.pow(xyz.clamp(min=thr), 1 / 3.0), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f[..., 0, :, :], f[..., 1, :, :], f[..., 2, :, :]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], -3)


class PixelGraph:
    """Normalised pixel graph on (2 * neigh + 1)^2 windows, applied without an edge list.

    guide: (C, H, W) per-pixel features (LPOSS+: Lab / (100, 128, 128)); the weight between u and
    u + o is exp(-|g_u - g_{u+o}|_2 / tau). `matmul(x)` computes W_norm @ x for x (H*W, K), with
    W_norm = D^-1/2 W D^-1/2 (`normalize`'s rule: no self loops, zero degree -> 1).

    Precision follows LPOSS's `get_lposs_plus_laplacian`: weights, degrees (see `_row_sums`),
    D^-1/2 and the normalised entries (d_u^-1/2 w) d_v^-1/2 are formed in the guide's precision
    (float32), each step rounded as there; the products with x run in `dtype` (float64, as its
    float64 Laplacian). `shifted(alpha)` is (I - alpha W_norm) with alpha * W_norm rounded to the
    guide's precision too, as `eye(N) - alpha * Wn` does.
    cache: keep the per-offset normalised weight maps ((2n+1)^2 - 1 maps of H x W, in the guide's
    precision) instead of recomputing them at every product.
    """

    def __init__(self, guide: Tensor, neigh: int = 6, tau: float = 0.01, dtype: torch.dtype = torch.float64,
                 cache: bool | None = None):
        self.guide = guide
        self.c, self.h, self.w = guide.shape
        self.neigh, self.tau, self.dtype = neigh, tau, dtype
        self.offsets = [o for o in product(range(-neigh, neigh + 1), repeat=2) if o != (0, 0)]
        if cache is None:  # about 1 GiB of maps at most
            cache = len(self.offsets) * self.h * self.w * torch.finfo(guide.dtype).bits // 8 <= 2**30
        maps = [self._weights(o) for o in self.offsets] if cache else None
        deg = torch.zeros(self.h, self.w, dtype=torch.float64, device=guide.device)
        for j, o in enumerate(self.offsets):
            deg += maps[j] if maps is not None else self._weights(o)
        deg = deg.to(guide.dtype)
        deg[deg == 0] = 1
        self.dm = deg.rsqrt()  # 1 / sqrt(d), each step rounded (as `1.0 / cp.sqrt(S)`)
        # cached: the weights are normalised in place (no second set of maps)
        self._maps = [self._normalised(o, w) for o, w in zip(self.offsets, maps)] if cache else None

    @property
    def n(self) -> int:
        return self.h * self.w

    def _slices(self, o: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
        """(rows of u, rows of u + o, columns of u, columns of u + o) where both are inside."""
        dy, dx = o
        return (slice(max(0, -dy), self.h - max(0, dy)), slice(max(0, dy), self.h - max(0, -dy)),
                slice(max(0, -dx), self.w - max(0, dx)), slice(max(0, dx), self.w - max(0, -dx)))

    def _weights(self, o: tuple[int, int]) -> Tensor:
        """(H, W) weights w(u, u + o) in the guide's precision; 0 where u + o leaves the image."""
        g = self.guide
        out = torch.zeros(self.h, self.w, dtype=g.dtype, device=g.device)
        ys, yd, xs, xd = self._slices(o)
        diff = ((g[:, ys, xs] - g[:, yd, xd]) ** 2).sum(0).sqrt()
        out[ys, xs] = torch.exp(-diff / self.tau)
        return out

    def _normalised(self, o: tuple[int, int], w: Tensor | None = None) -> Tensor:
        """(H, W) normalised weights (d_u^-1/2 w(u, u + o)) d_{u+o}^-1/2, each product rounded to
        the guide's precision (as `D_mh * W * D_mh` of float32 matrices); 0 outside. A given
        weight map `w` is overwritten."""
        w = self._weights(o) if w is None else w
        ys, yd, xs, xd = self._slices(o)
        w[ys, xs].mul_(self.dm[ys, xs]).mul_(self.dm[yd, xd])  # (w d_u^-1/2) d_v^-1/2, in place
        return w

    def _map(self, j: int, o: tuple[int, int]) -> Tensor:
        return self._maps[j] if self._maps is not None else self._normalised(o)

    def _product(self, x: Tensor, scale: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
        """sum_o n_o(u) x(u + o), n_o = (d_u^-1/2 w) d_{u+o}^-1/2 (times `scale`), in `dtype`
        (default self.dtype)."""
        dtype = dtype or self.dtype
        k = x.shape[-1]
        xs = x.to(dtype).reshape(self.h, self.w, k)
        y = torch.zeros_like(xs)
        for j, o in enumerate(self.offsets):
            ys, yd, xs_, xd = self._slices(o)
            nmap = self._map(j, o)[ys, xs_]
            if scale is not None:
                nmap = scale * nmap
            y[ys, xs_] += nmap.to(dtype)[..., None] * xs[yd, xd]
        return y.reshape(self.n, k)

    def matmul(self, x: Tensor) -> Tensor:
        return self._product(x, None)

    def shifted(self, alpha: float, dtype: torch.dtype | None = None) -> Callable[[Tensor], Tensor]:
        """x -> (I - alpha W_norm) x, alpha * W_norm rounded as LPOSS's Laplacian (see the class)."""
        a = torch.tensor(alpha, dtype=self.guide.dtype, device=self.guide.device)
        dtype = dtype or self.dtype
        return lambda x: x.to(dtype) - self._product(x, a, dtype)

    def to_sparse(self) -> SparseGraph:
        """The normalised graph as a sparse matrix (tests, small images)."""
        rows, cols, vals = [], [], []
        idx = torch.arange(self.n, device=self.guide.device).reshape(self.h, self.w)
        for j, o in enumerate(self.offsets):
            ys, yd, xs, xd = self._slices(o)
            rows.append(idx[ys, xs].flatten())
            cols.append(idx[yd, xd].flatten())
            vals.append(self._map(j, o)[ys, xs].flatten())
        return SparseGraph(_coo(torch.cat(rows), torch.cat(cols), torch.cat(vals), self.n))


def lab_guide(image: Tensor) -> Tensor:
    """LPOSS+'s pixel features: Lab of an RGB [0, 1] image (3, H, W), divided by (100, 128, 128)."""
    lab = rgb_to_lab(image)
    return lab / torch.tensor([100.0, 128.0, 128.0], dtype=lab.dtype, device=lab.device)[:, None, None]


# ----------------------------------------------------------------------------------------------
# Propagation

MatMul = Callable[[Tensor], Tensor]


def _matmul(W) -> MatMul:
    if isinstance(W, (SparseGraph, PixelGraph)):
        return W.matmul
    if isinstance(W, Tensor):
        return lambda x: W.to(x.dtype) @ x
    return W


def cg_solve(W, Y: Tensor, alpha: float = 0.95, maxiter: int = 10, tol: float = 1e-6,
             dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Solve (I - alpha W) Z = Y column by column with conjugate gradient.

    Each column follows cupyx.scipy.sparse.linalg.cg exactly (x0 = 0, r = b, stop once
    |r| <= tol * |b|, at most `maxiter` steps; a zero column stays zero), all columns in one
    product per step. W: normalised graph (SparseGraph, PixelGraph, dense tensor or a callable).
    dtype: the solve's precision (float64 as in LPOSS, where I - alpha W is float64).
    """
    out_dtype = Y.dtype
    b = Y.to(dtype) if dtype is not None else Y
    if isinstance(W, (SparseGraph, PixelGraph)):  # (I - alpha W) rounded as LPOSS's Laplacian
        A = W.shifted(alpha, b.dtype)
    else:
        mm = _matmul(W)

        def A(x):
            return x - alpha * mm(x).to(x.dtype)

    x = torch.zeros_like(b)
    r = b.clone()
    atol = tol * b.norm(dim=0)
    active = b.norm(dim=0) > 0
    p = torch.zeros_like(b)
    rho = torch.ones(b.shape[1], dtype=b.dtype, device=b.device)
    for it in range(maxiter):
        if not bool(active.any()):
            break
        rho_new = (r * r).sum(0)
        beta = torch.where(active, rho_new / torch.where(rho == 0, torch.ones_like(rho), rho), torch.zeros_like(rho))
        p = r if it == 0 else r + beta * p
        q = A(p)
        pq = (p * q).sum(0)
        a = torch.where(active, rho_new / torch.where(pq == 0, torch.ones_like(pq), pq), torch.zeros_like(pq))
        x = x + a * p
        r = r - a * q
        rho = rho_new
        active = active & ~(r.norm(dim=0) <= atol)
    return x.to(out_dtype)


def exact_solve(W, Y: Tensor, alpha: float = 0.95, dtype: torch.dtype = torch.float64) -> Tensor:
    """(I - alpha W)^-1 Y by a direct solve (dense for W up to ~10k nodes; sparse LU beyond)."""
    if isinstance(W, PixelGraph):
        W = W.to_sparse()
    if isinstance(W, SparseGraph) and W.n > 10000:
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        i, v = W.W.indices().cpu().numpy(), W.W.values().cpu().double().numpy()
        A = sp.eye(W.n, format="csc") - alpha * sp.csc_matrix((v, (i[0], i[1])), shape=(W.n, W.n))
        z = splu(A).solve(np.ascontiguousarray(Y.detach().cpu().double().numpy()))
        return torch.from_numpy(z).to(Y.dtype).to(Y.device)
    dense = W.to_dense() if isinstance(W, SparseGraph) else W
    A = torch.eye(dense.shape[0], dtype=dtype, device=dense.device) - alpha * dense.to(dtype)
    return torch.linalg.solve(A, Y.to(dtype)).to(Y.dtype)


def poly_filter(W, Y: Tensor, coeffs: list[float] | tuple[float, ...]) -> Tensor:
    """sum_k coeffs[k] W^k Y (monomial basis; e.g. (0, 0, 1) = two propagation steps)."""
    mm = _matmul(W)
    out = coeffs[0] * Y
    x = Y
    for c in coeffs[1:]:
        x = mm(x).to(Y.dtype)
        out = out + c * x
    return out


def chebyshev_resolvent(W, Y: Tensor, alpha: float = 0.95, order: int = 20) -> Tensor:
    """(I - alpha W)^-1 Y by its Chebyshev series truncated at `order` (W's spectrum in [-1, 1]):
    (1 / sqrt(1 - a^2)) [T_0 + 2 sum_k rho^k T_k(W)] Y, rho = (1 - sqrt(1 - a^2)) / a."""
    mm = _matmul(W)
    s = math.sqrt(1 - alpha**2)
    rho = (1 - s) / alpha
    t_prev, t = Y, mm(Y).to(Y.dtype)
    out = Y + 2 * rho * t
    for k in range(2, order + 1):
        t_prev, t = t, 2 * mm(t).to(Y.dtype) - t_prev
        out = out + 2 * rho**k * t
    return out / s


def propagate(W, Y: Tensor, alpha: float = 0.95, solver: str = "cg", maxiter: int = 10,
              order: int = 20) -> Tensor:
    """(I - alpha W)^-1 Y by `solver`: "cg" (the references' truncated CG), "exact", "chebyshev"."""
    if solver == "cg":
        return cg_solve(W, Y, alpha, maxiter)
    if solver == "exact":
        return exact_solve(W, Y, alpha)
    if solver == "chebyshev":
        return chebyshev_resolvent(W, Y, alpha, order)
    raise ValueError(f"unknown solver {solver!r}; expected cg, exact or chebyshev")
