"""The repository tool that trained the shipped tiny-synthetic CLIP (tools/train_tiny_clip, run as
`python -m tools.train_tiny_clip` from the repository root) and the benchmark that retrains it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "ovss" / "data" / "assets" / "tiny_synthetic"


def _env(tmp_path: Path) -> dict:
    src = str(REPO / "src")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
                TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def retrain():
    spec = importlib.util.spec_from_file_location("retrain_tiny_clip", REPO / "benchmarks" / "retrain_tiny_clip.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_shipped_run_is_the_tools_defaults(retrain):
    """The shipped model's recorded command parses, with the tool's current parser, to its defaults
    in every weight-affecting setting (what the card promises: the tool's defaults retrain it)."""
    trainer = retrain._load_trainer()
    log = json.loads((SHIPPED / trainer.LOG_NAME).read_text())
    assert log["command"].startswith(trainer.PROGRAM + " ")
    used = vars(trainer.parse_args(retrain.recorded_args(log["command"])))
    defaults = vars(trainer.parse_args([]))
    keys = [k for k in trainer._RECIPE_KEYS if k != "threads"]
    assert {k: used[k] for k in keys} == {k: defaults[k] for k in keys}
    recorded = [k for k in keys if k in log["args"]]  # the log predates some switches (off by default)
    assert {k: log["args"][k] for k in recorded} == {k: defaults[k] for k in recorded}
    assert log["threads"] == defaults["threads"] == 2
    old = "python scripts/train_tiny_clip.py --steps 400 --eval-every 50"  # logs from before the move
    assert retrain.recorded_args(old) == retrain.recorded_args(f"{trainer.PROGRAM} --steps 400 --eval-every 50")


def test_retrain_benchmark_dry_run(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "retrain_tiny_clip.py"), "--dry-run"],
                         cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "retraining: python -m tools.train_tiny_clip --out /tmp/exp/r4" in out.stdout


def test_tool_trains_a_tiny_run_and_writes_its_files(tmp_path):
    """A few steps on a small pool: the four files, written atomically (no temp file left), the
    weights readable by ovss, the card naming the tool."""
    out = tmp_path / "out"
    args = ["--steps", "2", "--batch-size", "8", "--pool", "64", "--eval-every", "2", "--eval-images", "2",
            "--merges", "20", "--threads", "1", "--no-resume", "--pool-cache", str(tmp_path / "pool"),
            "--out", str(out)]
    run = subprocess.run([sys.executable, "-m", "tools.train_tiny_clip", *args], cwd=REPO, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "bpe_vocab.txt.gz", "tiny_clip.safetensors",
                                                     "training_log.json"]
    assert [p.name for p in (tmp_path / "pool").iterdir()] == ["pool_0_64_96.npz"]
    log = json.loads((out / "training_log.json").read_text())
    assert log["command"].startswith("python -m tools.train_tiny_clip --steps 2") and log["selected_step"] == 2
    assert "`python -m tools.train_tiny_clip --steps 2" in (out / "MODEL_CARD.md").read_text()

    from safetensors import safe_open

    from ovss.backbones.factory import create_clip

    with safe_open(str(out / "tiny_clip.safetensors"), "pt") as f:
        assert f.metadata()["trained_by"] == "tools/train_tiny_clip"
    clip = create_clip(str(out / "tiny_clip.safetensors"))
    assert clip.model.cfg.vision.image_size == 96 and clip.model.cfg.vision.patch_size == 8
