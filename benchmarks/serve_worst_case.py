"""`ovss serve` at its default limits: the time of the largest request they allow, and the server's
peak memory when every slot holds one while slow clients hold connections.

    python benchmarks/serve_worst_case.py [--backbone tiny-synthetic] [--flood 17] [--slow 32]

The largest request: a 5000 x 5000 image (25 megapixels, the pixel bound) as a PNG of just under
20 MiB (the upload bound), with 300 class names (the class bound) of 200 letters each (the
length bound), none seen before, so all 300 x 80 prompts are encoded; default method. It is sent
twice (the second time with its names cached). `--flood N` then sends N such
requests at once (distinct class lists), after `--slow` raw sockets on 127.0.0.1 started uploads
they never finish. The server's peak resident set is its VmHWM (Linux /proc). Loopback only.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def largest_png(max_bytes: int = 20 * 2**20, side: int = 5000) -> bytes:
    """A 25-megapixel PNG just under 20 MiB: flat regions, with noise in as many rows as fit."""
    rng = np.random.default_rng(0)
    a = np.zeros((side, side, 3), np.uint8)
    a[: side // 2] = (120, 160, 200)
    a[side // 2 :] = (90, 140, 60)
    a[side // 4 : 3 * side // 4, side // 3 : 2 * side // 3] = (180, 80, 70)
    noise = rng.integers(0, 8, (side, side, 3), dtype=np.uint8)

    def encode(rows: int) -> bytes:
        b = a.copy()
        b[:rows] += noise[:rows]
        buf = io.BytesIO()
        Image.fromarray(b).save(buf, format="PNG")
        return buf.getvalue()

    lo, hi = 0, side  # bisect the number of noisy rows
    best = encode(0)
    for _ in range(8):
        mid = (lo + hi) // 2
        data = encode(mid)
        if len(data) <= max_bytes:
            lo, best = mid, data
        else:
            hi = mid
    return best


def class_list(seed: int, n: int = 300, length: int = 200) -> str:
    rng = random.Random(seed)
    return ", ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(length)) for _ in range(n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="tiny-synthetic")
    ap.add_argument("--flood", type=int, default=17, help="largest requests sent at once (0: none)")
    ap.add_argument("--slow", type=int, default=32, help="slow uploads held open meanwhile")
    ap.add_argument("--port", type=int, default=18765)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ovss-worst-"))
    backbone = args.backbone
    env = dict(os.environ, OVSS_CACHE=str(tmp / "cache"))
    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, "-m", "ovss", "serve", "--backbone", backbone, "--device", "cpu",
           "--port", str(args.port), "--log-level", "warning"]
    log = open(tmp / "serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        image = largest_png()
        with Image.open(io.BytesIO(image)) as im:
            print(f"image {im.size[0]}x{im.size[1]}, {len(image) / 2**20:.2f} MiB PNG; 300 names x 200 letters")
        small = io.BytesIO()
        Image.new("RGB", (64, 64), (100, 150, 200)).save(small, format="PNG")
        httpx.post(url + "/segment", files={"image": ("s.png", small.getvalue())}, data={"classes": "cat"},
                   timeout=600).raise_for_status()  # warm: every lazy import done
        idle = proc_mb(server.pid, "VmRSS")
        print(f"server RSS idle (after a warm-up request): {idle:.0f} MiB")

        def one(seed: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            r = httpx.post(url + "/segment", files={"image": ("big.png", image)}, data={"classes": class_list(seed)},
                           timeout=900)
            return r.status_code, time.perf_counter() - t0

        code, seconds = one(0)
        print(f"largest request: HTTP {code} in {seconds:.1f} s; server peak RSS {proc_mb(server.pid, 'VmHWM'):.0f} MiB")
        code, seconds = one(0)
        print(f"same request again (class list cached): HTTP {code} in {seconds:.1f} s")

        if args.flood:
            socks = []
            for _ in range(args.slow):
                s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
                s.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                          b"Content-Length: 1000000\r\n\r\n--b\r\n")
                socks.append(s)
            stop = threading.Event()

            def drip() -> None:
                while not stop.wait(1.0):
                    for s in socks:
                        try:
                            s.send(b"a")
                        except OSError:
                            pass

            dripper = threading.Thread(target=drip, daemon=True)
            dripper.start()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.flood) as ex:
                results = list(ex.map(one, range(1, args.flood + 1)))
            wall = time.perf_counter() - t0
            stop.set()
            dripper.join(5)
            for s in socks:
                s.close()
            codes = [c for c, _ in results]
            print(f"flood: {args.flood} largest requests at once with {args.slow} slow uploads open: "
                  f"{codes.count(200)} x 200, {len(codes) - codes.count(200)} other ({sorted(set(codes))}) in "
                  f"{wall:.0f} s (slowest answer {max(t for _, t in results):.0f} s)")
            print(f"server peak RSS over the whole run: {proc_mb(server.pid, 'VmHWM'):.0f} MiB; "
                  f"RSS now {proc_mb(server.pid, 'VmRSS'):.0f} MiB")
    finally:
        server.terminate()
        server.wait(30)
        log.close()


if __name__ == "__main__":
    main()
