"""Helpers shared by the method parity tests (not a test module)."""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ovss.core.decision import class_probabilities
from ovss.text.bank import ClassSpec

GOLDEN = Path(__file__).parents[1] / "golden"
VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"
SMALL = dict(width=40, layers=12, heads=4, patch=16, image=224, out=32)
TIE = 1e-5  # a decision this close to a tie is float round-off, not a difference of method


def load_golden(path):
    """A golden file's tensors and the decision step its logits were stored at (metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), int(meta["logits_step"])


def small_clip(path=GOLDEN / "clip12_small.safetensors", dims=SMALL):
    """The golden 12-block image tower in ovss's CLIP (explicit head count: 4 heads of 10, which
    the OpenAI-layout state dict cannot tell); the text tower is random and unused."""
    from ovss.backbones.clip import CLIP
    from ovss.backbones.configs import ClipCfg, TextCfg, VisionCfg
    from ovss.backbones.factory import LoadedClip

    cfg = ClipCfg(VisionCfg(dims["width"], dims["layers"], dims["heads"], dims["patch"], dims["image"], dims["out"]),
                  TextCfg(width=32, layers=1, heads=1, vocab_size=500, output_dim=dims["out"]))
    model = CLIP(cfg).eval()
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    assert not unexpected and all(k.startswith("text.") or k == "logit_scale" for k in missing)
    return LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="deep-methods-golden")


def spec_of(q2c) -> ClassSpec:
    groups = [tuple(f"q{q}" for q, c in enumerate(q2c) if c == k) for k in range(max(q2c) + 1)]
    return ClassSpec(tuple(groups), background=True)


def assert_labels_equal(ours: np.ndarray, ref: np.ndarray, logits: torch.Tensor, spec: ClassSpec, decision,
                        max_ties: float = 1e-4) -> int:
    """Label maps equal, except at pixels where ovss's decision is a float tie (the two best class
    probabilities, or the best one and prob_thd, within 1e-5), at most `max_ties` of the pixels.
    Returns the number of such pixels."""
    assert ours.shape == ref.shape
    diff = ours != ref
    if not diff.any():
        return 0
    p = class_probabilities(logits.double(), spec.query_to_class, len(spec), decision.logit_scale)
    top2 = p.topk(2, dim=0).values
    tie = ((top2[0] - top2[1]) < TIE) | ((top2[0] - decision.prob_thd).abs() < TIE)
    tie = tie.numpy()
    assert tie[diff].all(), f"{int((diff & ~tie).sum())} pixels differ away from a tie"
    assert diff.mean() <= max_ties, f"{int(diff.sum())} tied pixels differ"
    return int(diff.sum())
