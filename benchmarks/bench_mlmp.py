"""MLMP with and without adaptation: mIoU, seconds per image and peak memory.

    PYTHONPATH=src python benchmarks/bench_mlmp.py [--root /tmp/synthetic-val] [--limit 100] [--vitb]

Part 1, the synthetic validation split with the shipped `tiny-synthetic` CLIP, through the command
users run (`python -m ovss eval --dataset synthetic-scenes --backbone tiny-synthetic --method M
[--set KEY=VALUE]`, one process per row, its first `--limit` images):
    mlmp                 the method as registered (10 Adam steps per image, 18 levels = all 4 blocks)
    mlmp --set tta=      the same readout without adaptation
    naclip               the base segmenter MLMP adapts (with its PAMR), for scale
Seconds per image: the evaluation loop's time (results.json "seconds") over the images; peak
memory: the row's process's peak resident set (os.wait4's ru_maxrss: weights, runtime and all).

Part 2 (`--vitb`), ViT-B/16-sized random weights (timing and memory do not depend on the values)
on one 500x375 image, in this process: MLMP's own protocol (224 x 224, one window) and the
standard one (short side 336, 224/112 windows: 6 windows), each without adaptation, with it, and
with it keeping every block's activations (`checkpoint=False`, no recomputation):
seconds per image (median of `--repeats`) and the growth of the peak resident set during a call
above the resident set before it (/proc/self/clear_refs, after malloc_trim; the loaded weights
are not counted), and the ratio adapted / not adapted.

Writes benchmarks/results/mlmp.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import peak_mb  # the resident-set measure the other benchmarks use

ROWS = [("mlmp", []), ("mlmp", ["--set", "tta="]), ("naclip", [])]


def eval_row(method: str, extra: list[str], root: Path, limit: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-mlmp-"))
    cmd = [sys.executable, "-m", "ovss", "eval", "--dataset", "synthetic-scenes", "--root", str(root),
           "--method", method, "--backbone", "tiny-synthetic", "--limit", str(limit), "--out", str(out), "--quiet",
           *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    res = json.loads((out / "results.json").read_text())
    n = res["metrics"]["num_images"]
    return {"command": "python -m ovss eval --dataset synthetic-scenes --backbone tiny-synthetic "
                       f"--method {method} --limit {limit}" + (" " + " ".join(extra) if extra else ""),
            "method": method, "tta": "off" if extra else ("on" if method == "mlmp" else "-"),
            "mIoU": res["mIoU"], "mAcc": res["mAcc"], "aAcc": res["aAcc"], "images": n,
            "seconds_per_image": res["seconds"] / n, "process_seconds": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def vitb_rows(repeats: int) -> list[dict]:
    import dataclasses

    from ovss.backbones.clip import CLIP
    from ovss.backbones.configs import ARCHS
    from ovss.backbones.factory import LoadedClip
    from ovss.core.segmenter import Segmenter
    from ovss.text.tokenizer import Tokenizer

    vocab = ROOT / "src/ovss/data/assets/tiny_synthetic/bpe_vocab.txt.gz"
    torch.manual_seed(0)
    arch = ARCHS["ViT-B-16"]
    n_vocab = Tokenizer.from_file(vocab).vocab_size
    cfg = dataclasses.replace(arch, text=dataclasses.replace(arch.text, vocab_size=n_vocab))
    clip = LoadedClip(model=CLIP(cfg).eval(), tokenizer_dir=None, pretrained=None, weights_id="bench-random")
    weights_mb = sum(p.numel() * p.element_size() for p in clip.model.parameters()) / 2**20
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    classes = "sky, grass, water, sand, brick wall|wall, snow, road, circle, square, triangle, star"
    rows = []
    for preset, label in (("voc20", "MLMP protocol (224 x 224, 1 window)"),
                          ("voc20-standard", "standard protocol (short side 336, 224/112 windows: 6)")):
        pair = []
        for tta in ("", None, "mlmp:checkpoint=False"):
            over = {} if tta is None else {"tta": tta}
            seg = Segmenter("mlmp", preset=preset, device="cpu", clip=clip, tokenizer=vocab, overrides=over,
                            text_cache_dir="/tmp/ovss-bench-text")
            seg(image, classes)  # warm-up (text bank, first-call costs)
            mem = peak_mb(lambda seg=seg: seg(image, classes, keep_image=False))
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                seg(image, classes, keep_image=False)
                times.append(time.perf_counter() - t)
            how = {"": "off", None: "on", "mlmp:checkpoint=False": "on, activations kept (checkpoint=False)"}[tta]
            pair.append({"what": f"ViT-B/16 random, 500x375 image, {label}, adaptation {how}",
                         "seconds": statistics.median(times), "seconds_min": min(times), "peak_mb": mem,
                         "total_mb": None if mem is None else mem + weights_mb})
        off = pair[0]
        for on in pair[1:]:
            on["time_ratio"] = on["seconds"] / off["seconds"]
            on["memory_ratio"] = None if not on["peak_mb"] or not off["peak_mb"] else on["peak_mb"] / off["peak_mb"]
            on["total_ratio"] = None if on["total_mb"] is None else on["total_mb"] / off["total_mb"]
        rows += pair
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "ovss-synthetic-val")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--vitb", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-name", default="mlmp")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ovss.data import ensure_synthetic

    ensure_synthetic(args.root, n=200)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.machine(),
           "python": platform.python_version()}
    rows = [eval_row(m, extra, args.root, args.limit) for m, extra in ROWS]
    big = vitb_rows(args.repeats) if args.vitb else []

    lines = ["# MLMP with and without test-time adaptation", "",
             f"Command: `PYTHONPATH=src python benchmarks/bench_mlmp.py --limit {args.limit}"
             + (" --vitb" if args.vitb else "") + "`", "", f"Environment: {json.dumps(env)} (CPU, a shared machine: "
             "timings are indicative)", "",
             f"## synthetic-scenes validation split, first {args.limit} images, `tiny-synthetic` backbone", "",
             "| method | adaptation | mIoU | mAcc | aAcc | s / image | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['tta']} | {r['mIoU']:.2f} | {r['mAcc']:.2f} | {r['aAcc']:.2f} | "
                     f"{r['seconds_per_image']:.3f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Rows: " + "; ".join(f"`{r['command']}`" for r in rows) + ". mmseg metric on the full-size labels "
              "(the default recipe: the tiny model's 96 px, whole image). Peak RSS is the whole process's (Python, "
              "torch, weights)."]
    if big:
        lines += ["", "## ViT-B/16-sized random weights, one 500x375 image (`mlmp` presets voc20 / voc20-standard)", "",
                  "| what | s / image (median) | s (min) | peak MB above the loaded model | with the weights | "
                  "adapted / not: time | adapted / not: memory above the model | with the weights |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in big:
            tr = f"{r['time_ratio']:.1f}x" if "time_ratio" in r else "-"
            mr = f"{r['memory_ratio']:.2f}x" if r.get("memory_ratio") else "-"
            ta = f"{r['total_ratio']:.2f}x" if r.get("total_ratio") else "-"
            pm = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
            tm = "-" if r["total_mb"] is None else f"{r['total_mb']:.0f}"
            lines.append(f"| {r['what']} | {r['seconds']:.2f} | {r['seconds_min']:.2f} | {pm} | {tm} | {tr} | {mr} | "
                         f"{ta} |")
        lines += ["", "\"With the weights\": the peak above the loaded model plus the model's parameters "
                  f"({big[0]['total_mb'] - big[0]['peak_mb']:.0f} MB, image and text towers, float32)."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.out_name}.md").write_text(text)
    (out / f"{args.out_name}.json").write_text(json.dumps({"environment": env, "synthetic": rows, "vitb": big},
                                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
