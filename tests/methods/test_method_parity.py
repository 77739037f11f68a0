"""SCLIP / ClearCLIP / NACLIP through ovss against the reference segmentors' own forward.

The goldens (tests/golden/methods_small.safetensors, made by tests/golden/make_methods_golden.py
from the reference checkouts; see tests/golden/README.md) hold a network-resolution uint8 image,
random unit query embeddings, and for each run the per-pixel logits the reference's segmentor
hands to its decision step (at the original size, after PAMR where on) and its label map. Here the
same weights (clip_small.safetensors) and queries go through ovss's `Segmenter` with the method's
preset, the queries injected in place of the text bank and no test-time resize.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from deep_parity import assert_labels_equal
from measured import max_abs_diff
from safetensors import safe_open
from safetensors.torch import load_file

from ovss.backbones.factory import create_clip
from ovss.core.decision import class_probabilities, decide
from ovss.core.resize import upsample
from ovss.core.segmenter import Segmenter
from ovss.methods import get_method
from ovss.text.bank import ClassSpec

GOLDEN = Path(__file__).parents[1] / "golden"
FILE = GOLDEN / "methods_small.safetensors"
VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"
# max |ours - reference| of the logits (cosines, |values| <= 0.38) measured on an Intel Xeon (this
# machine): 1.2e-7 (sclip), 1.6e-7 (clearclip), 2.7e-7 (naclip_slide), 3.0e-7 (naclip_whole),
# 1.5e-7 (naclip_nopamr) with OMP_NUM_THREADS=1 and torch.set_num_threads(1); 1.5e-7 .. 1.8e-7 with
# OMP_NUM_THREADS=2. The bound is 5x the largest (float32; other CPUs sum in other orders).
TOL = 1.5e-6

# golden run -> (method, preset, overrides); the references' settings are in the golden script
RUNS = {
    "sclip": ("sclip", "voc21", {}),  # 224/112, logit_scale 65, prob_thd 0.1, area_thd 0.1
    "clearclip": ("clearclip", "context60", {"protocol.crop": 224}),  # 224/224 windows, padded; 50, 0.15
    "naclip_slide": ("naclip", "voc21-v1", {}),  # 224/112 + PAMR(10, (8, 16)); 40, 0.1
    "naclip_nopamr": ("naclip", "voc21-v1", {"refiners": ""}),
    "naclip_whole": ("naclip", "voc21", {}),  # whole image + PAMR; 40, 0.1
}


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(FILE), "pt") as f:
        meta = f.metadata()
    return load_file(str(FILE)), int(meta["logits_step"])


@pytest.fixture(scope="module")
def clip():
    return create_clip(str(GOLDEN / "clip_small.safetensors"))


def _spec(q2c: list[int]) -> ClassSpec:
    groups = [tuple(f"q{q}" for q, c in enumerate(q2c) if c == k) for k in range(max(q2c) + 1)]
    return ClassSpec(tuple(groups), background=True)


@pytest.fixture(scope="module")
def outputs(golden, clip):
    g, _ = golden
    image = g["image"].numpy()
    ori = tuple(g["ori_shape"].tolist())
    queries = g["queries"]
    spec = _spec(g["query_to_class"].tolist())
    out = {}
    for run, (method, preset, overrides) in RUNS.items():
        seg = Segmenter(method, clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None, **overrides})
        seg_queries = queries
        with torch.no_grad():
            state = seg.preprocess(image, size=ori)
            low = seg.stitched_logits(state, seg_queries)
            logits = seg.refine(upsample(low, ori), state)
            labels = seg.decide(low, state, spec).labels
        out[run] = (seg, logits, labels, spec)
    return out


@pytest.mark.parametrize("run", sorted(RUNS))
def test_logits_match_reference(golden, outputs, run):
    g, step = golden
    _, logits, _, _ = outputs[run]
    ref = g[f"{run}.logits"]
    diff = max_abs_diff(logits[:, ::step, ::step], ref, f"methods.parity.{run}.logits")
    assert diff < TOL, diff


@pytest.mark.parametrize("run", sorted(r for r in RUNS if r != "naclip_nopamr"))
def test_labels_match_reference(golden, outputs, run):
    g, _ = golden
    seg, logits, labels, spec = outputs[run]
    ref = g[f"{run}.labels"].numpy().astype(np.int64)
    assert_labels_equal(labels, ref, logits, spec, seg.recipe.decision)  # equal but at float ties


@pytest.mark.parametrize("run,rule", [("sclip", "area_thd"), ("clearclip", "prob_thd"),
                                      ("naclip_slide", "prob_thd"), ("naclip_whole", "prob_thd")])
def test_goldens_exercise_the_decision_rules(outputs, run, rule):
    """The label maps are not trivial: the preset's threshold or area rule changes pixels."""
    seg, logits, labels, spec = outputs[run]
    d = seg.recipe.decision
    probs = class_probabilities(logits, spec.query_to_class, len(spec), d.logit_scale)
    without = decide(probs, replace(d, **{rule: None if rule == "area_thd" else 0.0}))[0].numpy()
    assert len(np.unique(labels)) >= 4
    assert not np.array_equal(without, labels)


def test_pamr_changes_naclip_logits(golden):
    g, _ = golden
    assert (g["naclip_slide.logits"] - g["naclip_nopamr.logits"]).abs().max() > 1e-2


def test_presets_used_here_are_the_methods_own():
    """The parity runs use the registered presets (only the window size differs for ClearCLIP)."""
    assert get_method("naclip").resolve("voc21-v1").refiners == get_method("naclip").recipe.refiners
    assert get_method("clearclip").resolve("voc21").protocol.pad_to_patch


def test_padding_is_clearclips_compute_padsize():
    """inference._pad_to_multiple pads as ClearCLIP's compute_padsize (clearclip_segmentor.py:
    246-258): remainder r -> patch - r split left = half (floor), right = the rest; zeros in
    normalised space; the logits are cropped back at [top:top+H, left:left+W]."""
    from ovss.core.protocol import _pad_to_multiple

    def compute_padsize(h, w, patch):  # the reference's rule, restated
        l = r = t = b = 0
        if w % patch:
            lr = patch - w % patch
            l, r = lr // 2, lr - lr // 2
        if h % patch:
            tb = patch - h % patch
            t, b = tb // 2, tb - tb // 2
        return l, r, t, b

    for h in range(16, 50):
        for w in (16, 17, 31, 33, 47):
            x = torch.randn(1, 3, h, w)
            y, pad = _pad_to_multiple(x, 16)
            assert pad == compute_padsize(h, w, 16)
            assert torch.equal(y, torch.nn.functional.pad(x, pad))
