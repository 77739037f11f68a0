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
def cli(capsys):
    """`ovss ...` in this process (the same `main` the command runs; no interpreter start-up)."""
    from ovss.apps.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, usage errors
            rc = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    return run


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
    assert r.returncode == 1 and "bad.png" in r.stderr and "damaged PNG" in r.stderr and "Traceback" not in r.stderr
    failed = json.loads((tmp_path / "o" / "failures.json").read_text())["images"]
    assert [Path(f["image"]).name for f in failed] == ["bad.png"]


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


def _img(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _cut_qoi(path):
    """A QOI file cut short (Pillow's decoder raises a bare IndexError on it), whatever its name."""
    import io

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).integers(0, 4, (50, 60, 3)) * 60).astype(np.uint8)).save(buf, "QOI")
    path.write_bytes(buf.getvalue()[:22])


def test_segment_colliding_names_failures_and_retry(cli, tiny_clip_dir, tmp_path):
    """dirA/img.png and dirB/img.png (and a.png, a.jpg, a_png.jpg) each get their own results; bad
    files are listed with reasons and skipped, the rest is done, and a re-run retries only them."""
    a, b = tmp_path / "dirA", tmp_path / "dirB"
    _img(a / "img.png", 30, 40, 1)
    _img(b / "img.png", 50, 20, 2)
    _img(a / "a.png", 31, 41, 3)
    _img(a / "a.jpg", 32, 42, 4)
    _img(a / "a_png.jpg", 33, 43, 5)
    _img(a / "big.png", 150, 200, 6)  # 30000 pixels: over --max-pixels 20000
    (a / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    if "QOI" in Image.SAVE:
        _cut_qoi(b / "cut.jpg")
    else:
        (b / "cut.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 40)
    out = tmp_path / "out"
    args = ["segment", a, b, "--classes", "cat, dog", "--backbone", tiny_clip_dir / "model.safetensors",
            "--out", out, "--device", "cpu"]
    r = cli(*args, "--max-pixels", "20000")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    sizes = {}
    for name in ["dirA/img", "dirB/img", "dirA/a.png", "dirA/a.jpg", "dirA/a_png"]:
        meta = json.loads((out / f"{name}.json").read_text())
        sizes[name] = tuple(meta["image_size"])
        assert Image.open(out / f"{name}.png").size == sizes[name][::-1]
        assert (out / f"{name}_overlay.png").exists()
    assert sizes == {"dirA/img": (30, 40), "dirB/img": (50, 20), "dirA/a.png": (31, 41), "dirA/a.jpg": (32, 42),
                     "dirA/a_png": (33, 43)}
    assert json.loads((out / "dirA/a.png.json").read_text())["image"].endswith("a.png")
    failed = json.loads((out / "failures.json").read_text())
    reasons = {Path(f["image"]).name: f["error"] for f in failed["images"]}
    assert set(reasons) == {"big.png", "broken.png", "cut.jpg"} and failed["of"] == 8
    assert "over the limit of 20,000" in reasons["big.png"] and "broken.png" in reasons["broken.png"]
    assert "cut.jpg" in reasons["cut.jpg"]
    assert "wrote 5 image(s)" in r.stdout and "3 failed" in r.stdout
    # the bad files fixed, the limit lifted: only they are (re)done
    _img(a / "broken.png", 20, 20, 7)
    _img(b / "cut.jpg", 21, 21, 8)
    before = (out / "dirA/img.png").stat().st_mtime_ns
    r = cli(*args, "--max-pixels", "0")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 image(s)" in r.stdout and "skipped 5" in r.stdout
    assert not (out / "failures.json").exists()
    assert (out / "dirA/img.png").stat().st_mtime_ns == before
    assert json.loads((out / "dirB/cut.json").read_text())["image_size"] == [21, 21]


def test_segment_redoes_images_made_with_other_settings(cli, tiny_clip_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    args = [image_folder / "a.jpg", "--classes", "cat, dog", "--backbone", tiny_clip_dir / "model.safetensors",
            "--out", out, "--device", "cpu"]
    r = cli("segment", *args)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "a.json").read_text())["method"] == "maskclip"
    r = cli("segment", *args, "--method", "dense-clip", "--set", "protocol.crop=0")
    assert r.returncode == 0, r.stderr
    assert "already done" not in r.stdout and "redid 1" in r.stdout
    assert 'redoing a: made with other settings: method "maskclip" -> "dense-clip", set {} -> {"protocol.crop": 0}' \
        in r.stderr
    meta = json.loads((out / "a.json").read_text())
    assert meta["method"] == "dense-clip" and meta["recipe"]["protocol"]["crop"] == 0


def test_errors_before_any_work(cli, tmp_path, monkeypatch):
    """An unusable --out, or a class file that is not UTF-8, is a clear error before the model is
    looked at (the backbone here does not even exist) and before any image is read."""
    img = tmp_path / "x.png"
    _img(img, 8, 8)
    nowhere = tmp_path / "no" / "model.safetensors"
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in [(afile, "is a file, not a folder"), (afile / "sub", "a part of that path is a file")]:
        r = cli("segment", img, "--classes", "cat", "--backbone", nowhere, "--out", out)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert str(out) in r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: make the write test fail as it would
        import tempfile

        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    r = cli("segment", img, "--classes", "cat", "--backbone", nowhere, "--out", ro)
    assert r.returncode == 2 and f"--out {ro} is not writable (Permission denied)" in r.stderr
    monkeypatch.undo()
    cls = tmp_path / "klassen.txt"
    cls.write_bytes("katze\nk\xe4fer\n".encode("latin-1"))
    r = cli("segment", img, "--classes-file", cls, "--backbone", nowhere, "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "klassen.txt is not UTF-8 text: byte 0xe4 on line 2" in r.stderr
    r = cli("eval", "--dataset", "synthetic-scenes", "--root", tmp_path / "s", "--backbone", nowhere,
             "--out", afile)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and not (tmp_path / "s").exists()


def test_segment_help_states_the_naming_rule(cli):
    r = cli("segment", "--help")
    assert "dirA/img" in r.stdout and "a.png.png" in r.stdout and "failures.json" in r.stdout
