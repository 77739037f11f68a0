"""LPOSS+ as a refiner: against LPOSS's pixel propagation (graphs golden) and composed with other
methods from Python and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from measured import max_abs_diff
from PIL import Image
from safetensors.torch import load_file

from ovss.core.protocol import CLIP_MEAN, CLIP_STD
from ovss.refine import parse_refiner
from ovss.refine.lposs import LPOSSPlus

GOLDEN = Path(__file__).parents[1] / "golden" / "graphs_lposs.safetensors"


def test_matches_lposs_pixel_propagation():
    g = load_file(str(GOLDEN))
    img = g["pixel.image"]  # (1, 3, 20, 24) RGB in [0, 1]
    m = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    guide = (img * 255 - m) / s
    seeds = g["pixel.seeds"].reshape(20, 24, 5).permute(2, 0, 1)[None]
    out = LPOSSPlus(stage="full", mean=CLIP_MEAN, std=CLIP_STD)(seeds, guide)  # a float image: no rounding back to uint8
    ref = g["pixel.lp"].reshape(20, 24, 5).permute(2, 0, 1)[None]
    # the guide is the normalised image (float32 round trip), the output float32: 3.3e-5 measured
    # (scores <= 5.8) on an Intel Xeon (this machine), identical with OMP_NUM_THREADS=1, =2 and
    # torch.set_num_threads(1); the bound is 4.5x that
    diff = max_abs_diff(out, ref, "refine.lposs_plus.pixel_lp")
    assert diff < 1.5e-4, diff
    assert torch.equal(out.argmax(1), ref.argmax(1))


def _degree_as(G, order: str) -> None:
    """Replace G's degrees by float32 row sums taken in another order (offsets = column order)."""
    m = torch.stack([G._weights(o) for o in G.offsets]).reshape(len(G.offsets), -1).T.numpy()  # (N, offsets)
    deg = np.zeros(m.shape[0], dtype=np.float32)
    for i, row in enumerate(m):
        nz = row[row != 0]  # scipy's csr keeps no zeros after `W - diags(W.diagonal())`
        if order == "scipy" and len(nz):  # csr.sum(axis=1): np.add.reduceat over the row
            deg[i] = np.add.reduceat(nz, [0])[0]
        elif order == "sequential":  # one thread per row, left to right
            acc = np.float32(0)
            for v in nz:
                acc = np.float32(acc + v)
            deg[i] = acc
    d = torch.from_numpy(deg).reshape(G.h, G.w)
    d[d == 0] = 1
    G.dm = d.rsqrt()
    G._maps = [G._normalised(o) for o in G.offsets]


def test_degree_summation_order_is_within_the_references_own_ambiguity():
    """What separates ovss's LPOSS+ from the reference: the order of a float32 sum.

    LPOSS builds its pixel Laplacian in float32 (weights, degrees `W.sum(axis=1)`, D^-1/2, the
    products, alpha * Wn; only `eye(N) - ...` is float64), so its output depends, at ~1e-6
    relative, on the order its sparse library sums each row's degree in: cuSPARSE's on the GPU,
    numpy's pairwise `add.reduceat` in the golden's scipy stand-in. ovss rounds a float64 sum
    once (`graphs._row_sums`). Given the stand-in's degrees, ovss reproduces the golden to float64
    round-off (below); with another order the output moves by as much as ovss's own difference.
    Measured with the reference code itself (make_graphs_golden.py's stand-ins, a 30x40 image,
    seeds 10 N(0, 1), outputs up to 265): reference with numpy's order vs the same reference
    with the degrees summed sequentially in float32: 5.4e-4; vs the float64 sum rounded to
    float32: 3.2e-4; ovss vs the latter: 4.5e-13 on the CPU that made the golden. So the reference
    is only defined to ~2e-6 of its largest score here, and LPOSS+'s bound in
    tests/methods/test_lposs.py is that, not 1e-8.

    The float32 colour weights themselves (exp, the Lab conversion) round differently on other
    CPUs' vector kernels: on an Intel Xeon (this machine; the same with OMP_NUM_THREADS=1, =2 and
    torch.set_num_threads(1)) the stand-in's own order lands 2.2e-6 from the golden, ovss's 4.4e-6,
    the sequential order 4.4e-6. So every order is held to the same bound, 2.5e-5 (5.6x the largest
    measured), and no order is compared at float64 round-off.
    """
    from ovss.ops.graphs import PixelGraph, cg_solve, lab_guide

    g = load_file(str(GOLDEN))
    img, seeds, ref = g["pixel.image"][0], g["pixel.seeds"], g["pixel.lp"].double()
    diffs = {}
    for order in ("ovss", "scipy", "sequential"):
        G = PixelGraph(lab_guide(img), neigh=6, tau=0.01)
        if order != "ovss":
            _degree_as(G, order)
        z = cg_solve(G, seeds.double(), 0.95, 10)
        diffs[order] = max_abs_diff(z, ref, f"refine.lposs_plus.degree_order.{order}")
    assert max(diffs.values()) < 2.5e-5, diffs


def test_network_stage_output_is_resized_in_float64():
    """LPOSS+'s scores are float64 in the reference and so is its final resize; in float32 the
    source coordinates alone (ulp 3e-5 near column 400) move scores of ~100 by ~1e-3."""
    from ovss.core.resize import upsample, upsample_rows

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 24, 40, generator=g)
    guide = (img * 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    out = LPOSSPlus(r=5, mean=CLIP_MEAN, std=CLIP_STD)(torch.randn(1, 3, 24, 40, generator=g) * 10, guide[None])
    assert out.dtype == torch.float64
    x = torch.randn(4, 37, 53, generator=g, dtype=torch.float64) * 100
    ref = torch.nn.functional.interpolate(x[None], size=(200, 431), mode="bilinear", align_corners=False)[0]
    up = upsample(x, (200, 431))
    bands = torch.cat([b for _, _, b in upsample_rows(x, (200, 431), 7)], 1)
    assert up.dtype == bands.dtype == torch.float32  # the full-size tensor stays float32
    assert torch.equal(up, ref.float()) and torch.equal(bands, ref.float())
    assert (upsample(x.float(), (200, 431)).double() - ref).abs().max() > 1e-4


def test_parse_and_stage():
    r = parse_refiner("lposs_plus:alpha=0.9,r=7,stage=full")
    assert r == LPOSSPlus(alpha=0.9, r=7, stage="full")


def test_naclip_refined_by_lposs_plus_from_python(tiny_clip_dir):
    from ovss.core.segmenter import Segmenter

    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    base = Segmenter("naclip", backbone=str(tiny_clip_dir / "model.safetensors"), device="cpu",
                     overrides={"refiners": "", "protocol.short_side": None, "protocol.crop": 0})
    both = Segmenter("naclip", backbone=str(tiny_clip_dir / "model.safetensors"), device="cpu",
                     overrides={"refiners": "lposs_plus:r=5", "protocol.short_side": None, "protocol.crop": 0})
    a = base.logits(img, "cat, dog, sky")
    b = both.logits(img, "cat, dog, sky")
    assert a.shape == b.shape and not torch.allclose(a, b)
    res = both(img, "cat, dog, sky")
    assert res.labels.shape == (40, 56)


def test_naclip_refined_by_lposs_plus_from_cli(tiny_clip_dir, tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "ovss", "segment", str(p), "--classes", "cat, dog", "--method",
                        "naclip", "--backbone", str(tiny_clip_dir / "model.safetensors"), "--out", str(out),
                        "--set", "refiners=pamr+lposs_plus:r=5", "--save", "index,json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "a.json").read_text())
    assert "LPOSSPlus(" in json.dumps(meta["recipe"]["refiners"]) and "PAMR(" in json.dumps(meta["recipe"]["refiners"])
