"""Logits -> class probabilities -> label map: the research repos' decision rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Decision:
    """Logits -> label map, in the research repos' order.

    logit_scale: multiplies the cosine logits before the softmax over all queries.
    prob_thd: pixels whose best class probability is below this go to background (class 0).
    area_thd: SCLIP's VOC rule: a non-background class covering at most this fraction of the
        non-background argmax pixels has its probabilities zeroed (its pixels go to the next best).
    reduce: where a class with several queries (synonyms, background words) is reduced to one
        score, relative to the final resize to the original size:
        "after_resize" (SCLIP, ClearCLIP, NACLIP, ProxyCLIP, ResCLIP, SC-CLIP, CASS, CLIPtrase:
            their `postprocess_result` takes the max over a class's query *probabilities* on
            logits already resized to the original size);
        "before_resize" (LPOSS's `reduce_to_true_classes`: the max over a class's query *logits*
            at the network size, then the resize, then the softmax over classes).
        The two differ only for classes with several queries and an original size other than
        the network size (bilinear interpolation does not commute with the max).
    """

    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    reduce: str = "after_resize"

    def __post_init__(self):
        if self.reduce not in REDUCE_ORDERS:
            raise ValueError(f"unknown decision.reduce {self.reduce!r}; choose one of {REDUCE_ORDERS}")


REDUCE_ORDERS = ("after_resize", "before_resize")


def reduce_queries(logits: torch.Tensor, query_to_class: Sequence[int], num_classes: int) -> torch.Tensor:
    """(Q, ...) query logits -> (C, ...) class logits: the max over each class's queries (LPOSS's
    `reduce_to_true_classes` on its scores, lposs_eval.py:365-370 at e489a74). With one query per
    class (in order) the logits come back as they are."""
    q2c = list(query_to_class)
    if q2c == list(range(num_classes)):
        return logits
    groups: list[list[int]] = [[] for _ in range(num_classes)]
    for q, c in enumerate(q2c):
        groups[c].append(q)
    return torch.stack([logits[g].amax(0) if len(g) > 1 else logits[g[0]] for g in groups])


def class_probabilities(logits: torch.Tensor, query_to_class: Sequence[int], num_classes: int,
                        logit_scale: float) -> torch.Tensor:
    """(Q, H, W) cosine logits -> (C, H, W): softmax over all queries, max over each class's."""
    probs = (logits * logit_scale).softmax(dim=0)
    q2c = list(query_to_class)
    if q2c == list(range(num_classes)):
        return probs
    groups: list[list[int]] = [[] for _ in range(num_classes)]
    for q, c in enumerate(q2c):
        groups[c].append(q)
    return torch.stack([probs[g].amax(0) if len(g) > 1 else probs[g[0]] for g in groups])


def decide(probs: torch.Tensor, decision: Decision) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) class probabilities -> (labels (H, W) int64, probs after the area rule)."""
    if decision.area_thd is not None:
        c = probs.shape[0]
        onehot = F.one_hot(probs.argmax(0), c)
        area = onehot[..., 1:].sum((0, 1)).to(probs.dtype)
        keep = (area > decision.area_thd * area.sum()).to(probs.dtype)
        probs = probs.clone()
        probs[1:] *= keep.view(-1, 1, 1)
    labels = probs.argmax(0)
    labels[probs.amax(0) < decision.prob_thd] = 0
    return labels, probs
