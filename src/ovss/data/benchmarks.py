"""Readers for the standard OVSS benchmarks, in the layouts the usual (mmseg) preparation leaves on disk.

Every reader lists, decodes and maps labels exactly as mmseg 1.x does for the training-free repos
(SCLIP, NACLIP, ClearCLIP, ProxyCLIP), so counts over these datasets equal theirs
(see /work/shared/benchmarks.md for the sources):

    name           data root                     images                          labels                                     list
    voc21          VOCdevkit/VOC2012             JPEGImages/*.jpg                SegmentationClass/*.png (palette)          ImageSets/Segmentation/val.txt
    voc20          same; reduce_zero_label (background ignored)
    context60      VOCdevkit/VOC2010             JPEGImages/*.jpg                SegmentationClassContext/*.png             ImageSets/SegmentationContext/val.txt
    context59      same; reduce_zero_label (background ignored)
    coco-stuff171  coco_stuff164k                images/val2017/*.jpg            annotations/val2017/*_labelTrainIds.png    scan
    coco-object    coco_stuff164k                images/val2017/*.jpg            annotations/val2017/*_instanceTrainIds.png scan
    cityscapes     cityscapes                    leftImg8bit/val/<city>/*_leftImg8bit.png  gtFine/val/<city>/*_gtFine_labelTrainIds.png  recursive scan
    ade20k         ADEChallengeData2016          images/validation/*.jpg         annotations/validation/*.png               scan; reduce_zero_label

Listing (mmseg `BaseSegDataset.load_data_list`): with a list file, one stem per line in file order;
without, the image folder is scanned recursively (names starting with "." skipped) for names ending
in the image suffix, sorted by path, and the label path is the image's relative path with the image
suffix replaced by the label suffix.

Labels (mmseg `LoadAnnotations`): decoded "unchanged" by Pillow (palette PNGs give palette indices,
never colours), cast to uint8, then with `reduce_zero_label` 0 -> 255, v -> v - 1, 255 -> 255.
255 is the ignore value everywhere (the metric's default `ignore_index`).

Class names and palettes are package data, one JSON per benchmark under `ovss/data/meta/`, each
naming the source of its lists. The `folder` and `synthetic-scenes` datasets wrap the plain folder
layout (`ovss.data.folder`) behind the same interface.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
from PIL import Image

from ..core.registry import Registry

__all__ = [
    "ADE20K",
    "DATASETS",
    "IGNORE_INDEX",
    "VOC20",
    "VOC21",
    "BenchmarkDataset",
    "COCOObject",
    "COCOStuff171",
    "Cityscapes",
    "Context59",
    "Context60",
    "FolderSegDataset",
    "Sample",
    "SegDataset",
    "SyntheticScenesDataset",
    "create_dataset",
    "ensure_synthetic",
    "list_datasets",
    "load_meta",
    "read_label",
]

IGNORE_INDEX = 255
META_DIR = Path(__file__).parent / "meta"


@cache
def _read_meta(name: str) -> dict[str, Any]:
    path = META_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in META_DIR.glob("*.json"))
        raise KeyError(f"no benchmark metadata {name!r}; known: {', '.join(known)}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_meta(name: str) -> dict[str, Any]:
    """A benchmark's metadata (a copy): classes, palette, reduce_zero_label, ignore_index, source, ..."""
    return copy.deepcopy(_read_meta(name))


class Sample(NamedTuple):
    """One image and its label file; unpacks like FolderDataset items: `name, image, label = ds[i]`."""

    name: str
    image_path: Path
    label_path: Path


def read_label(path: str | os.PathLike[str], reduce_zero_label: bool = False) -> np.ndarray:
    """Read a label map with mmseg `LoadAnnotations` semantics, as (H, W) uint8.

    Palette ('P') PNGs give their indices and grayscale PNGs their values (Pillow, "unchanged"). The
    uint8 cast mmseg applies would silently wrap 16-bit values above 255, so such files are rejected
    instead. With `reduce_zero_label`: 0 -> 255, v -> v - 1 for 1..254, 255 stays 255.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        arr = np.array(im)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a label map must be a single-channel (palette or grayscale) image, "
                         f"got mode {mode!r}; colour-coded masks must be converted to indices first")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "biu":
            raise ValueError(f"{path}: label values must be integers, got mode {mode!r}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ValueError(f"{path}: label values span [{int(arr.min())}, {int(arr.max())}]; the mmseg "
                             "protocol casts labels to uint8, which would wrap values above 255")
        arr = arr.astype(np.uint8)
    if reduce_zero_label:
        arr = arr.copy()
        arr[arr == 0] = 255
        arr = arr - 1  # uint8: 255 -> 254, set back below
        arr[arr == 254] = 255
    return arr


class SegDataset:
    """A list of (image, label) samples plus the benchmark's classes, palette and label semantics.

    Attributes: `name` (registry name), `root`, `split`, `class_names`, `num_classes`, `ignore_index`
    (255), `reduce_zero_label`, `palette` ((num_classes, 3) uint8), `background` (class 0 is a
    background class that receives under-threshold pixels), `samples`.
    """

    name: str = ""
    title: str = ""  # display name used in messages, e.g. "VOC21"
    reduce_zero_label: bool = False
    ignore_index: int = IGNORE_INDEX
    background: bool = False
    default_overrides: ClassVar[dict[str, Any]] = {}  # recipe overrides `ovss eval` applies (none yet)

    def __init__(self, root: str | os.PathLike[str], samples: list[Sample], class_names: list[str],
                 palette: Any, split: str = "val") -> None:
        self.root = Path(root)
        self.split = split
        self.samples: list[Sample] = list(samples)
        self.class_names: list[str] = list(class_names)
        pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(pal) != len(self.class_names):
            raise ValueError(f"{self.title or self.name}: palette has {len(pal)} colours for "
                             f"{len(self.class_names)} classes")
        pal.flags.writeable = False
        self.palette: np.ndarray = pal

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        n = len(self.samples)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        return self.samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def load_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB (`ovss.data.io.read_image`)."""
        from .io import read_image

        return read_image(self[i].image_path)

    def load_label(self, i: int) -> np.ndarray:
        """(H, W) uint8 label map with mmseg semantics (see `read_label`); 255 = ignore."""
        return read_label(self[i].label_path, self.reduce_zero_label)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, split={self.split!r}, "
                f"{len(self)} images, {self.num_classes} classes)")


# ------------------------------------------------------------------------------------------ benchmarks


@dataclass(frozen=True)
class Layout:
    """Where a benchmark's files are, relative to its root; `{split}` is the resolved split token."""

    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    list_file: str | None  # None: scan img_dir recursively
    splits: dict[str, str]  # accepted split name -> token (tokens are accepted as names too)
    root_name: str  # what the root folder is usually called
    hints: tuple[str, ...] = ()  # sub-paths users often leave off the root
    prepare: str = ""  # how to make the label files when they are missing
    raw_seg_suffix: str = ""  # a source label file beside a missing one means "not converted yet"

    def expected(self, token: str) -> str:
        parts = [f"{self.img_dir.format(split=token)}/", f"{self.ann_dir.format(split=token)}/"]
        if self.list_file:
            parts.append(self.list_file.format(split=token))
        what = (f"{self.root_name} with {', '.join(parts)}"
                f" (images *{self.img_suffix}, labels *{self.seg_suffix})")
        return what + (f"; {self.prepare}" if self.prepare else "")


class BenchmarkDataset(SegDataset):
    """A standard benchmark read from its prepared layout (subclasses set `name`, `title`, `layout`)."""

    layout: Layout

    def __init__(self, root: str | os.PathLike[str], split: str = "val") -> None:
        meta = _read_meta(self.name)
        if bool(meta["reduce_zero_label"]) != self.reduce_zero_label:
            raise AssertionError(f"{self.name}: metadata and class disagree on reduce_zero_label")
        self.meta = load_meta(self.name)
        token = self._split_token(split)
        root = Path(root).expanduser()
        samples = self._list(root, token)
        super().__init__(root, samples, meta["classes"], meta["palette"], split=split)

    @classmethod
    def _split_token(cls, split: str) -> str:
        lay = cls.layout
        if split in lay.splits:
            return lay.splits[split]
        if split in lay.splits.values():
            return split
        valid = sorted(set(lay.splits) | set(lay.splits.values()))
        raise ValueError(f"{cls.title}: unknown split {split!r}; valid: {', '.join(valid)}")

    def _missing(self, root: Path, path: Path, token: str) -> FileNotFoundError:
        msg = f"{self.title}: missing {path}; expected {self.layout.expected(token)}"
        for h in self.layout.hints:
            if (root / h).is_dir() and (root / h / self.layout.img_dir.format(split=token)).is_dir():
                msg += f" (found {root / h}: pass that folder as the root)"
                break
        return FileNotFoundError(msg)

    def _list(self, root: Path, token: str) -> list[Sample]:
        lay = self.layout
        if not root.is_dir():
            raise self._missing(root, root, token)
        img_dir = root / lay.img_dir.format(split=token)
        ann_dir = root / lay.ann_dir.format(split=token)
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise self._missing(root, d, token)
        if lay.list_file is not None:
            list_path = root / lay.list_file.format(split=token)
            if not list_path.is_file():
                raise self._missing(root, list_path, token)
            stems = [s.strip() for s in list_path.read_text(encoding="utf-8").splitlines()]
            stems = [s for s in stems if s]
            if not stems:
                raise ValueError(f"{self.title}: {list_path} lists no images")
            samples = [Sample(s, img_dir / f"{s}{lay.img_suffix}", ann_dir / f"{s}{lay.seg_suffix}")
                       for s in stems]
            missing_img = [s for s in samples if not s.image_path.is_file()]
            if missing_img:
                more = f" (and {len(missing_img) - 1} more)" if len(missing_img) > 1 else ""
                raise FileNotFoundError(f"{self.title}: missing image {missing_img[0].image_path}, listed in "
                                        f"{list_path}{more}; expected {lay.expected(token)}")
            where = f"listed in {list_path}"
        else:
            rels = _scan(img_dir, lay.img_suffix)
            if not rels:
                raise FileNotFoundError(f"{self.title}: no *{lay.img_suffix} images under {img_dir}; "
                                        f"expected {lay.expected(token)}")
            cut = len(lay.img_suffix)
            samples = [Sample(r[:-cut], img_dir / r, ann_dir / f"{r[:-cut]}{lay.seg_suffix}") for r in rels]
            where = f"found in {img_dir}"
        missing = [s for s in samples if not s.label_path.is_file()]
        if missing:
            first = missing[0]
            more = f" (and {len(missing) - 1} more images without labels)" if len(missing) > 1 else ""
            msg = (f"{self.title}: missing label {first.label_path} for image {first.image_path} "
                   f"({where}){more}")
            raw = ann_dir / f"{first.name}{lay.raw_seg_suffix}" if lay.raw_seg_suffix else None
            if raw is not None and raw.is_file():
                msg += f"; the source label {raw.name} is there: {lay.prepare}"
            else:
                msg += f"; expected {lay.expected(token)}"
            raise FileNotFoundError(msg)
        return samples


def _scan(folder: Path, suffix: str) -> list[str]:
    """Relative posix paths of files under `folder` ending in `suffix`, as mmengine's
    `list_dir_or_file(recursive=True, suffix=...)` yields them (dot-names skipped), sorted as strings."""
    out: list[str] = []

    def walk(d: Path, prefix: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                rel = prefix + e.name
                if e.is_file():
                    if rel.endswith(suffix):
                        out.append(rel)
                elif e.is_dir():
                    walk(Path(e.path), rel + "/")

    walk(folder, "")
    return sorted(out)


_VOC_SPLITS = {"val": "val", "train": "train", "trainval": "trainval"}
_VOC_HINTS = ("VOC2012", "VOCdevkit/VOC2012")
_CTX_HINTS = ("VOC2010", "VOCdevkit/VOC2010")
_CTX_PREPARE = ("make SegmentationClassContext/ and the list with `ovss prepare context --src trainval_merged.json "
                "--out <VOCdevkit/VOC2010>`")
_COCO_SPLITS = {"val": "val2017", "train": "train2017"}


class VOC21(BenchmarkDataset):
    """PASCAL VOC 2012 val (1449 images), 21 classes with background; 255 (void borders) ignored."""

    name, title, background = "voc21", "VOC21", True
    layout = Layout("JPEGImages", "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/{split}.txt",
                    _VOC_SPLITS, "VOCdevkit/VOC2012", _VOC_HINTS)


class VOC20(VOC21):
    """VOC21's files with reduce_zero_label: background and void are ignored, 20 object classes."""

    name, title, background, reduce_zero_label = "voc20", "VOC20", False, True


class Context60(BenchmarkDataset):
    """PASCAL Context val (5104 images, VOC2010), background + 59 classes; no pixel is ignored."""

    name, title, background = "context60", "Context60", True
    layout = Layout("JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                    "ImageSets/SegmentationContext/{split}.txt", {"val": "val", "train": "train"},
                    "VOCdevkit/VOC2010", _CTX_HINTS, _CTX_PREPARE)


class Context59(Context60):
    """Context60's files with reduce_zero_label: the background is ignored, 59 classes."""

    name, title, background, reduce_zero_label = "context59", "Context59", False, True


class COCOStuff171(BenchmarkDataset):
    """COCO-Stuff 164k val2017 (5000 images), 171 classes; 255 (unlabelled) ignored."""

    name, title = "coco-stuff171", "COCO-Stuff171"
    layout = Layout("images/{split}", "annotations/{split}", ".jpg", "_labelTrainIds.png", None, _COCO_SPLITS,
                    "coco_stuff164k", ("coco_stuff164k",),
                    "make *_labelTrainIds.png from the raw stuffthingmaps with "
                    "`ovss prepare coco-stuff171 --src <coco_stuff164k>`", ".png")


class COCOObject(BenchmarkDataset):
    """COCO-Object val2017 (5000 images): background (stuff and unlabelled) + 80 things; nothing ignored."""

    name, title, background = "coco-object", "COCO-Object", True
    layout = Layout("images/{split}", "annotations/{split}", ".jpg", "_instanceTrainIds.png", None, _COCO_SPLITS,
                    "coco_stuff164k", ("coco_stuff164k",),
                    "make *_instanceTrainIds.png with `ovss prepare coco-object --src <coco_stuff164k>`", ".png")


class Cityscapes(BenchmarkDataset):
    """Cityscapes val (500 images in city sub-folders), 19 trainId classes; 255 ignored."""

    name, title = "cityscapes", "Cityscapes"
    layout = Layout("leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png", "_gtFine_labelTrainIds.png", None,
                    {"val": "val", "train": "train"}, "cityscapes", ("cityscapes",),
                    "make *_gtFine_labelTrainIds.png from *_gtFine_labelIds.png with "
                    "`ovss prepare cityscapes --src <cityscapes>`", "_gtFine_labelIds.png")


class ADE20K(BenchmarkDataset):
    """ADE20K (SceneParsing) validation (2000 images), 150 classes; raw 0 ("other") ignored."""

    name, title, reduce_zero_label = "ade20k", "ADE20K", True
    layout = Layout("images/{split}", "annotations/{split}", ".jpg", ".png", None,
                    {"val": "validation", "train": "training"}, "ADEChallengeData2016", ("ADEChallengeData2016",))


# ------------------------------------------------------------------------------------- folder layouts


class FolderSegDataset(SegDataset):
    """The plain folder layout (`ovss.data.folder.FolderDataset`: classes.txt, images/, masks/) as a
    SegDataset. `classes` keeps classes.txt's synonym lists; `class_names` are their first names.
    Masks keep FolderDataset's reading (8-bit as uint8, 16-bit as int32), no reduce_zero_label."""

    name, title = "folder", "folder"

    def __init__(self, root: str | os.PathLike[str], split: str = "val") -> None:
        from .folder import FolderDataset

        if split != "val":
            raise ValueError(f"{self.title}: a folder dataset has no splits (got split={split!r}); "
                             "point the root at the split's own folder")
        self.folder = FolderDataset(Path(root).expanduser())
        self.classes: list[list[str]] = self.folder.classes
        samples = [Sample(*self.folder[i]) for i in range(len(self.folder))]
        super().__init__(self.folder.root, samples, self.folder.class_names,
                         self._palette(self.folder.class_names), split=split)

    def _palette(self, class_names: list[str]) -> np.ndarray:
        from ..core.viz import palette_for

        return palette_for(class_names)

    def load_label(self, i: int) -> np.ndarray:
        self[i]  # range check
        return self.folder.load_mask(i if i >= 0 else i + len(self))


class SyntheticScenesDataset(FolderSegDataset):
    """The synthetic world's split written by `ovss.data.synthetic.write_split` (a folder layout).

    A missing root is an error; generate it first with `ensure_synthetic(root)`."""

    name, title = "synthetic-scenes", "synthetic-scenes"
    # The scenes are 96 px and the demo model was trained at that size: no resize, whole image.
    default_overrides: ClassVar[dict[str, Any]] = {"protocol.short_side": None, "protocol.crop": 0}

    def __init__(self, root: str | os.PathLike[str], split: str = "val") -> None:
        from .synthetic import IN_PROGRESS_MARKER, split_state

        root = Path(root).expanduser()
        state = split_state(root)
        if state == "partial":
            raise ValueError(f"{self.title}: {root} is incomplete (its generation was interrupted: "
                             f"{root / IN_PROGRESS_MARKER} is there); finish it with "
                             f"ovss.data.ensure_synthetic({str(root)!r}) or `ovss prepare synthetic-scenes --out "
                             f"{root}` (`ovss eval` finishes it by itself)")
        if not (root / "classes.txt").is_file():
            raise FileNotFoundError(f"{self.title}: missing {root / 'classes.txt'}; generate the split with "
                                    f"ovss.data.ensure_synthetic({str(root)!r}) or "
                                    f"`ovss prepare synthetic-scenes --out {root}`")
        super().__init__(root, split)
        from .synthetic import CLASSES

        if self.class_names != CLASSES:
            raise ValueError(f"{self.title}: {root / 'classes.txt'} lists {self.class_names}, not the synthetic "
                             f"world's classes {CLASSES}")

    def _palette(self, class_names: list[str]) -> np.ndarray:
        from .synthetic import PALETTE

        return np.asarray(PALETTE[: len(class_names)], np.uint8)


def ensure_synthetic(root: str | os.PathLike[str], n: int = 200, split: str = "val", size: int = 96,
                     progress: bool = False) -> Path:
    """Write the synthetic `split` (scenes 0..n-1, `size` px) into `root` unless already there; returns root.

    "There" means marked complete (`split.json`, written after the last file) for this split and
    size, with scenes 0..n-1 present; a folder from before the marker existed counts when all its
    files are there. A partial folder (a run killed mid-way) is finished; scenes already written are
    kept (`write_split` skips them), so this is cheap when complete."""
    from .synthetic import COMPLETE_MARKER, SEED_BASE, read_marker, split_state, write_split

    root = Path(root).expanduser()
    base = SEED_BASE[split]
    names = [f"{base + i:08d}.png" for i in range(n)]
    marker = read_marker(root, COMPLETE_MARKER)
    state = split_state(root)
    files_there = state == "complete" and (root / "classes.txt").is_file() and all(
        (root / "images" / f).is_file() and (root / "masks" / f).is_file() for f in names)
    if files_there and (marker is None or (marker.get("split"), marker.get("size"), marker.get("seed_base"))
                        == (split, size, base)):
        return root
    return write_split(root, split=split, n=n, size=size, progress=progress)


# ------------------------------------------------------------------------------------------- registry

DATASETS: Registry[type[SegDataset]] = Registry("dataset")
for _cls in (VOC21, VOC20, Context60, Context59, COCOStuff171, COCOObject, Cityscapes, ADE20K,
             FolderSegDataset, SyntheticScenesDataset):
    DATASETS.register(_cls.name, _cls)


def create_dataset(name: str, root: str | os.PathLike[str], split: str = "val") -> SegDataset:
    """The dataset `name` (see `list_datasets()`) read from `root`; errors name the missing path."""
    return DATASETS.get(name)(root, split=split)  # type: ignore[call-arg]


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)
