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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def evaluate(segmenter, dataset, out_dir: str | os.PathLike, classes: Any = None, background: bool = False,
             limit: int | None = None, save_predictions: bool = False, progress: bool = True,
             settings: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run `segmenter` over `dataset` and return (and write) the metrics; None on ranks > 0.

    Args:
        segmenter: an `ovss.pipeline.Segmenter`.
        dataset: a dataset with `class_names`, `num_classes`, `ignore_index`, `__len__`,
            `__getitem__(i).image_path/.name` and `load_label(i)`.
        classes: the text-side class list (any `parse_classes` form: e.g. a preset's class file
            with synonyms); default: the dataset's class names. Must have one entry per class.
        background: class 0 is background (it receives under-threshold pixels).
        limit: evaluate only the first `limit` images.
        save_predictions: also write each label map as an index PNG under `<out>/predictions/`.
        settings: extra settings recorded in the results and the fingerprint (e.g. the command).
    """
    from tqdm import tqdm

    from .io import save_index_png, write_json
    from .text_bank import parse_classes

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
    state_dir = out / ".state" / fingerprint(run)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / f"rank{dist.rank}.json"
    acc = IoUAccumulator(dataset.num_classes, dataset.ignore_index)
    done = 0
    if state_path.exists():
        state = json.loads(state_path.read_text())
        acc.load_state_dict(state["metric"])
        done = int(state["done"])
    pred_dir = out / "predictions"
    palette = getattr(dataset, "palette", None)
    bar = tqdm(indices, desc=f"eval {dataset.name}", unit="img", initial=done, total=len(indices),
               disable=not progress or dist.rank != 0, dynamic_ncols=True)
    start = time.perf_counter()
    for k, i in enumerate(indices):
        if k < done:
            continue
        sample = dataset[i]
        result = segmenter(sample.image_path, spec, keep_image=False)
        label = dataset.load_label(i)
        if result.labels.shape != label.shape:
            raise ValueError(f"{sample.name}: prediction {result.labels.shape} vs label {label.shape}")
        acc.update(result.labels, label)
        if save_predictions:
            save_index_png(result.labels, pred_dir / f"{sample.name}.png", palette)
        write_json({"done": k + 1, "metric": acc.state_dict()}, state_path)
        bar.update(1)
    bar.close()

    if dist.world > 1:
        import torch.distributed as tdist

        counts = torch.tensor(np.stack([acc.area_intersect, acc.area_union, acc.area_pred, acc.area_label]),
                              dtype=torch.int64)
        n_img = torch.tensor([acc.num_images], dtype=torch.int64)
        if tdist.get_backend() == "nccl":
            counts, n_img = counts.cuda(), n_img.cuda()
        tdist.all_reduce(counts)
        tdist.all_reduce(n_img)
        counts = counts.cpu().numpy()
        acc.area_intersect, acc.area_union, acc.area_pred, acc.area_label = counts
        acc.num_images = int(n_img.item())
    results = None
    if dist.rank == 0:
        metrics = acc.compute()
        results = {
            "dataset": dataset.name,
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


def markdown_table(results: dict[str, Any]) -> str:
    """The mmseg-style per-class IoU/Acc table plus the summary line."""
    m = results["metrics"]
    s = results["settings"]
    lines = [
        f"# {s.get('method')} on {results['dataset']}",
        "",
        f"backbone `{s.get('backbone')}`, preset `{s.get('preset')}`, {m['num_images']} images",
        "",
        "| class | IoU | Acc |",
        "|---|---|---|",
    ]
    for name, iou, acc in zip(results["class_names"], m["IoU"], m["Acc"]):
        lines.append(f"| {name} | {_fmt(iou)} | {_fmt(acc)} |")
    lines += ["", "| aAcc | mIoU | mAcc |", "|---|---|---|",
              f"| {_fmt(m['aAcc'])} | {_fmt(m['mIoU'])} | {_fmt(m['mAcc'])} |", ""]
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
