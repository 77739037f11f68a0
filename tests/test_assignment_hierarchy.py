"""The SciPy-free assignment and Ward clustering CASS uses, against brute force and hand-made
cases (their agreement with SciPy's own choices is pinned by the CASS golden)."""

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
