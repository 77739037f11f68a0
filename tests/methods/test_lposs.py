"""LPOSS / LPOSS+ through ovss against the reference inferencer (golden from
tests/golden/make_lposs_golden.py: LPOSS_Infrencer.slide_inference with the reference MaskCLIP
and DINO classes on clip_small + a small patch-16 DINO, 3 windows of 224 on a 224x448 image)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from deep_parity import assert_labels_equal
from measured import max_abs_diff
from safetensors import safe_open
from safetensors.torch import load_file

from ovss.backbones.dino import create_dino
from ovss.backbones.factory import create_clip
from ovss.core.segmenter import Segmenter
from ovss.heads.vfm import register_vfm
from ovss.methods import get_method
from ovss.text.bank import ClassSpec

GOLDEN = Path(__file__).parents[1] / "golden"
VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"
SPEC_Q = ClassSpec(tuple((f"q{i}",) for i in range(8)), background=False)  # one query per column
TOL = {"lposs": 1.5e-5, "lposs+": 4e-4}  # see the test for the measured differences
SPEC_C = ClassSpec((("q0", "q1", "q2", "q3"), ("q4",), ("q5",), ("q6",), ("q7",)), background=True)


@pytest.fixture(scope="module")
def golden():
    f = GOLDEN / "lposs_small.safetensors"
    with safe_open(str(f), "pt") as fh:
        step = int(fh.metadata()["logits_step"])
    g = load_file(str(f))
    register_vfm("golden-dino16", create_dino(weights={k[9:]: v for k, v in g.items() if k.startswith("dino16.w.")}).model)
    return g, step


@pytest.mark.parametrize("method", ["lposs", "lposs+"])
def test_logits_and_labels_match_reference(golden, method):
    g, step = golden
    clip = create_clip(str(GOLDEN / "clip_small.safetensors"))
    seg = Segmenter(method, clip=clip, preset="voc21", device="cpu", tokenizer=VOCAB,
                    overrides={"protocol.short_side": None, "plugins": "lposs:vfm=golden-dino16"})
    seg_queries = g["queries"]
    img = g["image"].numpy()
    ori = tuple(g["ori_shape"].tolist())
    # the reference resizes the logits of the 224x448 input to ori_shape (its "original" size)
    with torch.no_grad():
        state = seg.preprocess(img, size=ori)
        low = seg.stitched_logits(state, seg_queries)
        low = seg.refine(low, state, SPEC_Q, "network")
        from ovss.core.resize import upsample

        logits = upsample(low, ori)
    ref = g[f"{method}.logits"]
    diff = max_abs_diff(logits[:, ::step, ::step], ref, f"methods.lposs.{method}.logits")
    # measured on an Intel Xeon (this machine), identical with OMP_NUM_THREADS=1, =2 and
    # torch.set_num_threads(1): 2.4e-6 (LPOSS, scores up to 6.2) and 7.6e-5 (LPOSS+, scores up
    # to 156); the bounds (TOL) are 6x and 5x that, 2.4e-6 of the largest score for both. What is
    # left: float32 noise of the two ViTs (DINO features 1.2e-7, seeds 6e-8) and the float32 degree sums of both graphs, whose
    # summation order is the sparse library's (numpy's pairwise reduceat in the golden's scipy
    # stand-in, cuSPARSE on the GPU); see tests/refine/test_lposs_plus.py for what that order
    # alone is worth in the reference itself. Not met in general: where two of a node's
    # similarities tie (or come closer than the ViTs' 1e-7 noise) at rank k, the kNN may keep the
    # other one and the scores move by ~1e-3 (LPOSS) / ~1e-2 (LPOSS+); the reference itself moves
    # as much with its ties broken the other way (tests/golden/README.md, `--full`). This golden
    # has no such row (smallest gap at rank 400: 3.9e-7; DINO features 1.2e-7 apart).
    assert diff < TOL[method], diff
    from ovss.core.decision import class_probabilities, decide

    d = get_method(method).recipe.decision
    labels, _ = decide(class_probabilities(logits, SPEC_C.query_to_class, 5, 1.0), d)
    assert_labels_equal(labels.numpy(), g[f"{method}.labels"].numpy().astype(np.int64), logits, SPEC_C,
                        replace(d, logit_scale=1.0))  # equal but at float ties


@pytest.mark.parametrize("method", ["lposs", "lposs+"])
def test_label_maps_match_reference_through_the_public_call(golden, method):
    """The full call at the golden's original size (200x400 from a 224x448 input, class 0 = four
    background words): `seg(image, classes, queries=, size=)` gives the reference's label map.
    The recipe reduces the background words before the resize (`decision.reduce`, as
    `reduce_to_true_classes`); on this golden both orders give the same map (the test of the
    order itself is tests/methods/test_synonym_order.py)."""
    g, _ = golden
    clip = create_clip(str(GOLDEN / "clip_small.safetensors"))
    seg = Segmenter(method, clip=clip, preset="voc21", device="cpu", tokenizer=VOCAB,
                    overrides={"protocol.short_side": None, "plugins": "lposs:vfm=golden-dino16"})
    assert seg.recipe.decision.reduce == "before_resize"
    ori = tuple(g["ori_shape"].tolist())
    res = seg(g["image"].numpy(), SPEC_C, queries=g["queries"], size=ori, trace=True)
    assert res.labels.shape == ori and list(res.class_names) == list(SPEC_C.names)
    t = res.trace
    assert set(seg.trace_names) == set(t), set(seg.trace_names) ^ set(t)
    n = 3 * 14 * 14  # the patches of the three 224 windows, one graph
    assert t["lposs.seeds"][0].shape == t["lposs.scores"][0].shape == (n, 8)
    graph = t["lposs.graph"][0]
    assert graph.is_sparse and graph.shape == (n, n) and graph.values().numel() <= 2 * 400 * n
    assert t["logits"][0].shape == (5, *ori)  # the background words reduced before the resize
    if method == "lposs+":
        assert t["lposs_plus.output"][0].shape == (8, 224, 448)
    bad = res.labels != g[f"{method}.labels"].numpy()
    print(method, "label mismatches", int(bad.sum()), "of", bad.size)
    assert not bad.any()


def test_presets():
    for name in ("lposs", "lposs+"):
        spec = get_method(name)
        r = spec.resolve("voc21")
        assert r.protocol.short_side == 448 and r.protocol.crop == 224 and r.plugins[0].k == 400
        assert bool(r.refiners) == (name == "lposs+")
        for preset in spec.presets.values():
            assert all(k in preset.sources for k in preset.overrides)


def test_presets_use_lposs_class_lists():
    """LPOSS's own lists (its dataset classes' CLASSES, data/classnames/lposs/), not SCLIP's."""
    from ovss.text.bank import parse_classes

    root = Path(__import__("ovss").__file__).parent / "data" / "classnames"
    spec = get_method("lposs")
    assert set(spec.presets) == {"voc21", "voc20", "context60", "context59", "coco-stuff171", "coco-object",
                                 "cityscapes", "ade20k"}  # no ADE20K-847 in LPOSS
    for name, preset in spec.presets.items():
        assert preset.classes.startswith("lposs/") and (root / preset.classes).is_file()
        assert preset.sources["classes"].startswith("LPOSS ")
        assert get_method("lposs+").presets[name].classes == preset.classes
    voc = parse_classes(root / "lposs" / "cls_voc21.txt")
    assert len(voc) == 21 and len(voc.synonyms[0]) == 26 and voc.synonyms[16] == ("potted plant",)
    assert parse_classes(root / "lposs" / "cls_context60.txt").synonyms[0] == ("background",)
    assert parse_classes(root / "lposs" / "cls_city_scapes.txt").synonyms[6] == ("traffic light",)
    # OpenAI's 0-1 mean/std on the 0-255 scale (not the mmseg configs' rounded 122.771, ...)
    p = spec.resolve("ade20k").protocol
    assert abs(p.mean[0] - 255 * 0.48145466) < 1e-9 and abs(p.std[2] - 255 * 0.27577711) < 1e-9
