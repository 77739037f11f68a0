"""Checkpoint selection: dense validation mIoU of five last-block readouts, chance levels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovss.backbones.clip import CLIP
from ovss.data.synthetic import CLASSES, SEED_BASE
from ovss.eval.metrics import IoUAccumulator
from ovss.heads.attention import AttentionRule
from ovss.heads.dense import Surgery, patch_logits
from ovss.text.bank import TextBank
from ovss.text.tokenizer import Tokenizer

from .data import _scenes, normalise
from .options import TEMPLATE_SETS

# The five last-block readouts evaluated during training (name -> rule, surgery).
READOUTS: dict[str, tuple[AttentionRule, Surgery]] = {
    "dense-clip": (AttentionRule(("qk",)), Surgery(True, True)),
    "maskclip": (AttentionRule(("id",)), Surgery(True, True)),
    "sclip": (AttentionRule(("qq", "kk")), Surgery(True, True)),
    "clearclip": (AttentionRule(("qq",)), Surgery(False, False)),
    "naclip": (AttentionRule(("kk",), prior="gaussian", prior_std=5.0), Surgery(False, False)),
}
SELECT_READOUTS = ("maskclip", "sclip", "clearclip", "naclip")


class DenseEval:
    """Five last-block readouts on the first N val scenes, whole 96 px image, mmseg mIoU."""

    def __init__(self, n: int):
        imgs, masks, _ = _scenes(range(SEED_BASE["val"], SEED_BASE["val"] + n))
        self.images = normalise(imgs)
        self.masks = torch.from_numpy(masks.astype(np.int64))

    @torch.no_grad()
    def __call__(self, model: CLIP, tok: Tokenizer, template_sets=TEMPLATE_SETS,
                 per_class: bool = False) -> dict:
        """{template set: {readout: mIoU, "select": mean of SELECT_READOUTS}}; with `per_class`,
        also {template set: {"per_class": {readout: [IoU per class]}}}."""
        was_training = model.training
        model.eval()
        res: dict[str, dict[str, float]] = {}
        for ts in template_sets:
            bank = TextBank(model, tok, weights_id="train", templates=ts, use_cache=False)
            queries = bank.encode_queries(CLASSES)
            res[ts] = {}
            for name, (rule, surgery) in READOUTS.items():
                acc = IoUAccumulator(len(CLASSES))
                for a in range(0, len(self.images), 50):
                    x = self.images[a : a + 50]
                    lg = patch_logits(model.visual, x, queries, rule, surgery)
                    lg = F.interpolate(lg, size=x.shape[-2:], mode="bilinear", align_corners=False)
                    acc.update(lg.argmax(1), self.masks[a : a + 50])
                r = acc.compute()
                res[ts][name] = round(r["mIoU"], 2)
                if per_class:
                    res[ts].setdefault("per_class", {})[name] = [round(v, 2) for v in r["IoU"]]
            res[ts]["select"] = round(float(np.mean([res[ts][n] for n in SELECT_READOUTS])), 2)
        model.train(was_training)
        return res



def fmt_table(ev: dict, template_sets=TEMPLATE_SETS) -> str:
    names = [*READOUTS, "select"]
    lines = ["templates   " + " ".join(f"{n:>10}" for n in names)]
    for ts in template_sets:
        if ts in ev:
            lines.append(f"{ts:<11} " + " ".join(f"{ev[ts][n]:>10.2f}" for n in names))
    return "\n".join(lines)


def chance_miou(ev: DenseEval) -> dict:
    """mIoU of label-free baselines on the same val scenes: uniform random labels, and the
    single most frequent class everywhere."""
    rng = np.random.default_rng(0)
    r = IoUAccumulator(len(CLASSES))
    r.update(rng.integers(0, len(CLASSES), size=tuple(ev.masks.shape)), ev.masks)
    majority = int(torch.bincount(ev.masks.flatten(), minlength=len(CLASSES)).argmax())
    m = IoUAccumulator(len(CLASSES))
    m.update(torch.full_like(ev.masks, majority), ev.masks)
    return {"uniform_random": round(r.compute()["mIoU"], 2), "majority_class": round(m.compute()["mIoU"], 2)}

