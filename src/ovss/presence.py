"""Object-presence text refinement (CASS): adapt the likeliest class of each group to the image.

CASS computes an image-level prior g (the class token's cosine with every query), clusters the
queries (Ward on cosine distance, `hierarchy.ward_clusters`), and in every cluster moves the
query with the highest prior towards the image: the mean of its `topk` most similar patch
features, t <- normalise((1 - a) t + a normalise(mean)). The patch logits are then blended with
the prior broadcast to every patch: L = (1 - b) F T^T + b g.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def presence_adjusted_queries(feats: torch.Tensor, queries: torch.Tensor, prior: torch.Tensor,
                              clusters: np.ndarray, weight: float, topk: int = 2) -> torch.Tensor:
    """feats (N, C) normalised patch features, queries (Q, C), prior (Q,), clusters (Q,) labels
    -> (Q, C) queries with each cluster's most likely member moved towards the image."""
    out = queries.clone()
    prior_np = prior.detach().cpu().numpy()
    fn = F.normalize(feats, dim=1)
    for c in range(int(clusters.max()) + 1 if len(clusters) else 0):
        members = np.nonzero(clusters == c)[0]
        best = int(members[np.argmax(prior_np[members])])
        t = F.normalize(queries[best][None], dim=1)
        sims = (fn @ t.T).squeeze(1)
        idx = torch.topk(sims, min(topk, feats.shape[0]))[1]
        mean = F.normalize(feats[idx].mean(dim=0), dim=0)
        out[best] = F.normalize((1 - weight) * t[0] + weight * mean, dim=0)
    return out


def blend_prior(logits: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """(N, Q) patch logits, (Q,) image-level prior -> (1 - weight) logits + weight prior."""
    return logits * (1 - weight) + prior[None, :] * weight
