"""The trainer's settings: command-line arguments, the run id, fixed sizes and file names."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "src" / "ovss" / "data" / "assets" / "tiny_synthetic"
WEIGHTS_NAME = "tiny_clip.safetensors"
VOCAB_NAME = "bpe_vocab.txt.gz"
CARD_NAME = "MODEL_CARD.md"
LOG_NAME = "training_log.json"
IMAGE_SIZE = 96
PATCH = 8
CONTEXT = 77
TEMPLATE_SETS = ("plain", "single", "imagenet80")
PROGRAM = "python -m tools.train_tiny_clip"  # how the tool is run (from the repository root)
DESCRIPTION = "Train the tiny synthetic-world CLIP shipped in src/ovss/data/assets/tiny_synthetic/."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROGRAM, description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    p.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay on matrices (not on gains, biases, embeddings, logit scale)")
    p.add_argument("--seed", type=int, default=0, help="model init and batch sampling seed")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-images", type=int, default=200, help="first N val scenes (seeds 1_000_000+)")
    p.add_argument("--select-templates", default="plain", choices=TEMPLATE_SETS,
                   help="template set whose readouts select the checkpoint")
    p.add_argument("--pool", type=int, default=20000, help="train scenes in the pool (seeds 0..pool-1)")
    p.add_argument("--merges", type=int, default=500, help="BPE merges asked for (stops early when done)")
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--flip", type=float, default=0.5, help="horizontal flip probability")
    p.add_argument("--group", type=int, default=0,
                   help="hard-negative batches: the batch is made of groups of this many scenes with the "
                        "same set of stuff classes, so captions can only be matched by their things (0: off)")
    p.add_argument("--drop-colour", type=float, default=0.75,
                   help="probability of removing the colour word of each thing in a caption "
                        "('a red circle' -> 'a circle'), so that shapes must be told apart by shape")
    p.add_argument("--crop", type=float, default=0.0,
                   help="probability of replacing a sample by a random square crop (resized to 96 px) "
                        "captioned from its mask with the classes it shows")
    p.add_argument("--crop-min", type=float, default=0.4, help="smallest crop side, as a fraction of 96 px")
    p.add_argument("--patch-dropout", type=float, default=0.0,
                   help="fraction of patch tokens dropped (at random, per image) in training forwards")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--pool-cache", type=Path, default=Path("/tmp/ovss_tiny_pool"),
                   help="folder caching the generated pool ('' disables)")
    p.add_argument("--no-resume", action="store_true", help="ignore and do not write a resume checkpoint")
    p.add_argument("--fp16", choices=("auto", "never"), default="auto",
                   help="auto: ship fp16 if every readout's val mIoU is unchanged to 0.1, else fp32")
    p.add_argument("--rewrite-card", action="store_true",
                   help="train nothing: re-evaluate the weights already in --out and rewrite "
                        "MODEL_CARD.md and training_log.json from the run recorded there")
    return p.parse_args(argv)


def run_id(args: argparse.Namespace) -> str:
    """Hash of everything that changes the trained weights (not --out, threads, eval size)."""
    keys = ("steps", "batch_size", "lr", "min_lr", "warmup", "weight_decay", "seed", "pool", "merges",
            "vision_width", "vision_layers", "text_width", "text_layers", "embed_dim", "flip", "patch_dropout", "crop", "crop_min", "drop_colour", "group",
            "eval_every", "eval_images", "select_templates")
    blob = json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def command_line(argv: list[str] | None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return " ".join([PROGRAM, *argv]).strip()



# Weight-affecting arguments (what the card compares with the script defaults).
_RECIPE_KEYS = ("steps", "batch_size", "lr", "min_lr", "warmup", "weight_decay", "seed", "pool", "merges",
                "vision_width", "vision_layers", "text_width", "text_layers", "embed_dim", "flip", "group",
                "drop_colour", "crop", "crop_min", "patch_dropout", "eval_every", "eval_images",
                "select_templates", "threads")

