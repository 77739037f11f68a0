"""Where a class with several queries is reduced to one score: before or after the final resize
(`Decision.reduce`), per method as its reference does it.

The references (file:line at the commits in each method's file; the presets cite them):
- before the resize: LPOSS / LPOSS+ (segmentation/evaluation/lposs_eval.py:352-354
  `reduce_to_true_classes` on the network-size scores, 356-361 the resize to ori_shape);
- after it: SCLIP (clip_segmentor.py:118-119, 148-159), ClearCLIP (clearclip_segmentor.py:189-190,
  216-227), NACLIP (naclip.py:126-127, 139-149), ProxyCLIP (proxyclip_segmentor.py:241-242,
  267-278), ResCLIP (resclip_segmentor.py:153-155, 164-173), SC-CLIP (scclip_segmentor.py:124-125,
  154-165), CASS (cass_segmentor.py:270-271, 284-295), CLIPtrase (clip_self_correlation.py:156-158,
  162-165); MaskCLIP has one name per class (mmseg encoder_decoder.py:217-222, 249: resize, softmax).
The order matters only for a class with several queries when the output size is not the network
size: bilinear interpolation does not commute with the max.
"""

import numpy as np
import pytest
import torch

import ovss
from ovss.core.decision import class_probabilities, reduce_queries
from ovss.core.resize import upsample
from ovss.methods import get_method, list_methods
from ovss.text.bank import ClassSpec

ORDER = {m: ("before_resize" if m in ("lposs", "lposs+") else "after_resize") for m in list_methods()}
# a non-square case where the orders disagree: 4 queries, class 0 = queries 0 and 1, 2x3 -> 3x7
LOW = torch.tensor([[[.3, .5, .8], [1., .7, .6]], [[.8, .2, .6], [.1, .2, .2]],
                    [[.7, .7, .2], [.7, .8, .4]], [[.5, .6, .8], [1., .1, .3]]])
Q2C, NC, SIZE = [0, 0, 1, 2], 3, (3, 7)
SPEC = ClassSpec((("a", "a2"), ("b",), ("c",)))


def after_resize(low, q2c, nc, size):
    """SCLIP's postprocess_result on resized logits: softmax over the queries, max per class."""
    return class_probabilities(upsample(low, size), q2c, nc, 1.0).argmax(0)


def before_resize(low, q2c, nc, size):
    """LPOSS: max over a class's scores at the network size, resize, (softmax), argmax."""
    return upsample(reduce_queries(low, q2c, nc), size).argmax(0)


def test_the_smallest_case():
    low = torch.tensor([[[1., 0.], [0., 0.]], [[0., 0.], [0., 1.]], [[.3, .3], [.3, .3]]])
    assert after_resize(low, [0, 0, 1], 2, (3, 3))[1, 1] == 1  # centre: 0.25, 0.25 vs 0.3
    assert before_resize(low, [0, 0, 1], 2, (3, 3))[1, 1] == 0  # centre: max first -> 0.5 vs 0.3
    # at the network size (no resize) or with one query per class the orders agree
    assert torch.equal(after_resize(low, [0, 0, 1], 2, (2, 2)), before_resize(low, [0, 0, 1], 2, (2, 2)))
    assert torch.equal(after_resize(low, [0, 1, 2], 3, (3, 3)), before_resize(low, [0, 1, 2], 3, (3, 3)))


def test_the_case_here_tells_the_orders_apart():
    a, b = after_resize(LOW, Q2C, NC, SIZE), before_resize(LOW, Q2C, NC, SIZE)
    assert (a != b).sum() >= 3


@pytest.fixture(scope="module")
def tiny_clip():
    return ovss.load("maskclip", backbone="tiny-synthetic", device="cpu").clip


@pytest.mark.parametrize("method", list_methods())
def test_each_method_reduces_where_its_reference_does(method, tiny_clip):
    """Every preset carries the order with its source; `Segmenter.decide` follows it at a
    non-square output size, whole-size and banded (over the memory budget) alike."""
    import ovss.core.segmenter as segmenter

    spec = get_method(method)
    want = ORDER[method]
    assert spec.recipe.decision.reduce == want
    for name, preset in spec.presets.items():
        assert spec.resolve(name).decision.reduce == want, (method, name)
        if "decision.reduce" in preset.overrides:
            assert ".py:" in preset.sources["decision.reduce"], (method, name)
    seg = ovss.Segmenter(method, clip=tiny_clip, device="cpu",
                         overrides={"refiners": "", "decision.logit_scale": 1.0, "decision.prob_thd": 0.0,
                                    "decision.area_thd": None})
    state = seg.preprocess(np.zeros((*SIZE, 3), np.uint8))
    assert state.size == SIZE and state.network_size != SIZE
    expected = (before_resize if want == "before_resize" else after_resize)(LOW, Q2C, NC, SIZE)
    labels = seg.decide(LOW, state, SPEC).labels
    assert np.array_equal(labels, expected.numpy()), method
    budget = segmenter.FULL_SIZE_BUDGET
    try:
        segmenter.FULL_SIZE_BUDGET = 1  # the banded path (one row at a time)
        banded = seg.decide(LOW, state, SPEC)
    finally:
        segmenter.FULL_SIZE_BUDGET = budget
    assert not banded.full_size and np.array_equal(banded.labels, labels), method


def test_the_order_is_a_setting_of_any_recipe(tiny_clip):
    """`--set decision.reduce=before_resize` on another method; unknown orders are refused."""
    over = {"refiners": "", "decision.logit_scale": 1.0}
    seg = ovss.Segmenter("naclip", clip=tiny_clip, device="cpu", overrides={**over, "decision.reduce": "before_resize"})
    state = seg.preprocess(np.zeros((*SIZE, 3), np.uint8))
    assert np.array_equal(seg.decide(LOW, state, SPEC).labels, before_resize(LOW, Q2C, NC, SIZE).numpy())
    with pytest.raises(ValueError, match="decision.reduce"):
        get_method("naclip").resolve(None, {"decision.reduce": "sideways"})
