"""Agreement of reduced-precision inference with float32 (issue 23) on the synthetic validation
split with the shipped `tiny-synthetic` CLIP: for every offline method (no DINO), the share of
equal pixels of the label maps and the mIoU of each dtype, through `ovss eval` itself.

    python benchmarks/agree_dtype.py [--n 200] [--dtype bfloat16] [--methods maskclip,...]

Appends (replaces) the "## Agreement" section of benchmarks/results/dtype.md.
ResCLIP and SC-CLIP name ViT-B layers (RCS 5..8; SC-CLIP 8/3/3..9) that the 4-block tiny model
lacks; they run with those layers mapped onto it (`--set plugins=...` below).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
METHODS = "maskclip,sclip,clearclip,naclip,resclip,scclip,cliptrase,dense-clip"
TINY_SETS = {"resclip": ["plugins=rcs:layers=1|2+sfr"],
             "scclip": ["plugins=selfcal:pre_layer=2,post_layer=1,fuse_layers=1|2"]}


def run_eval(method: str, dtype: str, root: Path, out: Path, n: int) -> dict:
    cmd = [sys.executable, "-m", "ovss", "eval", "--dataset", "synthetic-scenes", "--root", str(root),
           "--method", method, "--backbone", "tiny-synthetic", "--device", "cpu", "--dtype", dtype,
           "--limit", str(n), "--synthetic-n", str(n), "--out", str(out), "--save-predictions", "--quiet"]
    for s in TINY_SETS.get(method, []):
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads((out / "results.json").read_text())["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dtype.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovss-agree-"))
    root = work / "val"
    rows = []
    for m in args.methods.split(","):
        res = {}
        for dt in ("float32", args.dtype):
            res[dt] = run_eval(m, dt, root, work / dt / m, args.n)
        a_dir, b_dir = work / "float32" / m / "predictions", work / args.dtype / m / "predictions"
        eq = tot = 0
        for p in sorted(a_dir.glob("*.png")):
            a, b = np.asarray(Image.open(p)), np.asarray(Image.open(b_dir / p.name))
            eq += int((a == b).sum())
            tot += a.size
        rows.append((m, 100 * eq / tot, res["float32"]["mIoU"], res[args.dtype]["mIoU"], len(list(a_dir.glob("*.png")))))
        print(rows[-1], flush=True)
    lines = [f"| method | equal pixels (%) | mIoU float32 | mIoU {args.dtype} | images |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {e:.3f} | {a:.2f} | {b:.2f} | {k} |" for m, e, a, b, k in rows]
    sets = "; ".join(f"{m}: `--set {' '.join(s)}`" for m, s in TINY_SETS.items())
    section = (f"## Agreement {args.dtype} vs float32 (tiny-synthetic, synthetic-scenes val)\n\n"
               f"Command: `python benchmarks/agree_dtype.py --n {args.n} --dtype {args.dtype}` (each row is "
               f"`ovss eval --dataset synthetic-scenes --backbone tiny-synthetic --method M --dtype D --limit {args.n} "
               f"--save-predictions`, the label maps compared pixel by pixel). Layer-mapped for the 4-block "
               f"model: {sets}.\n\n" + "\n".join(lines) + "\n")
    old = args.out.read_text() if args.out.exists() else ""
    head = old[:old.index("## Agreement")] if "## Agreement" in old else old + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + section)
    print(section)


if __name__ == "__main__":
    main()
