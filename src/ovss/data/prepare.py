"""The label conversions a user runs once after downloading a benchmark (`ovss prepare DATASET`).

Each conversion writes what `ovss.data.benchmarks` reads, with the same values as the reference script
named in its docstring. All of them show a tqdm progress bar, skip outputs that already exist (so an
interrupted run resumes; `overwrite=True` redoes them) and write every file atomically (temp file +
rename), so a killed run never leaves a half-written PNG that a later run would skip. Only numpy and
Pillow are needed: no mmcv/mmengine, pycocotools, Detail API or scipy.

Source values that the reference tables do not list (e.g. the 11 COCO thing ids that have no masks)
never occur in the real data; the reference scripts leave them unchanged, which would alias a real
class. Here they become 255 (ignored) and are reported with a warning, or raise with `strict=True`.

    coco-stuff171  annotations/<split>/<stem>.png (raw stuffthingmaps)  -> <stem>_labelTrainIds.png
    coco-object    raw stuffthingmaps (or *_labelTrainIds.png)          -> <stem>_instanceTrainIds.png
    context        trainval_merged.json (PASCAL-Context, Detail format) -> SegmentationClassContext/<id>.png
                                                                           + ImageSets/SegmentationContext/<split>.txt
    cityscapes     gtFine/<split>/<city>/*_gtFine_labelIds.png          -> *_gtFine_labelTrainIds.png
    synthetic-scenes  (generated)                                       -> classes.txt, images/, masks/
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .benchmarks import _read_meta, read_label
from .io import atomic_write

__all__ = [
    "PrepareReport",
    "add_prepare_parser",
    "apply_lut",
    "cityscapes_lut",
    "coco_object_lut",
    "coco_stuff_lut",
    "context_lut",
    "context_mask",
    "convert_cityscapes",
    "convert_coco_object",
    "convert_coco_stuff",
    "convert_context",
    "rle_decode",
]

UNKNOWN = -1  # LUT entry for a source value the reference table does not list


@dataclass
class PrepareReport:
    """What a conversion did: files written and skipped, and files holding values outside the table."""

    written: int = 0
    skipped: int = 0
    unknown: dict[str, list[int]] = field(default_factory=dict)  # source file -> unlisted values (-> 255)
    outputs: list[Path] = field(default_factory=list)  # every output the conversion is responsible for

    def summary(self) -> str:
        s = f"wrote {self.written} file(s), skipped {self.skipped} already there"
        if self.unknown:
            s += f"; {len(self.unknown)} source file(s) had unlisted values, written as 255 (ignored)"
        return s


# -------------------------------------------------------------------------------------------- tables


def coco_stuff_lut() -> np.ndarray:
    """Raw stuffthingmap value -> COCO-Stuff-171 trainId (uint8 values in an int16 LUT of 256; -1 = unlisted).

    mmseg `tools/dataset_converters/coco_stuff164k.py` (`clsID_to_trID`): the 171 raw values that have
    masks (things 0..89 and stuff 91..181, minus the 11 unused thing ids), in increasing order, become
    0..170; 255 (unlabelled) stays 255.
    """
    meta = _read_meta("coco-stuff171")
    lut = np.full(256, UNKNOWN, np.int16)
    lut[np.asarray(meta["raw_ids"])] = np.arange(len(meta["raw_ids"]))
    lut[255] = 255
    return lut


def coco_object_lut(source: str = "raw") -> np.ndarray:
    """COCO-Object label (0 background + 80 things) from a raw stuffthingmap value (`source='raw'`) or from
    a COCO-Stuff-171 trainId (`source='trainids'`).

    SCLIP/NACLIP/ClearCLIP/ProxyCLIP `datasets/cvt_coco_object.py` (from NVlabs/GroupViT
    `convert_dataset/convert_coco_object.py`): the mmseg raw -> trainId table plus one, then every raw
    value above 90 (all stuff and the unlabelled 255) set to 0. So things -> 1..80, stuff -> 0 and
    unlabelled -> 0: COCO-Object has no ignored pixels. On trainIds: 0..79 -> 1..80, 80..170 -> 0, 255 -> 0.
    """
    stuff = coco_stuff_lut()
    if source == "raw":
        lut = np.where(stuff >= 0, stuff + 1, UNKNOWN).astype(np.int16)
        lut[91:] = np.where(stuff[91:] >= 0, 0, UNKNOWN)
        return lut
    if source == "trainids":
        lut = np.full(256, UNKNOWN, np.int16)
        lut[:80] = np.arange(1, 81)
        lut[80:171] = 0
        lut[255] = 0
        return lut
    raise ValueError(f"source must be 'raw' or 'trainids', got {source!r}")


def cityscapes_lut() -> np.ndarray:
    """Cityscapes label id (0..33) -> trainId (0..18, 255 = ignored), cityscapesScripts `helpers/labels.py`.

    Equal to rendering `*_gtFine_polygons.json` with `json2labelImg(..., 'trainIds')` as mmseg
    `tools/dataset_converters/cityscapes.py` does: both encodings are drawn from the same polygons in the
    same order (negative-id labels skipped, background `unlabeled`), so mapping the labelIds image pixel
    by pixel gives the same result.
    """
    table = _read_meta("cityscapes")["label_id_to_train_id"]
    lut = np.full(256, UNKNOWN, np.int16)
    lut[: len(table)] = table
    return lut


def context_lut() -> np.ndarray:
    """PASCAL-Context (Detail) category id (0..459) -> Context60 label 0..59: the 60 ids of background and
    the 59 classes, sorted ascending, map to their position (mmseg `tools/dataset_converters/
    pascal_context.py`, `_mapping` / `_key`); any other id is unlisted (mmseg asserts none occurs)."""
    ids = _read_meta("context60")["detail_category_ids"]
    lut = np.full(460, UNKNOWN, np.int16)
    lut[np.asarray(ids)] = np.arange(len(ids))
    return lut


def apply_lut(values: np.ndarray, lut: np.ndarray, strict: bool = False, what: str = "") -> tuple[np.ndarray, list[int]]:
    """Map `values` through `lut` to uint8; unlisted values (LUT -1 or beyond the LUT) become 255, or
    raise ValueError with `strict`. Returns (mapped, sorted unlisted values found)."""
    v = np.asarray(values)
    if v.size and (int(v.min()) < 0 or int(v.max()) >= len(lut)):
        ext = np.full(max(int(v.max()) + 1, len(lut)), UNKNOWN, np.int16)
        ext[: len(lut)] = lut
        lut = ext
        if int(v.min()) < 0:
            raise ValueError(f"{what}: negative source values")
    out = lut[v]
    bad = out < 0
    unknown: list[int] = []
    if bad.any():
        unknown = sorted(int(x) for x in np.unique(v[bad]))
        if strict:
            raise ValueError(f"{what}: values {unknown[:20]} are not in the conversion table")
        out = np.where(bad, 255, out)
    return out.astype(np.uint8), unknown


# ---------------------------------------------------------------------------------------- plumbing


def _save_png(arr: np.ndarray, path: Path) -> None:
    """uint8 grayscale ('L') PNG, as the reference scripts save (`Image.fromarray(uint8).save`), atomically."""
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))  # 2-D uint8 -> mode "L"
    atomic_write(path, lambda f: im.save(f, format="PNG"))


def _run(jobs: Sequence[tuple[str, Any, Path]], convert: Callable[[Any], tuple[np.ndarray, list[int]]],
         desc: str, report: PrepareReport, overwrite: bool, progress: bool) -> PrepareReport:
    """`jobs`: (source name for messages, input for `convert`, output path)."""
    from tqdm import tqdm

    for name, src, dst in tqdm(jobs, desc=desc, unit="file", disable=not progress, dynamic_ncols=True):
        report.outputs.append(dst)
        if dst.is_file() and not overwrite:
            report.skipped += 1
            continue
        out, unknown = convert(src)
        if unknown:
            report.unknown[name] = unknown
        _save_png(out, dst)
        report.written += 1
    return report


def _warn_unknown(report: PrepareReport, what: str) -> None:
    if report.unknown:
        first, vals = next(iter(report.unknown.items()))
        warnings.warn(f"{what}: {len(report.unknown)} source file(s) hold values the conversion table does not "
                      f"list (first: {first}: {vals[:10]}); they were written as 255 (ignored). Real data never "
                      "has them: check the input (strict=True / --strict makes this an error).", stacklevel=3)


def _link_dir(target: Path, link: Path) -> None:
    """Make `link` point at the folder `target` (symlink), so a separate output root has its images too."""
    if link.exists() or not target.is_dir():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(target.resolve(), target_is_directory=True)
    except OSError as e:  # e.g. Windows without symlink rights
        warnings.warn(f"could not link {link} -> {target} ({e}); copy or link the images there yourself",
                      stacklevel=3)


def _raw_maps(folder: Path) -> list[Path]:
    """The raw stuffthingmaps in a folder: `*.png` without 'TrainIds' in the name (both reference scripts
    skip their own outputs this way), dot-files skipped, sorted."""
    return sorted(p for p in folder.glob("*.png") if "TrainIds" not in p.name and not p.name.startswith("."))


def _coco_split_dirs(src: Path, splits: Iterable[str]) -> list[tuple[str, Path]]:
    out = []
    for split in splits:
        d = src / "annotations" / split
        if not d.is_dir():
            raise FileNotFoundError(f"missing {d}; expected coco_stuff164k with annotations/{split}/ holding the "
                                    "stuffthingmaps PNGs (stuffthingmaps_trainval2017.zip) and images/"
                                    f"{split}/ (COCO {split}.zip)")
        out.append((split, d))
    return out


# ------------------------------------------------------------------------------------- conversions


def convert_coco_stuff(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                       splits: Sequence[str] = ("val2017",), strict: bool = False, overwrite: bool = False,
                       progress: bool = True) -> PrepareReport:
    """COCO-Stuff 164k raw stuffthingmaps -> `<out>/annotations/<split>/<stem>_labelTrainIds.png` (171 classes).

    Reference: mmseg `tools/dataset_converters/coco_stuff164k.py` (table: `coco_stuff_lut`). `src` is the
    coco_stuff164k folder (`images/<split>/`, `annotations/<split>/<stem>.png`); `out` defaults to `src`
    (outputs beside the raw maps, as mmseg writes them). Unlike mmseg this needs only the splits asked
    for (no 123,287-file count) and, for a separate `out`, links `images/<split>` instead of copying it.
    """
    src = Path(src).expanduser()
    dst_root = src if out is None else Path(out).expanduser()
    lut = coco_stuff_lut()
    report = PrepareReport()
    for split, d in _coco_split_dirs(src, splits):
        raws = _raw_maps(d)
        if not raws:
            raise FileNotFoundError(f"no raw stuffthingmaps (<stem>.png) in {d}")
        jobs = [(str(p), p, dst_root / "annotations" / split / f"{p.stem}_labelTrainIds.png") for p in raws]
        _run(jobs, lambda p: apply_lut(read_label(p), lut, strict, str(p)), f"coco-stuff171 {split}", report,
             overwrite, progress)
        if dst_root != src:
            _link_dir(src / "images" / split, dst_root / "images" / split)
    _warn_unknown(report, "coco-stuff171")
    return report


def convert_coco_object(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                        splits: Sequence[str] = ("val2017",), source: str = "auto", strict: bool = False,
                        overwrite: bool = False, progress: bool = True) -> PrepareReport:
    """COCO-Stuff maps -> `<out>/annotations/<split>/<stem>_instanceTrainIds.png` (background 0 + 80 things).

    Reference: `datasets/cvt_coco_object.py` of SCLIP / NACLIP / ClearCLIP / ProxyCLIP (GroupViT's
    `convert_coco_object.py`); table `coco_object_lut`. `source`: 'raw' reads the raw stuffthingmaps
    (the reference script's input), 'trainids' reads COCO-Stuff `*_labelTrainIds.png` (as written by
    `convert_coco_stuff`); 'auto' uses the raw maps when the folder has them, else the trainIds files.
    Both give the same labels on real data. Needs only the splits asked for (no mmcv, no
    123,287-file count, no need to run the COCO-Stuff conversion first); a separate `out` gets
    `images/<split>` linked, not copied.
    """
    src = Path(src).expanduser()
    dst_root = src if out is None else Path(out).expanduser()
    report = PrepareReport()
    for split, d in _coco_split_dirs(src, splits):
        raws = _raw_maps(d) if source in ("auto", "raw") else []
        if raws:
            lut, inputs, cut = coco_object_lut("raw"), raws, 0
        elif source in ("auto", "trainids"):
            inputs = sorted(p for p in d.glob("*_labelTrainIds.png") if not p.name.startswith("."))
            lut, cut = coco_object_lut("trainids"), len("_labelTrainIds")
            if not inputs:
                raise FileNotFoundError(f"no raw stuffthingmaps (<stem>.png) or *_labelTrainIds.png in {d}")
        elif source == "raw":
            raise FileNotFoundError(f"no raw stuffthingmaps (<stem>.png) in {d}")
        else:
            raise ValueError(f"source must be 'auto', 'raw' or 'trainids', got {source!r}")
        jobs = [(str(p), p, dst_root / "annotations" / split / f"{p.stem[:len(p.stem) - cut]}_instanceTrainIds.png")
                for p in inputs]
        _run(jobs, lambda p, lut=lut: apply_lut(read_label(p), lut, strict, str(p)), f"coco-object {split}",
             report, overwrite, progress)
        if dst_root != src:
            _link_dir(src / "images" / split, dst_root / "images" / split)
    _warn_unknown(report, "coco-object")
    return report


def convert_cityscapes(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                       splits: Sequence[str] = ("val",), strict: bool = False, overwrite: bool = False,
                       progress: bool = True) -> PrepareReport:
    """Cityscapes `gtFine/<split>/<city>/*_gtFine_labelIds.png` -> `*_gtFine_labelTrainIds.png` beside them
    (under `out`, default `src`), with the standard id -> trainId table (`cityscapes_lut`).

    mmseg's own converter (`tools/dataset_converters/cityscapes.py`) renders the same files from the
    `*_polygons.json` with cityscapesscripts; this route gives identical values without that package.
    """
    src = Path(src).expanduser()
    dst_root = src if out is None else Path(out).expanduser()
    lut = cityscapes_lut()
    report = PrepareReport()
    suffix = "_gtFine_labelIds.png"
    for split in splits:
        d = src / "gtFine" / split
        if not d.is_dir():
            raise FileNotFoundError(f"missing {d}; expected cityscapes with gtFine/{split}/<city>/*{suffix} "
                                    f"(gtFine_trainvaltest.zip) and leftImg8bit/{split}/<city>/ (leftImg8bit_trainvaltest.zip)")
        inputs = sorted(p for p in d.rglob(f"*{suffix}") if not p.name.startswith("."))
        if not inputs:
            raise FileNotFoundError(f"no *{suffix} files under {d}")
        jobs = [(str(p), p,
                 dst_root / p.relative_to(src).parent / (p.name[: -len(suffix)] + "_gtFine_labelTrainIds.png"))
                for p in inputs]
        _run(jobs, lambda p: apply_lut(read_label(p), lut, strict, str(p)), f"cityscapes {split}", report,
             overwrite, progress)
        if dst_root != src:
            _link_dir(src / "leftImg8bit" / split, dst_root / "leftImg8bit" / split)
    _warn_unknown(report, "cityscapes")
    return report


# ---- PASCAL-Context from the Detail-format json, without the Detail API or pycocotools


def _rle_counts_from_string(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools/Detail `maskApi.c` `rleFrString`): each count is
    a little-endian run of 5-bit groups stored as chr(48 + group), bit 0x20 = more groups follow, the last
    group's 0x10 bit sign-extends; from the fourth count on, counts are deltas to the count two before."""
    b = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p, n = 0, len(b)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = b[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """A COCO-style RLE (`{'size': [h, w], 'counts': str | list}`) as an (h, w) uint8 0/1 mask.

    Runs alternate 0, 1, 0, ... starting with zeros, over the pixels in column-major order (as
    pycocotools `mask.decode`, which the Detail API's `decodeMask` is)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = _rle_counts_from_string(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"RLE counts do not cover a {h}x{w} mask (sum {sum(counts)})")
    vals = np.zeros(len(counts), np.uint8)
    vals[1::2] = 1
    return np.repeat(vals, counts).reshape(w, h).T


def context_mask(image: dict[str, Any], anns: Iterable[dict[str, Any]]) -> np.ndarray:
    """The Detail API's `getMask(img)` class mask: zeros, then each annotation's pixels set to its
    `category_id`, in annotation order (later ones overwrite earlier ones)."""
    h, w = int(image["height"]), int(image["width"])
    mask = np.zeros((h, w), np.int32)
    for ann in anns:
        m = rle_decode(ann["segmentation"])
        if m.shape != (h, w):
            raise ValueError(f"annotation {ann.get('id')} of image {image.get('file_name')} is {m.shape[0]}x"
                             f"{m.shape[1]}, the image {h}x{w}")
        mask[m != 0] = int(ann["category_id"])
    return mask


def _find_context_json(src: Path) -> Path:
    if src.is_dir():
        cand = src / "trainval_merged.json"
        if not cand.is_file():
            raise FileNotFoundError(f"missing {cand}; pass the PASCAL-Context trainval_merged.json file or the "
                                    "folder that holds it as --src")
        return cand
    if not src.is_file():
        raise FileNotFoundError(f"missing {src} (the PASCAL-Context trainval_merged.json)")
    return src


def convert_context(src: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                    splits: Sequence[str] = ("val",), strict: bool = False, overwrite: bool = False,
                    progress: bool = True) -> PrepareReport:
    """PASCAL-Context `trainval_merged.json` -> `<out>/SegmentationClassContext/<id>.png` (0..59, 0 =
    background) and `<out>/ImageSets/SegmentationContext/<split>.txt` (sorted ids); `out` is the
    VOCdevkit/VOC2010 folder (default: the folder holding the json). Context59 reads the same files
    with reduce_zero_label.

    Reference: mmseg `tools/dataset_converters/pascal_context.py`, which takes each image of the phase
    from the Detail API (`Detail(json, ..., phase).getImgs()`), its `getMask` (annotations'
    RLE masks painted with their category ids in file order), and maps the 60 allowed ids, sorted, to
    0..59 (`context_lut`). This does the same from the json directly, with a pure-numpy RLE decoder,
    so the Detail API (and its C build, matplotlib, skimage, scipy) is not needed. Images without
    annotations get an all-background mask, as with `getMask`.
    """
    json_path = _find_context_json(Path(src).expanduser())
    dst_root = json_path.parent if out is None else Path(out).expanduser()
    data = json.loads(json_path.read_text(encoding="utf-8"))
    for key in ("images", "annos_segmentation"):
        if key not in data:
            raise ValueError(f"{json_path} has no {key!r}: not a PASCAL-Context (Detail) annotation file")
    images: dict[Any, dict[str, Any]] = {}
    for img in data["images"]:
        images[img["image_id"]] = img
    segs: dict[Any, dict[str, Any]] = {}  # Detail indexes annotations by id, keeping first-seen order
    for s in data["annos_segmentation"]:
        segs[s["id"]] = s
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for s in segs.values():
        by_image.setdefault(s["image_id"], []).append(s)
    lut = context_lut()
    report = PrepareReport()
    label_dir = dst_root / "SegmentationClassContext"
    for split in splits:
        chosen = [img for img in images.values() if img.get("phase") == split]
        if not chosen:
            phases = sorted({str(i.get("phase")) for i in images.values()})
            raise ValueError(f"{json_path}: no images of phase {split!r} (phases: {', '.join(phases)})")
        jobs = [(f"{json_path.name}:{img['file_name']}", (img, by_image.get(img["image_id"], [])),
                 label_dir / f"{Path(img['file_name']).stem}.png") for img in chosen]

        def convert(job: tuple[dict[str, Any], list[dict[str, Any]]]) -> tuple[np.ndarray, list[int]]:
            img, anns = job
            return apply_lut(context_mask(img, anns), lut, strict, f"{json_path} image {img['file_name']}")

        _run(jobs, convert, f"context {split}", report, overwrite, progress)
        stems = sorted(Path(img["file_name"]).stem for img in chosen)
        list_path = dst_root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        text = "".join(s + "\n" for s in stems).encode()
        if overwrite or not list_path.is_file() or list_path.read_bytes() != text:
            atomic_write(list_path, lambda f, text=text: f.write(text))
        report.outputs.append(list_path)
    _warn_unknown(report, "context")
    return report


# ------------------------------------------------------------------------------------------------ CLI

_PREPARE_NAMES = {
    "coco-stuff171": "coco-stuff171", "coco-stuff": "coco-stuff171",
    "coco-object": "coco-object",
    "context": "context", "context59": "context", "context60": "context",
    "cityscapes": "cityscapes",
    "synthetic-scenes": "synthetic-scenes",
}

_DEFAULT_SPLITS = {"coco-stuff171": ["val2017"], "coco-object": ["val2017"], "context": ["val"],
                   "cityscapes": ["val"], "synthetic-scenes": ["val"]}


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `ovss prepare DATASET --src ... [--out ...]` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "prepare", help="convert downloaded benchmark annotations into the layout `ovss eval` reads",
        description="coco-stuff171: --src coco_stuff164k (raw stuffthingmaps in annotations/<split>/). "
                    "coco-object: --src coco_stuff164k (raw maps or *_labelTrainIds.png). "
                    "context (= context59/context60): --src trainval_merged.json, --out VOCdevkit/VOC2010. "
                    "cityscapes: --src cityscapes (gtFine/<split>/*/*_gtFine_labelIds.png). "
                    "synthetic-scenes: --out FOLDER (generated). Outputs already there are skipped.")
    p.add_argument("dataset", choices=sorted(_PREPARE_NAMES), help="what to prepare")
    p.add_argument("--src", help="the downloaded data (see above)")
    p.add_argument("--out", help="output root (default: --src, or for context the json's folder)")
    p.add_argument("--splits", nargs="+", help="splits to convert (default: the evaluation split: val2017 for "
                                               "COCO, val otherwise)")
    p.add_argument("--strict", action="store_true",
                   help="fail on source values the conversion table does not list (default: write 255)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument("--n", type=int, default=200, help="synthetic-scenes: number of scenes (default 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
    return p


def cmd_prepare(args: argparse.Namespace) -> int:
    kind = _PREPARE_NAMES[args.dataset]
    splits = args.splits or _DEFAULT_SPLITS[kind]
    progress = not args.quiet
    if kind == "synthetic-scenes":
        from .benchmarks import ensure_synthetic

        if not args.out:
            raise ValueError("synthetic-scenes needs --out FOLDER")
        for split in splits:
            root = ensure_synthetic(args.out, n=args.n, split=split, progress=progress)
        print(f"synthetic-scenes ({args.n} scenes) ready at {root}")
        return 0
    if not args.src:
        raise ValueError(f"{args.dataset} needs --src (the downloaded data)")
    kw = {"splits": splits, "strict": args.strict, "overwrite": args.overwrite, "progress": progress}
    convert = {"coco-stuff171": convert_coco_stuff, "coco-object": convert_coco_object,
               "context": convert_context, "cityscapes": convert_cityscapes}[kind]
    report = convert(args.src, args.out, **kw)  # type: ignore[operator]
    print(f"{args.dataset}: {report.summary()}")
    return 0
