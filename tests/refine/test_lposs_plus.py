"""LPOSS+ as a refiner: against LPOSS's pixel propagation (graphs golden) and composed with other
methods from Python and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ovss.inference import CLIP_MEAN, CLIP_STD
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
    out = LPOSSPlus(stage="full")(seeds, guide)  # a float image: no rounding back to uint8
    ref = g["pixel.lp"].reshape(20, 24, 5).permute(2, 0, 1)[None]
    # the guide is the normalised image (float32 round trip), the output float32: 2.3e-5 here
    assert (out.double() - ref).abs().max().item() < 1e-4
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_parse_and_stage():
    r = parse_refiner("lposs_plus:alpha=0.9,r=7,stage=full")
    assert r == LPOSSPlus(alpha=0.9, r=7, stage="full")


def test_naclip_refined_by_lposs_plus_from_python(tiny_clip_dir):
    from ovss.pipeline import Segmenter

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
