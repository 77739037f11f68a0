"""Inference speed: seconds per image and text-bank time, with ViT-B/16-sized random weights.

    python benchmarks/bench_inference.py [--repeats 3] [--device cpu]

Random weights are enough for timing (the cost does not depend on the values). Prints a Markdown
table and writes it, with the raw numbers, to benchmarks/results/inference.{md,json}.
Ratios compare variants measured in the same process, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ovss.backbones.clip import CLIP
from ovss.backbones.configs import ARCHS
from ovss.backbones.factory import LoadedClip
from ovss.backbones.tokenizer import Tokenizer
from ovss.pipeline import Segmenter
from ovss.text_bank import TextBank

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests/golden/tokenizer/small_vocab.txt.gz"  # any CLIP-format vocabulary times the same
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
               "train", "tv monitor"]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="dense-clip,maskclip")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = CLIP(ARCHS["ViT-B-16"]).eval().to(args.device)
    clip = LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="bench-random")
    tok = Tokenizer.from_file(VOCAB)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    rows = []
    for method in args.methods.split(","):
        for label, wb in (("windows batched", 32), ("one window at a time", 1)):
            seg = Segmenter(method, device=args.device, clip=clip, tokenizer=VOCAB,
                            overrides={"protocol.window_batch": wb}, text_cache_dir="/tmp/ovss-bench-text")
            seg(image, VOC_CLASSES)  # fills the text cache, so only the image path is timed
            s = timed(lambda: seg(image, VOC_CLASSES, keep_image=False), args.repeats)
            rows.append({"what": f"{method}: 500x375 image, {label}", "seconds": s})
        rows[-1]["ratio"] = rows[-1]["seconds"] / rows[-2]["seconds"]
        rows[-2]["ratio"] = 1.0

    prompts = len(VOC_CLASSES) * 80
    for label, crop in (("context cropped to the longest prompt", True), ("full 77-token context", False)):
        def run(crop=crop):
            TextBank(model, tok, "bench", "imagenet80", use_cache=False, crop_context=crop).encode_queries(VOC_CLASSES)
        rows.append({"what": f"text bank, 21 classes x 80 templates ({prompts} prompts), {label}",
                     "seconds": timed(run, args.repeats)})
    rows[-2]["ratio"], rows[-1]["ratio"] = 1.0, rows[-1]["seconds"] / rows[-2]["seconds"]

    env = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "repeats": args.repeats}
    lines = ["| what | seconds (median) | ratio to first of pair |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['seconds']:.3f} | {r['ratio']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"# Inference speed (ViT-B/16-sized random weights)\n\nCommand: `python benchmarks/bench_inference.py"
              f" --repeats {args.repeats} --device {args.device}`\n\nEnvironment: {json.dumps(env)}\n\n")
    (args.out / "inference.md").write_text(header + table + "\n")
    (args.out / "inference.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
