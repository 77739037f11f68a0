"""Patch-patch affinities from features: cosine matrices, thresholded aggregation, proxy logits,
and CLIPtrase's self-correlation map.

These are the "patch x patch inside the last block" similarity matrices of the design: built from
a middle layer's tokens (SC-CLIP), from another model's features (ProxyCLIP's DINO), or from a
block's own projections (CLIPtrase), then used to aggregate features or as attention terms
(`attention.Mix`).
"""

from __future__ import annotations

import torch


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N) cosine similarities; x / |x| as SC-CLIP divides (no epsilon)."""
    x = x / x.norm(dim=-1, keepdim=True)
    return x @ x.transpose(-2, -1)


def threshold(sim: torch.Tensor, thd: float) -> torch.Tensor:
    """Entries below `thd` set to 0 (SC-CLIP's beta = 0.4)."""
    return sim.masked_fill(sim < thd, 0.0)


def aggregate(weights: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Row-normalised weights (B, N, N) (divided by row sum + eps) times features (B, N, D):
    SC-CLIP's `adaptively_aggregate`."""
    return (weights / (weights.sum(dim=-1, keepdim=True) + eps)) @ x


def proxy_logits(sim: torch.Tensor, shift: float = 1.0, scale: float = 3.0) -> torch.Tensor:
    """scale * (sim - shift * mean(sim)), entries below 0 set to -inf: attention logits from an
    affinity, mean over each image's whole matrix. SC-CLIP: shift 1, scale 3 (custom_attn);
    ProxyCLIP: shift (beta) 1.2, scale (gamma) 3. Returns (B, 1, N, N) for every head."""
    mean = sim.mean(dim=(-2, -1), keepdim=True)
    out = (sim - mean) * scale if shift == 1.0 else (sim - shift * mean) * scale
    return out.masked_fill(out < 0.0, float("-inf")).unsqueeze(1)


def self_correlation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """CLIPtrase's map: per head the mean of cos(q_i, q_j), cos(k_i, k_j), cos(v_i, v_j), then the
    mean over heads. q, k, v: (B, heads, N, d_h) -> (B, N, N).

    The reference computes each cosine with `torch.cosine_similarity` on an (N, N, d_h)
    broadcast per head; here x_i . x_j / max(|x_i| |x_j|, 1e-8) by one matrix product (equal to
    float round-off)."""
    def cos(x):
        n = x.norm(dim=-1)
        return (x @ x.transpose(-2, -1)) / (n.unsqueeze(-1) * n.unsqueeze(-2)).clamp(min=1e-8)

    return ((cos(q) + cos(k) + cos(v)) / 3.0).sum(dim=1) / q.shape[1]  # the reference's head mean
