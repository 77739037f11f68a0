"""Peak memory of one large image through the public API, against a small one.

    python benchmarks/bench_memory.py [--sizes 8000x6000,1000x750] [--method maskclip]
        [--backbone tiny-synthetic] [--threads 2] [--out-name memory]

Each size runs in a fresh Python process: it loads the model, segments a small warm-up image (so
one-time allocations are paid), resets its peak resident set to the current one (Linux:
/proc/self/clear_refs), then segments a JPEG of the given size (a smooth photo-like pattern with
noise, written to a temporary folder) through `ovss.load(METHOD, backbone=BACKBONE)(path, classes)`
and reports the resident set before the call and the peak during it (VmHWM). Then the command
line does the same job (`ovss segment IMAGE --classes ... --out TMP`: decode, segment, write the
index PNG, the overlay and the JSON) and its whole process's peak (ru_maxrss of the child) is
reported too. Linux only. The Markdown table and the raw numbers go to
benchmarks/results/<out-name>.{md,json}.

The target (issue 21): an 8000x6000 image within 2x the peak of a 1000x750 one. What remains is
the image itself and what the result holds at full size (the RGB array, the int32 label map),
not a float copy of the image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import ctypes, json, sys, time
    import numpy as np
    import torch

    torch.set_num_threads(int(sys.argv[4]))
    import ovss

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB

    path, method, backbone = sys.argv[1], sys.argv[2], sys.argv[3]
    classes = ["sky", "grass", "water", "sand", "brick wall", "snow", "road"]
    seg = ovss.load(method, backbone=backbone, device="cpu")
    seg(np.zeros((96, 128, 3), np.uint8), classes)  # warm-up: kernels, text bank
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the warm-up freed is not counted below
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    before = status("VmRSS")
    t = time.perf_counter()
    result = seg(path, classes)
    seconds = time.perf_counter() - t
    print(json.dumps({"before_mb": before, "peak_mb": status("VmHWM"), "seconds": seconds,
                      "labels": list(result.labels.shape)}))
""")


CLASSES = "sky, grass, water, sand, brick wall, snow, road"


def make_image(path: Path, h: int, w: int) -> None:
    """A photo-like JPEG (smooth colour gradients + noise) of h x w pixels, written in bands."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.new("RGB", (w, h))
    band = max(1, (32 << 20) // (w * 3))
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    for y0 in range(0, h, band):
        y = np.linspace(y0 / h, min(h, y0 + band) / h, min(band, h - y0), dtype=np.float32)[:, None, None]
        base = np.concatenate([x * 200 + 30 + 0 * y, y * 180 + 40 + 0 * x, (x + y) * 90 + 20], axis=2)
        noise = rng.normal(0, 12, base.shape).astype(np.float32)
        im.paste(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)), (0, y0))
    im.save(path, quality=90)


def main() -> None:
    if sys.argv[1:2] == ["--make-image"]:
        make_image(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8000x6000,1000x750", help="WIDTHxHEIGHT,... (the first is the large one)")
    ap.add_argument("--method", default="maskclip")
    ap.add_argument("--backbone", default="tiny-synthetic")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-name", default="memory")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            path = Path(tmp) / f"{w}x{h}.jpg"
            # made in a child process: a forked child's ru_maxrss starts from this process's size
            subprocess.run([sys.executable, __file__, "--make-image", str(path), str(h), str(w)], check=True)
            r = subprocess.run([sys.executable, "-c", CHILD, str(path), args.method, args.backbone,
                                str(args.threads)], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                sys.exit(f"{size}: the child process failed:\n{r.stderr[-3000:]}")
            row = {"size": f"{w}x{h}", "megapixels": w * h / 1e6, **json.loads(r.stdout.strip().splitlines()[-1])}
            cli = subprocess.Popen([sys.executable, "-m", "ovss", "segment", str(path), "--classes", CLASSES,
                                    "--method", args.method, "--backbone", args.backbone, "--device", "cpu",
                                    "--out", str(Path(tmp) / "out"), "--quiet"],
                                   env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(cli.pid, 0)
            if status != 0:
                sys.exit(f"{size}: ovss segment failed:\n{cli.stderr.read().decode()[-3000:]}")
            row["cli_peak_mb"] = usage.ru_maxrss / 1024
            rows.append(row)
    big, small = rows[0], rows[-1]
    ratio = big["peak_mb"] / small["peak_mb"]
    cpu = platform.processor() or platform.machine()
    lines = [
        (f"Peak resident memory of `ovss.load({args.method!r}, backbone={args.backbone!r})(image.jpg, 7 classes)`, "
         f"one fresh process per image, {args.threads} torch threads, CPU ({cpu})."),
        "",
        (f"Command: `python benchmarks/bench_memory.py --sizes {args.sizes} --method {args.method} "
         f"--backbone {args.backbone} --threads {args.threads}`"),
        "",
        ("| image | megapixels | API: RSS before the call (MB) | API: peak RSS during the call (MB) | API: seconds "
         "| CLI: process peak RSS (MB) |"),
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['megapixels']:.2f} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['seconds']:.2f} | {r['cli_peak_mb']:.0f} |")
    lines += ["", (f"API: peak of {big['size']} / peak of {small['size']}: **{ratio:.2f}x** (target: within 2x); "
                   f"CLI: {big['cli_peak_mb'] / small['cli_peak_mb']:.2f}x.")]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.out_name}.md").write_text(table)
    (out / f"{args.out_name}.json").write_text(json.dumps({"args": vars(args), "rows": rows, "ratio": ratio},
                                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
