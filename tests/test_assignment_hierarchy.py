"""The SciPy-free assignment and Ward clustering CASS uses, against brute force, hand-made cases
and SciPy itself (the test extra installs it; the CASS golden pins the same choices)."""

import itertools

import numpy as np
import pytest
import torch

from ovss.ops.assignment import linear_sum_assignment
from ovss.ops.hierarchy import cosine_distances, cut_tree, ward_clusters, ward_linkage
from ovss.ops.spectral import match_heads, rescale_range, stretch_singular_values


def _brute(c):
    n, m = c.shape
    best = None
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            t = sum(c[i, j] for i, j in enumerate(cols))
            best = t if best is None or t < best else best
    else:
        return _brute(c.T)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_assignment_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 6, size=2)
    c = rng.integers(0, 4, (n, m)).astype(float) if seed % 2 else rng.random((n, m))
    rows, cols = linear_sum_assignment(c)
    assert len(rows) == min(n, m) and len(set(cols.tolist())) == len(cols)
    assert np.all(np.diff(rows) > 0)
    assert np.isclose(c[rows, cols].sum(), _brute(c))
    r2, c2 = linear_sum_assignment(c, maximize=True)
    assert np.isclose(-c[r2, c2].sum(), _brute(-c))


def test_assignment_tie_rule():
    """All assignments of an all-equal matrix are optimal; SciPy's rule (prefer a free column,
    scan the columns from the last) gives the identity, as does this one."""
    rows, cols = linear_sum_assignment(np.ones((4, 4)))
    assert cols.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="NaN"):
        linear_sum_assignment(np.array([[np.nan, 1.0], [0.0, 1.0]]))


def test_ward_merges_by_hand():
    """Three points on a line at 0, 1, 5 (distances used as given): the pair merges at 1, the
    third joins at Ward's sqrt(((1+1) 25 + (1+1) 16 - 1) / 3) = sqrt(27)."""
    d = np.array([[0, 1, 5], [1, 0, 4], [5, 4, 0]], dtype=float)
    z = ward_linkage(d)
    assert z[0].tolist() == [0, 1, 1.0, 2]
    assert z[1, :2].tolist() == [2, 3] and np.isclose(z[1, 2], np.sqrt(27)) and z[1, 3] == 3
    assert cut_tree(z, 3, 0.5).tolist() == [0, 1, 2]
    assert cut_tree(z, 3, 1.0).tolist() == [0, 0, 1]
    assert cut_tree(z, 3, 6.0).tolist() == [0, 0, 0]


def test_ward_clusters_group_near_duplicates():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 32, generator=g)
    x = torch.cat([base[0:1] + 0.01 * torch.randn(3, 32, generator=g), base[1:3]])
    labels = ward_clusters(x, 0.1)
    assert labels[0] == labels[1] == labels[2] and len(set(labels.tolist())) == 3
    d = cosine_distances(x)
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)


def test_spectral_helpers():
    s = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    assert stretch_singular_values(s).tolist() == [0.5, pytest.approx(0.5 + 1 / 4 * 7.0), 7.5]
    out = rescale_range(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 3.0]))
    assert out.tolist() == [-1.0, 1.0, 3.0]
    # pairing "cass" indexes the assignment as the reference (CLIP head = row); "matched" by pair
    dist = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.float64)  # rows DINO, cols CLIP
    m = match_heads(dist, "cass")
    assert m.dino_head.tolist() == [1, 0]  # cost = 1 - dist is minimised by the anti-diagonal
    assert m.weight.tolist() == pytest.approx([0.9, 0.8])
    m2 = match_heads(dist, "matched")
    assert m2.dino_head.tolist() == [1, 0] and m2.weight.tolist() == pytest.approx([0.8, 0.9])


@pytest.mark.parametrize("seed", range(30))
def test_assignment_is_scipys(seed):
    """The same pairs as scipy.optimize.linear_sum_assignment (the reference's call), ties included
    (small integer costs have many optimal assignments)."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    rng = np.random.default_rng(100 + seed)
    n, m = rng.integers(1, 9, size=2)
    c = rng.integers(0, 3, (n, m)).astype(float) if seed % 2 else rng.random((n, m))
    for maximize in (False, True):
        ours, theirs = linear_sum_assignment(c, maximize=maximize), scipy_lsa(c, maximize=maximize)
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])


@pytest.mark.parametrize("seed", range(10))
def test_ward_is_scipys(seed):
    """Merge heights as scipy.cluster.hierarchy.linkage(condensed cosine distances, 'ward') and the
    flat clusters as fcluster(Z, t, 'distance') (the same partition; labels numbered here by first
    appearance)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(int(rng.integers(3, 30)), 16))
    x[1] = x[0] + 0.05 * rng.normal(size=16)  # a near-synonym pair
    d = cosine_distances(x)
    ref = linkage(squareform(d, checks=False), method="ward")
    z = ward_linkage(d)
    # heights: float64 sums in another order (measured on this Intel Xeon: at most 8.9e-16)
    np.testing.assert_allclose(z[:, 2], ref[:, 2], rtol=1e-12, atol=1e-12)
    assert np.array_equal(z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    h = np.sort(ref[:, 2])
    mid = (h[len(h) // 2 - 1] + h[len(h) // 2]) / 2 if len(h) > 1 else h[0] / 2  # between two merges
    for t in (0.1, 0.5, 1.0, float(mid)):  # a cut at a merge's own height is a float tie: not used
        ours, theirs = cut_tree(z, len(x), t), fcluster(ref, t, criterion="distance")
        assert np.array_equal(ours[:, None] == ours[None], theirs[:, None] == theirs[None])
