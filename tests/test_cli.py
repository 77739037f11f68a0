"""The `ovss` command, run as a user runs it (a subprocess), on a tiny random checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def ovss(*args, env=None, cwd=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ovss", *map(str, args)], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=300)


@pytest.fixture
def image_folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, size in [("a.jpg", (60, 80)), ("b.png", (90, 70)), ("c.jpeg", (40, 40))]:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def test_segment_folder_writes_outputs_and_skips_done(tiny_clip_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    weights = tiny_clip_dir / "model.safetensors"
    r = ovss("segment", image_folder, "--classes", "cat, sofa|couch, wooden floor", "--method", "maskclip",
             "--backbone", weights, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for stem, (h, w) in [("a", (60, 80)), ("b", (90, 70)), ("c", (40, 40))]:
        index = Image.open(out / f"{stem}.png")
        assert index.mode == "P" and index.size == (w, h)
        assert np.asarray(index).max() <= 2
        assert Image.open(out / f"{stem}_overlay.png").mode == "RGB"
        meta = json.loads((out / f"{stem}.json").read_text())
        assert [c["name"] for c in meta["classes"]] == ["cat", "sofa", "wooden floor"]
        assert abs(sum(c["area"] for c in meta["classes"]) - 1) < 1e-6
        assert meta["method"] == "maskclip" and meta["image"].endswith(stem + Path(meta["image"]).suffix)
        assert len(meta["classes"][0]["color"]) == 3
    (out / "b.json").unlink()  # as if interrupted before b was finished
    before = (out / "a.png").stat().st_mtime_ns
    r = ovss("segment", image_folder, "--classes", "cat, sofa|couch, wooden floor", "--backbone", weights,
             "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "skipped 2" in r.stdout and (out / "b.json").exists()
    assert (out / "a.png").stat().st_mtime_ns == before


def test_segment_classes_file_and_overrides(tiny_clip_dir, image_folder, tmp_path):
    cls = tmp_path / "cls.txt"
    cls.write_text("sky, wall, tree\ncat\ndog\n")
    out = tmp_path / "out"
    r = ovss("segment", image_folder / "a.jpg", "--classes-file", cls, "--background", "--backbone",
             tiny_clip_dir / "model.safetensors", "--out", out, "--set", "attention=qq+kk",
             "--set", "surgery.residual=False", "--set", "decision.prob_thd=0.5", "--save", "index,json")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "a.json").read_text())
    assert meta["recipe"]["attention"] == "qq+kk" and meta["recipe"]["surgery"]["residual"] is False
    assert [c["name"] for c in meta["classes"]] == ["sky", "cat", "dog"]
    assert not (out / "a_overlay.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--classes", ""], "give the classes"),
    (["--classes", "cat, cat"], "duplicate"),
    (["--classes", "cat", "--method", "nope"], "unknown method 'nope'"),
    (["--classes", "cat", "--backbone", "clip-vit-b99"], "clip-vit-b16"),
    (["--classes", "cat", "--set", "protocol.nope=1"], "protocol.nope"),
])
def test_segment_bad_input_is_a_clear_error(tiny_clip_dir, image_folder, tmp_path, args, message):
    if "--backbone" not in args:
        args = [*args, "--backbone", tiny_clip_dir / "model.safetensors"]
    r = ovss("segment", image_folder, *args, "--out", tmp_path / "o")
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_segment_missing_and_corrupt_input(tiny_clip_dir, tmp_path):
    w = tiny_clip_dir / "model.safetensors"
    r = ovss("segment", tmp_path / "nope.jpg", "--classes", "cat", "--backbone", w, "--out", tmp_path / "o")
    assert r.returncode == 2 and "nope.jpg" in r.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = ovss("segment", bad, "--classes", "cat", "--backbone", w, "--out", tmp_path / "o")
    assert r.returncode == 2 and "bad.png" in r.stderr and "Traceback" not in r.stderr


def test_methods_lists_presets_with_sources():
    r = ovss("methods")
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["method", "presets"]  # one line per method, aligned
    assert sum(ln.split()[0] in ("maskclip", "dense-clip", "naclip") for ln in lines if ln.strip()) == 3
    assert len(lines) < 20
    v = ovss("methods", "maskclip")
    assert "maskclip:" in v.stdout and "defined in: ovss.methods.maskclip" in v.stdout
    assert "preset official-voc20" in v.stdout and "maskclip_vit16_512x512_voc12aug_20.py" in v.stdout
    assert "dense-clip:" in ovss("methods", "--verbose").stdout
    miss = ovss("methods", "zzz")
    assert miss.returncode != 0 and "no method matches 'zzz'" in miss.stderr
    data = json.loads(ovss("methods", "--json").stdout)
    assert data["maskclip"]["presets"]["official-context59"]["overrides"]["protocol.long_cap"] == 520


def test_backbones_lists_hub_locations():
    r = ovss("backbones")
    assert r.returncode == 0
    assert "clip-vit-b16" in r.stdout and "openai/clip-vit-base-patch16" in r.stdout
    lines = r.stdout.splitlines()
    # every family, in aligned columns: each row's family and architecture start where the header's do
    for name in ("dino-vitb8", "dinov2-vitb14-reg", "tiny-synthetic"):
        row = next(ln for ln in lines if ln.startswith(name + " "))
        for col in ("family", "architecture", "weights"):
            assert row[lines[0].index(col) - 1] == " " and row[lines[0].index(col)] != " ", (name, col)
    dino = ovss("backbones", "dino")
    assert dino.returncode == 0 and "dino-vitb8" in dino.stdout and "clip-vit-b16" not in dino.stdout
    miss = ovss("backbones", "zzz")
    assert miss.returncode != 0 and "no backbone matches 'zzz'" in miss.stderr


def test_download_offline_says_how(tmp_path):
    r = ovss("download", "clip-vit-b16", "--cache-dir", tmp_path / "hub",
             env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2
    assert "openai/clip-vit-base-patch16" in r.stderr and "ovss download" in r.stderr
