"""The plain folder dataset that `ovss eval` reads; the same layout serves any user dataset.

    root/
      classes.txt        one class per line; a line may hold synonyms separated by ", " (first = display name)
      images/<name>.png|.jpg|.jpeg
      masks/<name>.png   8- or 16-bit single-channel index PNG, value = class index, 255 = ignore

Errors name the exact missing path, because a typo in a path is the usual reason a run fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
IGNORE_INDEX = 255


def read_classes(path: str | Path) -> list[list[str]]:
    """Parse classes.txt into synonym lists; trailing blank lines are dropped, inner ones are an error.
    UTF-8, a byte-order mark dropped (it would otherwise start the first class name)."""
    from .io import read_text

    path = Path(path)
    lines = read_text(path, "class file").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty: it needs one class per line")
    classes: list[list[str]] = []
    for no, line in enumerate(lines, 1):
        names = [n.strip() for n in line.split(",") if n.strip()]
        if not names:
            raise ValueError(f"{path}:{no} is blank; line numbers are class indices, so none may be blank")
        classes.append(names)
    return classes


class FolderDataset:
    """Images with index masks in the plain folder layout; items are `(name, image_path, mask_path)`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        classes_path = self.root / "classes.txt"
        if not classes_path.is_file():
            raise FileNotFoundError(f"classes file not found: {classes_path}")
        for sub in ("images", "masks"):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(f"folder not found: {self.root / sub}")
        self.classes: list[list[str]] = read_classes(classes_path)
        self.class_names: list[str] = [c[0] for c in self.classes]

        images: dict[str, Path] = {}
        for p in sorted((self.root / "images").iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                if p.stem in images:
                    raise ValueError(f"two images named {p.stem!r}: {images[p.stem].name} and {p.name}")
                images[p.stem] = p
        self.names: list[str] = sorted(images)
        self.image_paths: list[Path] = [images[n] for n in self.names]
        self.mask_paths: list[Path] = [self.root / "masks" / f"{n}.png" for n in self.names]
        missing = [(i, m) for i, m in zip(self.image_paths, self.mask_paths) if not m.is_file()]
        if missing:
            (img, mask), more = missing[0], len(missing) - 1
            extra = f" (and {more} more images without masks)" if more else ""
            raise FileNotFoundError(f"mask not found: {mask} for image {img}{extra}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, Path, Path]:
        return self.names[i], self.image_paths[i], self.mask_paths[i]

    def load_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        with Image.open(self.image_paths[i]) as im:
            return np.asarray(im.convert("RGB"))

    def load_mask(self, i: int) -> np.ndarray:
        """(H, W) class indices (uint8 for 8-bit PNGs, int32 for 16-bit); 255 = ignore.

        Palette ("P") PNGs are read as their indices, never converted through the palette to colours.
        """
        path = self.mask_paths[i]
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"{path}: mask must be a single-channel index PNG, got mode {im.mode!r}")
            arr = np.asarray(im)
        return arr if arr.dtype == np.uint8 else arr.astype(np.int32)
