"""The evaluation runner: a method over a dataset, mmseg-equal mIoU, resumable and distributed.

Resume: each rank processes its shard in order and, after every image, atomically rewrites a
small state file (how many of its images are done + the four metric histograms). A run killed at
any point (Ctrl-C or kill -9) resumes from the last image whose state was written: an image whose
state was not written is simply redone, never counted twice. The state lives under
`<out>/.state/<fingerprint>/`, where the fingerprint covers every argument that changes numbers,
so re-running the same command resumes and a changed command starts afresh.

Distributed: under `torchrun` (WORLD_SIZE > 1) each rank takes every WORLD_SIZE-th image; the
histograms are summed with `all_reduce` (gloo on CPU, nccl on GPU) and rank 0 writes the results.
The summed integer counts are the same as a single process's, so the numbers are identical.

Protocols (`protocol=`): "mlmp" is MLMP's (dosowiechi/MLMP utils/mm_transforms.py:99-121): the image
squashed to the recipe's `protocol.squash` (224 x 224) and the ground truth resized to that size
by cv2's nearest rule (`nearest_resize`), scored there with mmseg's metric; the segmenter returns
its labels at that size. "mmseg" (default) is the protocol of SCLIP, ClearCLIP, NACLIP, ProxyCLIP,
ResCLIP and SC-CLIP (mmseg `IoUMetric`, see `ovss.eval.metrics`) on the full-size label maps.
"cliptrase" is the protocol of leaves162/CLIPtrase's own evaluation (`clip_self_correlation.py`
and `configs/metric.py` at 2b7de612), under which CLIPtrase's README and paper numbers were made:

- image: PIL bicubic resize of the short side to `size` (torchvision `Resize(size)`: the long side
  truncated, `int(size * long / short)`), then a `size` x `size` center crop (torchvision
  `CenterCrop`, offsets `int(round((H - size) / 2))`, Python's half-to-even round), then RGB
  (clip_self_correlation.py:38-43, 82-83); the crop is what the segmenter sees;
- ground truth: PIL nearest resize and the same center crop (lines 51-56, 84), so only the central
  square is scored, at `size` x `size`;
- an image whose cropped ground truth holds nothing but the reference's 255 is skipped (lines
  132-141); its detectron2-format maps store background *and* void as 255 (VOC:
  cliptrase_d2/datasets/prepare_voc_sem_seg.py:13-36; Context: prepare_pcontext_sem_seg_59cls.py
  `mask - 1`), so for a dataset with a background class that is "only background and ignore";
- datasets with a background class: those 255 pixels are scored as background (lines 164-166,
  212-214): here ignore -> background (class 0);
- COCO-Object: scored on COCO-Stuff's 171-class maps (configs/dataset_cfg.py:12-16: its gt_path
  is `stuffthingmaps_detectron2`) with C = 80: things 0..79 are the objects, 255 (unlabelled) and
  80 (the first stuff class, "banner") are background, the other stuff classes 81..170 are not
  scored (outside [0, C + 1), configs/metric.py:4); read from the `*_labelTrainIds.png` beside
  the `*_instanceTrainIds.png` maps (`ovss prepare coco-stuff171`);
- metric (configs/metric.py): one confusion matrix summed over the scored images (lines 12-14;
  the same four histograms as mmseg's once the pixels outside [0, C) are dropped, so the
  `IoUAccumulator` sums them), then IoU = I / (U + 0.01) (line 18), mIoU over the classes present
  in the ground truth only (lines 19-20), Acc = I / (label + 0.01) with mAcc over *all* classes
  (absent ones count 0; lines 16-17), pixel accuracy I / label pixels (line 15), fwIoU (21-22).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.protocol import squashed_size
from .metrics import IoUAccumulator


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    initialised_here: bool = False


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), True)


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_classes(dataset) -> list[list[str]]:
    """The dataset's classes as synonym lists (folder datasets carry synonyms in classes.txt)."""
    classes = getattr(dataset, "classes", None)
    if classes and isinstance(classes[0], (list, tuple)):
        return [list(c) for c in classes]
    return [[n] for n in dataset.class_names]


PROTOCOLS = ("mmseg", "cliptrase", "mlmp")
COCO_THINGS = 80  # COCO-Stuff trainIds 0..79 are the COCO-Object classes, 80..170 stuff


def nearest_resize(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.resize(label, (w, h), interpolation=INTER_NEAREST), as mmcv.imresize calls it for
    MLMP's ground truth (utils/mm_transforms.py:113-115): source index floor(i * (1 / (dst /
    src))) in double precision, capped at the last row / column."""
    h, w = label.shape[:2]
    nh, nw = size
    iy, ix = 1.0 / (nh / h), 1.0 / (nw / w)
    ys = np.minimum(np.floor(np.arange(nh) * iy).astype(np.int64), h - 1)
    xs = np.minimum(np.floor(np.arange(nw) * ix).astype(np.int64), w - 1)
    return np.asarray(label)[ys[:, None], xs[None, :]]


def resize_center_crop(image, size: int, resample: int):
    """torchvision 0.13's `Resize(size)` then `CenterCrop(size)` on a PIL image (the pair
    CLIPtrase's `_transform1` / `gt_transform` apply, clip_self_correlation.py:38-43, 51-56)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:  # F_pil.resize returns the image itself when the short side already fits
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), resample)
    w, h = image.size
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # Python's round: half to even
    return image.crop((left, top, left + size, top + size))


def cliptrase_label(label: np.ndarray, num_classes: int, ignore_index: int = 255, background: bool = False,
                    coco_stuff: bool = False) -> np.ndarray | None:
    """A cropped ground truth (the dataset's numbering) as CLIPtrase scores it, or None when its
    loop skips the image (nothing but its 255: background or ignore with a background class).

    `coco_stuff`: `label` is a COCO-Stuff 171-class map scored as COCO-Object (things 0..79 ->
    1..80, 80 and 255 -> background 0, 81..170 not scored). Pixels not scored are `ignore_index`.
    """
    g = np.asarray(label).astype(np.int64)
    if coco_stuff:
        void = g == 255
        if void.all():
            return None
        out = np.full(g.shape, ignore_index, np.int64)
        things = g < COCO_THINGS
        out[things] = g[things] + 1
        out[(g == COCO_THINGS) | void] = 0
        return out
    void = g == ignore_index
    if background:
        void |= g == 0
    if void.all():
        return None
    if background:
        g[void] = 0
    g[(g < 0) | (g >= num_classes)] = ignore_index
    return g


def cliptrase_metrics(acc: IoUAccumulator, skipped: int = 0) -> dict[str, Any]:
    """CLIPtrase's `configs/metric.py` `scores` on the accumulated histograms, in percent (the
    reference rounds to 2 decimals when it prints; kept in full here). Per-class IoU is NaN for
    classes absent from the ground truth (left out of mIoU); per-class Acc counts them as 0."""
    i, g = acc.area_intersect.astype(np.float64), acc.area_label.astype(np.float64)
    u = acc.area_union.astype(np.float64)
    iou = i / (u + 0.01)
    present = g > 0
    cls_acc = i / (g + 0.01)
    total = g.sum()
    freq = g / total if total > 0 else np.zeros_like(g)
    iou_out = np.where(present, iou * 100, np.nan)
    return {
        "IoU": [float(x) for x in iou_out], "Acc": [float(x) for x in cls_acc * 100],
        "mIoU": float(iou[present].mean() * 100) if present.any() else math.nan,
        "mAcc": float(cls_acc.mean() * 100),
        "aAcc": float(i.sum() / total * 100) if total > 0 else math.nan,
        "fwIoU": float((freq[present] * iou[present]).sum() * 100),
        "num_images": acc.num_images, "skipped_images": int(skipped),
    }


def evaluate(segmenter, dataset, out_dir: str | os.PathLike, classes: Any = None, background: bool = False,
             limit: int | None = None, save_predictions: bool = False, progress: bool = True,
             settings: dict[str, Any] | None = None, protocol: str = "mmseg",
             size: int | None = None) -> dict[str, Any] | None:
    """Run `segmenter` over `dataset` and return (and write) the metrics; None on ranks > 0.

    Args:
        segmenter: an `ovss.core.segmenter.Segmenter`.
        dataset: a dataset with `class_names`, `num_classes`, `ignore_index`, `__len__`,
            `__getitem__(i).image_path/.name` and `load_label(i)`.
        classes: the text-side class list (any `parse_classes` form: e.g. a preset's class file
            with synonyms); default: the dataset's class names. Must have one entry per class.
        background: class 0 is background (it receives under-threshold pixels).
        limit: evaluate only the first `limit` images.
        save_predictions: also write each label map as an index PNG under `<out>/predictions/`.
        settings: extra settings recorded in the results and the fingerprint (e.g. the command).
        protocol: "mmseg" (full-size labels, mmseg `IoUMetric`), "cliptrase" (CLIPtrase's own
            evaluation: center crop, 255 as background, GT-present mean) or "mlmp" (labels
            resized to the squashed image size); see the module notes.
        size: the "cliptrase" protocol's resize-and-crop size; default: the recipe's short side.
    """
    from tqdm import tqdm

    from ..data.io import save_index_png, write_json
    from ..text.bank import parse_classes

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    squash = getattr(segmenter.recipe.protocol, "squash", None) if protocol == "mlmp" else None
    if protocol == "mlmp" and not squash:
        raise ValueError("the mlmp protocol scores at the squashed image size: the recipe has no protocol.squash "
                         "(use an mlmp dataset preset, or --set protocol.squash=(224,224))")
    if protocol == "cliptrase":
        size = size or segmenter.recipe.protocol.short_side
        if not size:
            raise ValueError("the cliptrase protocol needs a crop size: the recipe has no short side; pass size= "
                             "(ovss eval: --protocol-size)")
    dist = init_distributed()
    out = Path(out_dir)
    spec = parse_classes(classes if classes is not None else dataset_classes(dataset), background=background)
    if len(spec) != dataset.num_classes:
        raise ValueError(f"the class list has {len(spec)} classes but {dataset.name} has {dataset.num_classes}")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = list(range(dist.rank, n, dist.world))
    run = {
        "dataset": dataset.name, "root": str(dataset.root), "num_images": n, "world": dist.world,
        "queries": spec.queries, "query_to_class": spec.query_to_class, "background": spec.background,
        **segmenter.settings(), **(settings or {}),
    }
    run.pop("ovss_version", None)
    if protocol != "mmseg":  # mmseg runs keep their fingerprint (and resume state) from before
        run.update(protocol=protocol, protocol_size=size)
    state_dir = out / ".state" / fingerprint(run)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / f"rank{dist.rank}.json"
    acc = IoUAccumulator(dataset.num_classes, dataset.ignore_index)
    done = skipped = 0
    if state_path.exists():
        state = json.loads(state_path.read_text())
        acc.load_state_dict(state["metric"])
        done, skipped = int(state["done"]), int(state.get("skipped", 0))
    pred_dir = out / "predictions"
    palette = getattr(dataset, "palette", None)
    bar = tqdm(indices, desc=f"eval {dataset.name}", unit="img", initial=done, total=len(indices),
               disable=not progress or dist.rank != 0, dynamic_ncols=True)
    start = time.perf_counter()
    for k, i in enumerate(indices):
        if k < done:
            continue
        sample = dataset[i]
        out_size = None
        if protocol == "cliptrase":
            image, label = _cliptrase_sample(dataset, i, sample, size)
        else:
            image, label = sample.image_path, dataset.load_label(i)
            if protocol == "mlmp":  # scored at the squashed size: labels resized there, nearest
                label = nearest_resize(label, squashed_size(*label.shape[:2], squash))
                out_size = label.shape
        if label is None:  # CLIPtrase skips an image with no ground truth left in its crop
            skipped += 1
        else:
            sized = {} if out_size is None else {"size": out_size}  # mlmp: labels at the squashed size
            result = segmenter(image, spec, keep_image=False, **sized)
            if result.labels.shape != label.shape:
                raise ValueError(f"{sample.name}: prediction {result.labels.shape} vs label {label.shape}")
            acc.update(result.labels, label)
            if save_predictions:
                save_index_png(result.labels, pred_dir / f"{sample.name}.png", palette)
        write_json({"done": k + 1, "metric": acc.state_dict(), "skipped": skipped}, state_path)
        bar.update(1)
    bar.close()

    if dist.world > 1:
        import torch.distributed as tdist

        counts = torch.tensor(np.stack([acc.area_intersect, acc.area_union, acc.area_pred, acc.area_label]),
                              dtype=torch.int64)
        n_img = torch.tensor([acc.num_images, skipped], dtype=torch.int64)
        if tdist.get_backend() == "nccl":
            counts, n_img = counts.cuda(), n_img.cuda()
        tdist.all_reduce(counts)
        tdist.all_reduce(n_img)
        counts = counts.cpu().numpy()
        acc.area_intersect, acc.area_union, acc.area_pred, acc.area_label = counts
        acc.num_images, skipped = (int(v) for v in n_img.cpu().tolist())
    results = None
    if dist.rank == 0:
        metrics = cliptrase_metrics(acc, skipped) if protocol == "cliptrase" else acc.compute()
        results = {
            "dataset": dataset.name,
            "protocol": protocol,
            "class_names": dataset.class_names,
            "metrics": metrics,
            "mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "aAcc": metrics["aAcc"],
            "seconds": time.perf_counter() - start,
            "settings": run,
        }
        out.mkdir(parents=True, exist_ok=True)
        write_json(results, out / "results.json")
        (out / "results.md").write_text(markdown_table(results))
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        if dist.initialised_here:
            tdist.destroy_process_group()
    return results


def _cliptrase_sample(dataset, i: int, sample, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The image crop the segmenter sees and the cropped ground truth (None: skipped), as
    clip_self_correlation.py:69-88 and 132-141, 164-166 make them."""
    from PIL import Image

    from ..data.benchmarks import read_label

    with Image.open(sample.image_path) as im:
        image = np.asarray(resize_center_crop(im, size, Image.BICUBIC).convert("RGB"))
    coco_stuff = dataset.name == "coco-object"
    if coco_stuff:  # its COCO80_val reads the 171-class maps (configs/dataset_cfg.py:14)
        path = Path(str(sample.label_path).replace("_instanceTrainIds.png", "_labelTrainIds.png"))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the cliptrase protocol scores COCO-Object on COCO-Stuff's 171-class "
                                    "maps; make them with `ovss prepare coco-stuff171 --src <coco_stuff164k>`")
        raw = read_label(path)
    else:
        raw = dataset.load_label(i)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = raw.astype(np.int32)  # PIL mode "I"
    label = np.asarray(resize_center_crop(Image.fromarray(raw), size, Image.NEAREST))
    return image, cliptrase_label(label, dataset.num_classes, dataset.ignore_index,
                                  bool(getattr(dataset, "background", False)), coco_stuff)


def markdown_table(results: dict[str, Any]) -> str:
    """The mmseg-style per-class IoU/Acc table plus the summary line."""
    m = results["metrics"]
    s = results["settings"]
    lines = [
        f"# {s.get('method')} on {results['dataset']}",
        "",
        f"backbone `{s.get('backbone')}`, preset `{s.get('preset')}`, {m['num_images']} images"
        + (f", protocol {results['protocol']} ({s.get('protocol_size')} px center crop, "
           f"{m.get('skipped_images', 0)} images skipped)" if results.get("protocol", "mmseg") == "cliptrase" else "")
        + (", protocol mlmp (labels resized to the squashed image size)" if results.get("protocol") == "mlmp" else ""),
        "",
        "| class | IoU | Acc |",
        "|---|---|---|",
    ]
    for name, iou, acc in zip(results["class_names"], m["IoU"], m["Acc"]):
        lines.append(f"| {name} | {_fmt(iou)} | {_fmt(acc)} |")
    lines += ["", "| aAcc | mIoU | mAcc |", "|---|---|---|",
              f"| {_fmt(m['aAcc'])} | {_fmt(m['mIoU'])} | {_fmt(m['mAcc'])} |", ""]
    if "fwIoU" in m:
        lines[-1:] = [f"fwIoU {_fmt(m['fwIoU'])}; mIoU over the classes present in the ground truth", ""]
    return "\n".join(lines)


def summary_table(rows: list[tuple[str, dict[str, Any]]], skipped: list[tuple[str, str]] = ()) -> str:
    """One line per method: mIoU, mAcc, aAcc (several methods on one dataset), then the skipped."""
    first = rows[0][1]
    s = first["settings"]
    lines = [f"# {first['dataset']}: {first['metrics']['num_images']} images, backbone `{s.get('backbone')}`", "",
             "| method | preset | mIoU | mAcc | aAcc |", "|---|---|---|---|---|"]
    for name, r in rows:
        m = r["metrics"]
        lines.append(f"| {name} | {r['settings'].get('preset')} | {_fmt(m['mIoU'])} | {_fmt(m['mAcc'])} | "
                     f"{_fmt(m['aAcc'])} |")
    if skipped:
        lines += ["", "Skipped:"] + [f"- {name}: {why}" for name, why in skipped]
    return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.2f}"
