"""`ovss eval`: results files, resume after kill -9, and 2-process (gloo) evaluation."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ovss.data import ensure_synthetic


def run(args, **kw):
    return subprocess.run([sys.executable, "-m", "ovss", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "val"
    ensure_synthetic(root, n=24, size=48)
    return root


def eval_args(split, weights, out, *extra):
    return ["eval", "--dataset", "synthetic-scenes", "--root", split, "--method", "maskclip", "--backbone",
            weights, "--out", out, "--device", "cpu", "--quiet", *extra]


def metrics(out):
    r = json.loads((out / "results.json").read_text())
    return r["metrics"]


@pytest.fixture(scope="module")
def reference(split, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = run(eval_args(split, tiny_clip_dir / "model.safetensors", out))
    assert r.returncode == 0, r.stderr
    return out


def test_results_files(reference):
    m = metrics(reference)
    assert m["num_images"] == 24 and len(m["IoU"]) == 11
    md = (reference / "results.md").read_text()
    assert "| sky |" in md and "mIoU" in md


def test_resume_after_kill_gives_identical_results(split, tiny_clip_dir, tmp_path, reference):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ovss", *map(str, eval_args(
        split, tiny_clip_dir / "model.safetensors", out))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        files = list(out.glob(".state/*/rank0.json"))
        if files:
            try:
                state = json.loads(files[0].read_text())
            except (json.JSONDecodeError, OSError):
                state = None
            if state and state["done"] >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "results.json").exists()
    done_before = json.loads(next(out.glob(".state/*/rank0.json")).read_text())["done"]
    assert 3 <= done_before < 24
    r = run(eval_args(split, tiny_clip_dir / "model.safetensors", out))
    assert r.returncode == 0, r.stderr
    assert metrics(out) == metrics(reference)


def test_two_processes_equal_one(split, tiny_clip_dir, tmp_path, reference):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ovss",
           *map(str, eval_args(split, tiny_clip_dir / "model.safetensors", out))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert metrics(out) == metrics(reference)
    assert len(list(out.glob(".state/*/rank*.json"))) == 2


def test_several_methods_and_generated_split(tiny_clip_dir, tmp_path):
    root = tmp_path / "gen"
    r = run(["eval", "--dataset", "synthetic-scenes", "--root", root, "--synthetic-n", "3", "--method",
             "maskclip,dense-clip", "--backbone", tiny_clip_dir / "model.safetensors", "--out", tmp_path / "o",
             "--device", "cpu", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert (root / "classes.txt").exists() and len(list((root / "images").iterdir())) == 3
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "| maskclip |" in summary and "| dense-clip |" in summary


def test_wrong_layout_names_the_missing_file(tmp_path, tiny_clip_dir):
    r = run(["eval", "--dataset", "voc21", "--root", tmp_path, "--backbone", tiny_clip_dir / "model.safetensors",
             "--out", tmp_path / "o"])
    assert r.returncode == 2
    assert "val.txt" in r.stderr and "Traceback" not in r.stderr


def test_interrupted_split_is_finished_and_results_go_to_ovss_results(tiny_clip_dir, tmp_path, monkeypatch,
                                                                      capsys):
    """A synthetic split whose generation was killed is finished by the next `ovss eval` (its
    classes.txt no longer passes for "done"), giving the same mIoU as an uninterrupted one; and
    without --out the results go to ovss-results/<dataset>-<method>-<backbone>/, not ./results."""
    import ovss.data.synthetic as syn
    from ovss.apps.cli import main

    monkeypatch.chdir(tmp_path)

    def args(root, *extra):
        return ["eval", "--dataset", "synthetic-scenes", "--root", str(root), "--synthetic-n", "5", "--method",
                "maskclip", "--backbone", str(tiny_clip_dir / "model.safetensors"), "--device", "cpu", "--quiet",
                *extra]

    assert main(args(tmp_path / "whole")) == 0
    default = tmp_path / "ovss-results" / "synthetic-scenes-maskclip-model" / "results.json"
    assert default.exists() and not (tmp_path / "results").exists()

    real, made = syn.make_scene, []

    def killed_after_two(seed, size=96):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(seed)
        return real(seed, size)

    monkeypatch.setattr(syn, "make_scene", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "part", n=5)
    monkeypatch.setattr(syn, "make_scene", real)
    assert (tmp_path / "part" / "classes.txt").exists()
    capsys.readouterr()
    assert main(args(tmp_path / "part", "--out", str(tmp_path / "o"))) == 0
    assert "finishing the interrupted synthetic validation split" in capsys.readouterr().out
    whole = json.loads(default.read_text())["metrics"]
    part = json.loads((tmp_path / "o" / "results.json").read_text())["metrics"]
    assert part["num_images"] == 5 and part == whole
