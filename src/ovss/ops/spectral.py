"""Spectral graph distillation (CASS): a low-rank, spectrum-matched DINO graph for each CLIP head.

CASS (Kim et al., CVPR 2025) fuses, per attention head, CLIP's key-key graph with a DINO key-key
graph. The DINO head for each CLIP head is chosen by comparing the heads' eigenvalue spectra
(top-k eigenvalues, L2- then L1-normalised, compared by the sum of absolute differences of the
sorted vectors) and solving an assignment; the chosen DINO graph is replaced by a rank-q
approximation whose singular values may be stretched ("dynamic eigenscaling"), its diagonal
zeroed, and its values rescaled into the CLIP graph's range. The fused logits are
    A_h = (s w_h D_h + K_h) / (s w_h + 1),    w_h = the matched pair's spectral distance,
i.e. an attention "logits" mix of weight s w_h / (s w_h + 1) (`attention.Mix`).

Every step is a function of its own so a recipe (or a test) can inspect or replace it: the
assignment in particular, which has exact ties in practice (see `assignment`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .assignment import linear_sum_assignment


def key_graphs(keys: torch.Tensor, scale: float) -> torch.Tensor:
    """(heads, N, d) keys -> (heads, N, N) key-key graphs k k^T * scale (in the keys' dtype)."""
    return torch.bmm(keys, keys.transpose(1, 2)) * scale


def rescale_range(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Affinely map `source`'s [min, max] (over all its entries) onto `target`'s [min, max]."""
    s_min, s_max = source.min(), source.max()
    t_min, t_max = target.min(), target.max()
    return (source - s_min) / (s_max - s_min) * (t_max - t_min) + t_min


def top_eigenvalues(graphs: torch.Tensor, k: int) -> torch.Tensor:
    """(heads, N, N) symmetric graphs -> (heads, k) largest eigenvalues, descending, float64."""
    vals = torch.linalg.eigvalsh(graphs.to(torch.float64))
    return vals.flip(-1)[:, :k]


def spectral_distances(dino_spectra: torch.Tensor, clip_spectra: torch.Tensor) -> torch.Tensor:
    """(Hd, k), (Hc, k) spectra -> (Hd, Hc) float64 distances: both L2- then L1-normalised per
    head, then the sum of absolute differences of the sorted vectors (CASS's "Wasserstein")."""
    u = F.normalize(F.normalize(dino_spectra, p=2, dim=1), p=1, dim=-1)
    v = F.normalize(F.normalize(clip_spectra, p=2, dim=1), p=1, dim=-1)
    u, v = torch.sort(u, dim=-1)[0], torch.sort(v, dim=-1)[0]
    out = torch.empty(u.shape[0], v.shape[0], dtype=torch.float64)
    for i in range(u.shape[0]):  # pair by pair: the reference's summation, bit for bit
        for j in range(v.shape[0]):
            out[i, j] = torch.sum(torch.abs(u[i : i + 1] - v[j : j + 1]))
    return out


@dataclass
class HeadMatching:
    """Which DINO graph each CLIP head takes, and with which weight.

    cost: (H, H) float32, 1 - distance, rows DINO heads, columns CLIP heads (as CASS builds it).
    dino_head: (H,) DINO head fused into CLIP head h.
    weight: (H,) float32 the spectral distance w_h that weights that DINO graph.
    """

    cost: torch.Tensor
    dino_head: torch.Tensor
    weight: torch.Tensor


def match_heads(distances: torch.Tensor, pairing: str = "cass") -> HeadMatching:
    """Assign heads on cost 1 - distance (minimised, so the most *different* spectra pair up).

    pairing: "cass" as the reference indexes the assignment (rows, cols) = (DINO, CLIP) heads but
        fuses CLIP head `row` with DINO head `col`, weighted by cost[row, col]; "matched" fuses
        each CLIP head with the DINO head assigned to it, weighted by their own distance.
    """
    cost = (1 - distances).to(torch.float32)
    rows, cols = linear_sum_assignment(cost.numpy())
    if pairing == "cass":
        dino = torch.as_tensor(cols)
        weight = 1 - cost[torch.as_tensor(rows), dino]
        order = torch.as_tensor(rows)
    elif pairing == "matched":
        order = torch.as_tensor(cols)  # CLIP heads
        dino = torch.as_tensor(rows)
        weight = 1 - cost[dino, order]
    else:
        raise ValueError(f"unknown head pairing {pairing!r}; choose 'cass' or 'matched'")
    inv = torch.empty_like(order)
    inv[order] = torch.arange(len(order))
    return HeadMatching(cost, dino[inv], weight[inv])


def stretch_singular_values(s: torch.Tensor) -> torch.Tensor:
    """CASS's dynamic eigenscaling: [s_min, s_max] -> [0.5 s_min, 1.5 s_max], affinely."""
    lo, hi = s.min(), s.max()
    return (s - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo


def low_rank_graph(graph: torch.Tensor, rank: int = 10, niter: int = 2, stretch: bool = True,
                   svd: str = "lowrank") -> torch.Tensor:
    """(N, N) graph -> its rank-`rank` approximation U diag(s) V^T (float64), diagonal zeroed.

    svd: "lowrank" (torch.svd_lowrank, randomised: it draws from the global generator, seed it
        for reproducible output, as the CASS head does) or "exact" (the top singular pairs of the
        symmetrised graph from its eigendecomposition, deterministic).
    """
    a = graph.to(torch.float64)
    if svd == "lowrank":
        u, s, v = torch.svd_lowrank(a, q=rank, niter=niter)
    elif svd == "exact":  # the graphs are symmetric: singular pairs from the eigenpairs
        vals, vecs = torch.linalg.eigh((a + a.T) / 2)
        top = vals.abs().argsort(descending=True)[:rank]
        u, s = vecs[:, top], vals[top].abs()
        v = u * torch.sign(vals[top])
    else:
        raise ValueError(f"unknown svd {svd!r}; choose 'lowrank' or 'exact'")
    if stretch:
        s = stretch_singular_values(s)
    out = u @ torch.diag(s) @ v.T
    out.fill_diagonal_(0)
    return out


@dataclass(frozen=True)
class SpectralDistill:
    """Settings of CASS's graph distillation (defaults: the reference's fixed values).

    k_eigen: eigenvalues compared per head; rank, niter: the low-rank DINO graph; scale: s in
    (s w D + K) / (s w + 1); stretch: dynamic eigenscaling (CASS turns it off for VOC20 and
    Cityscapes); svd: "lowrank" (reference) or "exact"; pairing: see `match_heads`.
    """

    k_eigen: int = 20
    rank: int = 10
    niter: int = 2
    scale: float = 10.0
    stretch: bool = True
    svd: str = "lowrank"
    pairing: str = "cass"

    def fuse(self, clip_graphs: torch.Tensor, dino_graphs: torch.Tensor,
             matching: HeadMatching | None = None) -> tuple[torch.Tensor, torch.Tensor, HeadMatching]:
        """(H, N, N) CLIP and DINO key graphs -> (low-rank DINO graphs in the CLIP graphs' range
        (H, N, N) float64, per-head mix weights s w / (s w + 1) (H,) float32, the matching).
        Pass `matching` to impose an assignment (stage-by-stage parity checks)."""
        from ..core.trace import record

        if matching is None:
            dino_spectra = top_eigenvalues(dino_graphs, self.k_eigen)
            clip_spectra = top_eigenvalues(clip_graphs, self.k_eigen)
            dist = spectral_distances(dino_spectra, clip_spectra)
            matching = match_heads(dist, self.pairing)
            record("cass.dino_spectra", dino_spectra)
            record("cass.clip_spectra", clip_spectra)
            record("cass.distances", dist)
            record("cass.cost", matching.cost)
            record("cass.assignment", matching.dino_head)
        graphs = []
        for h in range(clip_graphs.shape[0]):  # heads in order: the generator's draws follow them
            d = low_rank_graph(dino_graphs[int(matching.dino_head[h])], self.rank, self.niter,
                               self.stretch, self.svd)
            graphs.append(rescale_range(d, clip_graphs[h]))
        sw = matching.weight * self.scale
        graphs = torch.stack(graphs)
        record("cass.low_rank_graphs", graphs)
        return graphs, sw / (sw + 1), matching
