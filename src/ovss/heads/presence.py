"""Object-presence text refinement (CASS): adapt the likeliest class of each group to the image.

CASS computes an image-level prior g (the class token's cosine with every query), clusters the
queries (Ward on cosine distance, `hierarchy.ward_clusters`), and in every cluster moves the
query with the highest prior towards the image: the mean of its `topk` most similar patch
features, t <- normalise((1 - a) t + a normalise(mean)). The patch logits are then blended with
the prior broadcast to every patch: L = (1 - b) F T^T + b g.

`Presence` is the same step as a head plug-in for any method (e.g. NACLIP's readout with CASS's
text side: `--set plugins=presence`), with each window's own class token as the prior; the CASS
head itself can also take the prior from the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..core.registry import PLUGINS
from ..core.trace import record
from ..ops.hierarchy import ward_clusters
from .plugin import HeadPlugin


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


def class_token_prior(visual, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The image-level prior: CLIP's own (unmodified) last block's class token, through ln_post
    and the projection, normalised, against the queries: tokens (B, N, D) -> (B, Q)."""
    cls = F.normalize(visual.project(visual.blocks[-1](tokens)[:, :1]), dim=-1)[:, 0]
    return cls @ queries.to(cls.dtype).T


def presence_logits(feats: torch.Tensor, queries: torch.Tensor, prior: torch.Tensor, clusters: np.ndarray,
                    text_weight: float, prior_weight: float, topk: int = 2) -> torch.Tensor:
    """One window: (N, C) normalised features, (Q, C) queries, (Q,) prior -> (N, Q) logits."""
    q2 = presence_adjusted_queries(feats, queries.to(feats.dtype), prior, clusters, text_weight, topk)
    return blend_prior(feats @ q2.T, prior.to(feats.dtype), prior_weight)


@PLUGINS.register("presence")
@dataclass(frozen=True)
class Presence(HeadPlugin):
    """CASS's object-presence text refinement as a head plug-in (window-level prior).

    text_weight (CASS's mean_vector_weight), prior_weight (global_semantics_weight),
    cluster_threshold (h_threshold), topk: see the module docstring.
    """

    text_weight: float = 0.03
    prior_weight: float = 0.1
    cluster_threshold: float = 0.1
    topk: int = 2

    # per batch of windows: presence.clusters (Q,) the queries' Ward clusters, presence.prior
    # (B, Q) each window's class-token prior
    trace_names: ClassVar[tuple[str, ...]] = ("presence.clusters", "presence.prior")

    def taps(self, n_blocks: int) -> dict:
        return {}

    def adjust_logits(self, ctx, logits: torch.Tensor) -> torch.Tensor:
        feats = ctx.cache.get("feats")
        if feats is None or ctx.queries is None:
            raise ValueError("the presence plug-in needs the readout's patch features and the queries")
        if feats.shape[1] != logits.shape[-2] * logits.shape[-1]:
            raise ValueError("the presence plug-in needs a readout on the backbone's own patch grid")
        clusters = ward_clusters(ctx.queries, self.cluster_threshold)
        prior = class_token_prior(ctx.visual, ctx.out.tokens, ctx.queries)
        record("presence.clusters", clusters)
        record("presence.prior", prior)
        out = [presence_logits(f, ctx.queries, g, clusters, self.text_weight, self.prior_weight, self.topk)
               for f, g in zip(feats, prior)]
        return torch.stack(out).transpose(1, 2).reshape(logits.shape)
