"""Dataset-level mIoU, computed exactly as mmseg's `IoUMetric` does.

Per image, pixels whose label is `ignore_index` are dropped; then four per-class histograms are
taken over the remaining pixels (mmseg `intersect_and_union`, a `torch.histc` over
[0, num_classes - 1]):

    intersect  = hist(pred[pred == label])     pred area  = hist(pred)
    label area = hist(label)                   union      = pred area + label area - intersect

They are *summed over the whole dataset* before any ratio is taken (mmseg
`total_area_to_metrics`), so mIoU is not a mean of per-image IoUs:

    IoU_c = intersect_c / union_c          (NaN when union_c == 0)
    Acc_c = intersect_c / label_c          (NaN when label_c == 0)
    mIoU  = nanmean(IoU)   mAcc = nanmean(Acc)   aAcc = sum(intersect) / sum(label area)

A class absent from every prediction and every label of the dataset has union 0, so its IoU is
NaN and it does not count in the mean; a class predicted somewhere but never present in the
labels has IoU 0 and does count (mmseg's behaviour). Values outside [0, num_classes) other than
`ignore_index` are not counted in any histogram, like `histc` with that range.

Results are in percent, like mmseg's summary table (mmseg additionally rounds to 2 decimals;
`compute(digits=2)` does the same).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["IoUAccumulator", "intersect_and_union"]


def _as_numpy(x: Any) -> np.ndarray:
    """numpy array or torch tensor (any device) -> int64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"expected integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def intersect_and_union(pred: Any, label: Any, num_classes: int,
                        ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's (intersect, union, pred area, label area), each (num_classes,) int64.

    `pred` and `label` are integer arrays of the same shape (numpy or torch).
    """
    p, g = _as_numpy(pred), _as_numpy(label)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} != label shape {g.shape}")
    keep = g != ignore_index
    p, g = p[keep], g[keep]
    c = int(num_classes)

    def hist(v: np.ndarray) -> np.ndarray:
        v = v[(v >= 0) & (v < c)]
        return np.bincount(v, minlength=c).astype(np.int64)

    area_intersect = hist(p[p == g])
    area_pred = hist(p)
    area_label = hist(g)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    nz = den > 0
    out[nz] = num[nz] / den[nz]
    return out


def _nanmean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


class IoUAccumulator:
    """Sums mmseg's four histograms over a dataset; `compute()` gives IoU/Acc/mIoU/mAcc/aAcc.

    Args:
        num_classes: number of classes; predictions and labels are indices in [0, num_classes).
        ignore_index: label value whose pixels are dropped (mmseg's 255).

    `state_dict()` / `load_state_dict()` let a long evaluation resume; `merge()` adds another
    accumulator's counts (e.g. from a worker that evaluated a different shard).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.area_intersect = np.zeros(c, np.int64)
        self.area_union = np.zeros(c, np.int64)
        self.area_pred = np.zeros(c, np.int64)
        self.area_label = np.zeros(c, np.int64)
        self.num_images = 0

    def update(self, pred: Any, label: Any) -> None:
        """Add one image (H, W), or a batch (B, H, W) — the histograms are sums either way."""
        i, u, p, g = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.area_intersect += i
        self.area_union += u
        self.area_pred += p
        self.area_label += g
        shape = np.shape(pred)
        self.num_images += int(shape[0]) if len(shape) == 3 else 1

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        """Add `other`'s counts into this accumulator (in place); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge accumulators with different num_classes / ignore_index")
        self.area_intersect += other.area_intersect
        self.area_union += other.area_union
        self.area_pred += other.area_pred
        self.area_label += other.area_label
        self.num_images += other.num_images
        return self

    def state_dict(self) -> dict:
        """Plain, JSON-serialisable counts (lists of ints)."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "num_images": self.num_images,
            "area_intersect": self.area_intersect.tolist(),
            "area_union": self.area_union.tolist(),
            "area_pred": self.area_pred.tolist(),
            "area_label": self.area_label.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_classes"]) != self.num_classes or int(state["ignore_index"]) != self.ignore_index:
            raise ValueError(
                f"state is for num_classes={state['num_classes']}, ignore_index={state['ignore_index']}; "
                f"this accumulator has {self.num_classes}, {self.ignore_index}")
        for key in ("area_intersect", "area_union", "area_pred", "area_label"):
            v = np.asarray(state[key], dtype=np.int64)
            if v.shape != (self.num_classes,):
                raise ValueError(f"{key} has shape {v.shape}, expected ({self.num_classes},)")
            setattr(self, key, v.copy())
        self.num_images = int(state.get("num_images", 0))

    def compute(self, digits: int | None = None) -> dict:
        """Metrics in percent.

        Returns {"IoU": [per class], "Acc": [per class], "mIoU", "mAcc", "aAcc", "num_images"};
        per-class entries are NaN for classes excluded from the means. `digits` rounds like
        mmseg's table (2); None keeps full precision.
        """
        iou = _ratio(self.area_intersect, self.area_union) * 100
        acc = _ratio(self.area_intersect, self.area_label) * 100
        total = self.area_label.sum()
        a_acc = float(self.area_intersect.sum() / total * 100) if total > 0 else math.nan
        out = {"IoU": iou, "Acc": acc, "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "aAcc": a_acc}
        if digits is not None:
            out = {k: np.round(v, digits) if isinstance(v, np.ndarray) else round(v, digits)
                   for k, v in out.items()}
        out["IoU"], out["Acc"] = [float(x) for x in out["IoU"]], [float(x) for x in out["Acc"]]
        out["num_images"] = self.num_images
        return out
