"""The segmentation result: a label map plus what a user needs to read, draw and save it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Result:
    """One image's segmentation.

    labels: (H, W) int32 indices into `class_names`, at the original image size.
    scores: (C, h, w) float32 class probabilities after the decision rule's softmax; at the
        original size when `scores_full_size`, else at the network's stitched resolution (very
        large images, to bound memory).
    class_names: display name per class (class 0 is "background" when a background rule applies).
    palette: (C, 3) uint8 colour per class.
    image: the (H, W, 3) uint8 RGB input, kept for overlays (None if not kept).
    mean_scores: per class, the mean probability over the pixels labelled with it (NaN if none).
    settings: method, backbone, preset and the resolved recipe, for the JSON sidecar.
    background_added: class 0 "background" was added by the decision rule (a probability
        threshold with no background class in the list): every other index is the list's + 1.
    trace: the named intermediate tensors of the call (`seg(image, classes, trace=True)`), else None.
    """

    labels: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    palette: np.ndarray
    image: np.ndarray | None = None
    mean_scores: list[float] = field(default_factory=list)
    scores_full_size: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    background_added: bool = False
    trace: dict[str, list[Any]] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def areas(self) -> dict[str, float]:
        """Fraction of the image's pixels given to each class."""
        flat = self.labels.reshape(-1)
        counts = np.zeros(len(self.class_names), np.int64)
        for i in range(0, flat.size, 1 << 20):  # in chunks: bincount widens its input to int64
            counts += np.bincount(flat[i : i + (1 << 20)], minlength=len(self.class_names))[: len(counts)]
        return {n: float(c) / self.labels.size for n, c in zip(self.class_names, counts)}

    def masks(self) -> dict[str, np.ndarray]:
        """A boolean mask per class present in the label map."""
        return {n: self.labels == i for i, n in enumerate(self.class_names) if (self.labels == i).any()}

    def overlay(self, alpha: float = 0.5, legend: bool = True):
        """The input image with the label map blended over it (a PIL image), with a legend."""
        from . import viz

        if self.image is None:
            raise ValueError("this result kept no input image; pass keep_image=True to draw overlays")
        if legend:
            return viz.overlay_with_legend(self.image, self.labels, self.class_names, self.palette,
                                           alpha=alpha)
        from PIL import Image

        return Image.fromarray(viz.overlay(self.image, self.labels, self.palette, alpha=alpha))

    def to_dict(self) -> dict[str, Any]:
        """The JSON sidecar: class names, colours, areas, mean scores and every setting used."""
        areas = self.areas()
        return {
            "image_size": list(self.size),
            "classes": [
                {
                    "index": i,
                    "name": n,
                    "color": [int(c) for c in self.palette[i]],
                    "area": areas[n],
                    "mean_score": None if np.isnan(s) else float(s),
                }
                for i, (n, s) in enumerate(zip(self.class_names, self.mean_scores))
            ],
            **self.settings,
        }

    def save(self, out_dir: str | Path, stem: str, formats: tuple[str, ...] = ("index", "overlay", "json")
             ) -> dict[str, Path]:
        """Write `<stem>.png` (index PNG with palette), `<stem>_overlay.png`, `<stem>.json`.

        Each file is written atomically, the JSON last, so a JSON's presence means the image
        is done (the CLI uses it to skip finished images on a re-run).
        """
        from ..data import io

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        if "index" in formats:
            paths["index"] = out / f"{stem}.png"
            io.save_index_png(self.labels, paths["index"], self.palette)
        if "overlay" in formats and self.image is not None:
            paths["overlay"] = out / f"{stem}_overlay.png"
            image = self.overlay()
            io.atomic_write(paths["overlay"], lambda f: image.save(f, format="PNG"))
        if "json" in formats:
            paths["json"] = out / f"{stem}.json"
            io.write_json(self.to_dict(), paths["json"])
        return paths
