"""Reduced-precision inference (issue 23): float32 vs bfloat16 seconds per image, and SDPA vs the
explicit attention of the untouched blocks.

    python benchmarks/bench_dtype.py [--repeats 5] [--device cpu] [--dtype bfloat16] [--threads N]

Rows (ViT-B/16-sized RANDOM weights, as benchmarks/bench_inference.py builds them; the cost does
not depend on the values):
- naclip (default recipe, no PAMR: `refiners=` cleared) on a 500x375 image, seconds per image in
  float32 and in `--dtype`, their calls alternating in one process; the ratio is dtype / float32;
- the first image with 21 classes x 80 templates (a cold text bank, no disk cache), both dtypes;
- the 11 untouched blocks on the 224x224 windows of that image, attention through
  F.scaled_dot_product_attention (today's default) vs the explicit softmax((q s) k^T) v path;
- the max abs difference of SDPA vs explicit attention on the golden CLIP
  (tests/golden/clip_small.safetensors), on the blocks' outputs.
Writes benchmarks/results/dtype.md (the agreement table of benchmarks/agree_dtype.py is appended
there by that script).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ovss.backbones.clip import CLIP
from ovss.backbones.configs import ARCHS
from ovss.backbones.factory import LoadedClip
from ovss.core.precision import autocast, resolve_dtype
from ovss.core.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests/golden/tokenizer/small_vocab.txt.gz"
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
               "train", "tv monitor"]


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def alternate(fns: dict, repeats: int) -> dict:
    """{name: [seconds]} of each call, the calls alternating after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def explicit_blocks(visual, x):
    """Blocks 0..L-2 with every block's attention explicit (keep="attn")."""
    tokens, _ = visual.embed(x)
    for blk in visual.blocks[:-1]:
        tokens, _ = blk(tokens, keep=frozenset({"attn"}))
    return tokens


def sdpa_blocks(visual, x):
    tokens, _ = visual.embed(x)
    for blk in visual.blocks[:-1]:
        tokens = blk(tokens)
    return tokens


def golden_sdpa_diff() -> float:
    from ovss.backbones.factory import create_clip

    clip = create_clip(str(ROOT / "tests/golden/clip_small.safetensors"), device="cpu")
    v = clip.model.visual.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = sdpa_blocks(v, x), explicit_blocks(v, x)
    return float((a - b).abs().max())


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dtype.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    low = resolve_dtype(args.dtype, device)
    low_name = str(low).removeprefix("torch.")
    torch.manual_seed(0)
    model = CLIP(ARCHS["ViT-B-16"]).eval().to(device)
    clip = LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="bench-random")
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    rows = []

    # first image: a cold text bank (21 x 80 prompts, no disk cache) + the image
    first = {}
    for name in ("float32", low_name):
        seg = Segmenter("naclip", device=device, clip=clip, tokenizer=VOCAB, dtype=name,
                        overrides={"refiners": ""})
        seg.text_bank.cache_dir = None
        t = time.perf_counter()
        seg(image, VOC_CLASSES, keep_image=False)
        first[name] = time.perf_counter() - t
    segs = {name: Segmenter("naclip", device=device, clip=clip, tokenizer=VOCAB, dtype=name,
                            overrides={"refiners": ""}, text_cache_dir="/tmp/ovss-bench-text")
            for name in ("float32", low_name)}
    times = alternate({k: (lambda s=s: s(image, VOC_CLASSES, keep_image=False)) for k, s in segs.items()},
                      args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}
    for k in segs:
        rows.append((f"naclip (no PAMR), 500x375 image, {k}: seconds per image", med[k], mins[k],
                     med[k] / med["float32"]))
    for k in segs:
        rows.append((f"first image, 21 classes x 80 templates (cold text bank), {k}", first[k], None,
                     first[k] / first["float32"]))

    # SDPA vs explicit attention in blocks 0..L-2, on the six 224x224 windows of that image
    x = segs["float32"].preprocess(image).x
    crops = torch.cat([x[..., :224, :224]] * 6)
    v = model.visual
    t = alternate({"explicit": lambda: explicit_blocks(v, crops), "sdpa": lambda: sdpa_blocks(v, crops)},
                  args.repeats)
    te, ts = statistics.median(t["explicit"]), statistics.median(t["sdpa"])
    rows.append(("blocks 1..11, 6 windows 224x224, float32, explicit softmax attention", te, min(t["explicit"]), 1.0))
    rows.append(("blocks 1..11, 6 windows 224x224, float32, F.scaled_dot_product_attention", ts, min(t["sdpa"]),
                 ts / te))
    with autocast(device, low):
        t = alternate({"explicit": lambda: explicit_blocks(v, crops), "sdpa": lambda: sdpa_blocks(v, crops)},
                      args.repeats)
    te, ts = statistics.median(t["explicit"]), statistics.median(t["sdpa"])
    rows.append((f"blocks 1..11, 6 windows 224x224, {low_name}, explicit softmax attention (float32 softmax)",
                 te, min(t["explicit"]), 1.0))
    rows.append((f"blocks 1..11, 6 windows 224x224, {low_name}, F.scaled_dot_product_attention", ts,
                 min(t["sdpa"]), ts / te))
    diff = golden_sdpa_diff()

    lines = ["| what | seconds (median) | seconds (min) | ratio |", "|---|---|---|---|"]
    for what, s, m, r in rows:
        lines.append(f"| {what} | {s:.3f} | {'-' if m is None else f'{m:.3f}'} | {r:.2f}x |")
    table = "\n".join(lines)
    note = (f"SDPA vs explicit attention, golden CLIP (tests/golden/clip_small.safetensors), blocks 0..L-2 on "
            f"two random 224x224 inputs, float32: max abs diff {diff:.2e}")
    print(table)
    print(note)
    cmd = (f"python benchmarks/bench_dtype.py --repeats {args.repeats} --device {args.device} --dtype {args.dtype}"
           + (f" --threads {args.threads}" if args.threads else ""))
    env = (f"CPU: {cpu_model()} ({'bf16 native: yes' if 'bfloat16' == str(resolve_dtype('auto', torch.device('cpu'))).removeprefix('torch.') else 'bf16 native: no'}, "
           f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads, device {args.device}")
    text = (f"# Reduced-precision inference (ViT-B/16-sized random weights)\n\nCommand: `{cmd}`\n\n{env}\n\n"
            f"Ratios: against the float32 row above them, measured in the same process with the calls "
            f"alternating.\n\n{table}\n\n{note}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else ""
    keep = old[old.index("## Agreement"):] if "## Agreement" in old else ""
    args.out.write_text(text + ("\n" + keep if keep else ""))


if __name__ == "__main__":
    main()
