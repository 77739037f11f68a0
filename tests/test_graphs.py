"""The graph module against LPOSS's graph functions (goldens) and its own invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from measured import max_abs_diff
from safetensors.torch import load_file

from ovss.ops import graphs
from ovss.ops.graphs import (
    PixelGraph,
    cg_solve,
    chebyshev_resolvent,
    exact_solve,
    knn,
    lab_guide,
    lposs_patch_graph,
    normalize,
    patch_centres,
    poly_filter,
    threshold_graph,
)

GOLDEN = Path(__file__).parent / "golden" / "graphs_lposs.safetensors"
# Tolerances from the max |ours - LPOSS| measured on an Intel Xeon (this machine), identical with
# OMP_NUM_THREADS=1, =2 and torch.set_num_threads(1), with a ~5x margin over it and at least ~1e-6
# of the values' scale (float32 graphs):
L_TOL = 1e-6  # Laplacian rows (values <= 1): 9.4e-8 (patch), 1.2e-7 (pixel) measured
PATCH_LP_TOL = 1.5e-5  # patch propagation (<= 6.5): 2.9e-6 measured
PIXEL_LP_TOL = 2.5e-5  # pixel propagation (<= 5.8): 4.6e-6 measured (see tests/refine/test_lposs_plus.py)


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN))


def patch_graph(golden):
    loc = golden["patch.locations"]
    centres = patch_centres([(4, 4)] * 3, loc[:, [0, 2]], 16)
    W = lposs_patch_graph(golden["patch.feats"], centres, k=20, gamma=3.0, sigma=0.01, eta=1.0)
    return normalize(W)


def test_patch_laplacian_matches_lposs(golden):
    Wn = patch_graph(golden)
    L = torch.eye(48, dtype=torch.float64) - 0.95 * Wn.to_dense().double()
    diff = max_abs_diff(L, golden["patch.L"], "graphs.patch_L")
    assert diff < L_TOL, diff


def test_patch_lp_matches_lposs_cg(golden):
    Wn = patch_graph(golden)
    z = cg_solve(Wn, golden["patch.seeds"], alpha=0.95, maxiter=10)
    ref = golden["patch.lp"]
    diff = max_abs_diff(z, ref, "graphs.patch_lp")
    assert diff < PATCH_LP_TOL, diff
    assert torch.equal(z.argmax(1), ref.argmax(1))


def test_pixel_laplacian_and_lp_match_lposs_plus(golden):
    img = golden["pixel.image"][0]
    G = PixelGraph(lab_guide(img), neigh=6, tau=0.01)
    L = torch.eye(480, dtype=torch.float64) - 0.95 * G.to_sparse().to_dense()
    diff = max_abs_diff(L[:72], golden["pixel.L_rows"], "graphs.pixel_L")
    assert diff < L_TOL, diff
    z = cg_solve(G, golden["pixel.seeds"], alpha=0.95, maxiter=10)
    diff = max_abs_diff(z, golden["pixel.lp"], "graphs.pixel_lp")
    assert diff < PIXEL_LP_TOL, diff
    # the uncached (recompute-per-product) graph is the same operator
    G2 = PixelGraph(lab_guide(img), neigh=6, tau=0.01, cache=False)
    x = torch.randn(480, 3, dtype=torch.float64)
    assert torch.allclose(G.matmul(x), G2.matmul(x))


def test_rgb_to_lab_known_values():
    img = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).T.reshape(3, 1, 2)
    lab = graphs.rgb_to_lab(img)
    assert torch.allclose(lab[:, 0, 0], torch.tensor([53.24, 80.09, 67.20]), atol=0.05)
    assert torch.allclose(lab[:, 0, 1], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)


def test_solvers_agree():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(60, 8, generator=g), dim=-1)
    W = normalize(graphs.knn_graph(f.double(), 10, gamma=3.0))
    Y = torch.randn(60, 4, generator=g, dtype=torch.float64)
    exact = exact_solve(W, Y, 0.95)
    cg = cg_solve(W, Y, 0.95, maxiter=500, tol=1e-12)
    cheb = chebyshev_resolvent(W, Y, 0.95, order=200)
    assert torch.allclose(cg, exact, atol=1e-8)
    assert torch.allclose(cheb, exact, atol=1e-6)
    dense = W.to_dense()
    assert torch.allclose(poly_filter(W, Y, (1.0, 0.5, 0.25)), Y + 0.5 * dense @ Y + 0.25 * dense @ dense @ Y)


def test_cg_zero_column_and_early_stop():
    W = normalize(graphs.knn_graph(F.normalize(torch.randn(30, 5), dim=-1), 5))
    Y = torch.randn(30, 3, dtype=torch.float64)
    Y[:, 1] = 0
    z = cg_solve(W, Y, maxiter=10)
    assert torch.all(z[:, 1] == 0) and torch.isfinite(z).all()


def test_knn_chunked_is_exact():
    f = F.normalize(torch.randn(50, 6), dim=-1)
    v1, i1 = knn(f, 7, chunk=7)
    v2, i2 = (f @ f.T).topk(7, dim=1)
    assert torch.allclose(v1, v2) and torch.equal(i1, i2)


def test_threshold_graph_keeps_self_and_bounds_size():
    f = F.normalize(torch.randn(80, 6), dim=-1)
    S = threshold_graph(f, lam=1.0, beta=0.1)
    assert torch.all(S.diagonal() > 0)
    # Cantelli: at most 1 / (1 + lam^2) of a row lies below mean - lam * std (+ the self floor)
    assert ((S > 0).sum(1) <= 80 * 0.5 + 1).all()


def test_normalize_dense_matches_sparse():
    W = graphs.knn_graph(F.normalize(torch.randn(20, 4), dim=-1), 6)
    assert torch.allclose(normalize(W).to_dense(), normalize(W.to_dense()), atol=1e-6)


def test_pixel_graph_memory_is_bounded():
    """A 2048 x 1024 guide: no edge list, maps not cached beyond the budget."""
    G = PixelGraph(torch.rand(3, 1024, 2048), neigh=6, tau=0.01, dtype=torch.float32)
    assert G._maps is None  # 168 maps of 2M pixels would exceed the cache budget
