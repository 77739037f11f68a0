"""Writing a run's files, each atomically (`ovss.data.io.atomic_write`): weights, vocabulary,
log and card, the resume checkpoint; and `rewrite_card`, which re-evaluates shipped weights."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ovss.data.io import atomic_write
from ovss.data.synthetic import CLASSES
from ovss.text.tokenizer import Tokenizer, write_merges

from .card import model_card
from .evaluate import READOUTS, DenseEval, chance_miou, fmt_table
from .model import load_shipped
from .options import CARD_NAME, LOG_NAME, TEMPLATE_SETS, VOCAB_NAME, WEIGHTS_NAME, parse_args


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save(state, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def save_merges(merges, path: Path) -> None:
    """The BPE merges in OpenAI's format, gzipped when `path` ends in .gz (`write_merges`)."""
    with tempfile.TemporaryDirectory() as d:
        staged = Path(d) / path.name  # the same ending: gzipped alike
        write_merges(merges, staged)
        data = staged.read_bytes()
    atomic_write(path, lambda f: f.write(data))


def save_resume(state: dict, path: Path) -> None:
    """The resume checkpoint (model, optimiser, step, log, best so far)."""
    atomic_write(path, lambda f: torch.save(state, f))


def write_record(out: Path, rec: dict, model, args) -> None:
    """The run's log (JSON) and the model card made from it."""
    log = (json.dumps(rec, indent=1) + "\n").encode()
    card = model_card(rec, model, args).encode()
    atomic_write(out / LOG_NAME, lambda f: f.write(log))
    atomic_write(out / CARD_NAME, lambda f: f.write(card))


def rewrite_card(out: Path) -> dict:
    """Re-evaluate the weights in `out` and rewrite its card and log from the run recorded there."""
    rec = json.loads((out / LOG_NAME).read_text())
    args = parse_args([])
    for k, v in rec["args"].items():
        if hasattr(args, k):
            setattr(args, k, Path(v) if isinstance(getattr(args, k), Path) else v)
    model = load_shipped(out)
    evaluator = DenseEval(args.eval_images)
    ev = evaluator(model, Tokenizer(out / VOCAB_NAME), per_class=True)
    changed = {ts: {r: (rec["final_eval"][ts][r], ev[ts][r]) for r in READOUTS
                    if abs(rec["final_eval"][ts][r] - ev[ts][r]) > 0.005} for ts in TEMPLATE_SETS}
    print(f"re-evaluated {out / WEIGHTS_NAME}; differences from the log: {changed}", flush=True)
    rec.update(final_eval=ev, best_template_set=max(TEMPLATE_SETS, key=lambda ts: ev[ts]["select"]),
               chance_miou=chance_miou(evaluator), classes=CLASSES)
    rec["machine"] = " ".join(x for x in rec["machine"].split(" ") if x)
    write_record(out, rec, model, args)
    print(f"rewrote {out / CARD_NAME} and {out / LOG_NAME}\n{fmt_table(ev)}", flush=True)
    return rec

