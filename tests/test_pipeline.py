"""The Python API on a tiny random checkpoint: results, the low-level logits call, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

import ovss
from ovss.core import segmenter as pipeline
from ovss.core.decision import class_probabilities, decide
from ovss.core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ovss.core.resize import upsample


@pytest.fixture(scope="module")
def weights(tiny_clip_dir):
    return str(tiny_clip_dir / "model.safetensors")


@pytest.fixture(scope="module")
def seg(weights):
    return ovss.load("maskclip", backbone=weights, device="cpu")


def test_result_fields(seg, rgb_image):
    r = seg(rgb_image, "cat, sofa|couch, wooden floor")
    assert r.labels.shape == (75, 100) and r.labels.dtype == np.int32
    assert r.scores.shape == (3, 75, 100) and r.scores_full_size
    assert r.class_names == ["cat", "sofa", "wooden floor"]
    assert r.palette.shape == (3, 3)
    assert abs(sum(r.areas().values()) - 1) < 1e-9
    assert set(np.unique(r.labels)) <= {0, 1, 2}
    d = r.to_dict()
    assert d["method"] == "maskclip" and d["recipe"]["attention"] == "id"
    assert [c["name"] for c in d["classes"]] == r.class_names


def test_labels_follow_the_raw_logits(seg, rgb_image):
    """The decision rule on the documented low-level logits reproduces the label map."""
    spec = ovss.parse_classes("cat, sofa|couch, wooden floor")
    logits = seg.logits(rgb_image, spec)
    assert logits.shape == (4, 75, 100)  # one row per query (synonyms included)
    probs = class_probabilities(logits, spec.query_to_class, 3, seg.recipe.decision.logit_scale)
    labels, _ = decide(probs, seg.recipe.decision)
    assert np.array_equal(labels.numpy(), seg(rgb_image, spec).labels)


def test_patch_logits_are_cosines(seg):
    x = torch.randn(2, 3, 64, 96)
    q = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    out = seg.patch_logits(x, q)
    assert out.shape == (2, 5, 4, 6)
    assert out.abs().max() <= 1 + 1e-5


def test_threshold_adds_background_when_classes_have_none(weights, rgb_image):
    s = ovss.load("maskclip", backbone=weights, device="cpu", overrides={"decision.prob_thd": 0.9})
    probs = (s.logits(rgb_image, ["cat", "dog"]) * 40).softmax(0)
    low = (probs.amax(0) < 0.9).numpy()
    assert 0 < low.mean() < 1  # the threshold bites somewhere but not everywhere
    r = s(rgb_image, ["cat", "dog"])
    assert r.class_names == ["background", "cat", "dog"]
    assert np.array_equal(r.labels == 0, low)
    assert np.array_equal(r.labels[~low], probs.argmax(0).numpy()[~low] + 1)
    probs3 = (s.logits(rgb_image, ["sky", "cat", "dog"]) * 40).softmax(0)
    low3 = (probs3.amax(0) < 0.9).numpy()
    r = s(rgb_image, ["sky", "cat", "dog"], background=True)
    assert r.class_names == ["sky", "cat", "dog"]  # class 0 is the background: nothing added
    assert (r.labels[low3] == 0).all()


def test_banded_decision_equals_full(weights, rgb_image, monkeypatch):
    s = ovss.load("dense-clip", backbone=weights, device="cpu", overrides={"decision.area_thd": 0.1})
    full = s(rgb_image, "a|b, c, d")
    monkeypatch.setattr(pipeline, "FULL_SIZE_BUDGET", 4 * 75 * 7)  # force bands of a few rows
    banded = s(rgb_image, "a|b, c, d")
    assert not banded.scores_full_size
    assert (full.labels != banded.labels).mean() < 1e-3  # float round-off may flip a near-tie
    np.testing.assert_allclose(full.mean_scores, banded.mean_scores, rtol=1e-4)


def test_very_large_image_stays_bounded(weights):
    """A 24-megapixel image: network input is capped by the protocol, the upsampled
    logits are produced in bands (scores stay at network resolution)."""
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[:, 3000:] = 255
    s = ovss.load("maskclip", backbone=weights, device="cpu",
                  overrides={"protocol.short_side": 64, "protocol.crop": 0})
    r = s(big, "cat, dog, cow", keep_image=False)
    assert r.labels.shape == (4000, 6000)
    assert not r.scores_full_size and r.scores.shape == (3, 64, 96)


def test_image_smaller_than_a_patch(weights, seg):
    tiny = np.full((5, 7, 3), 200, np.uint8)
    assert seg(tiny, "cat, dog").labels.shape == (5, 7)  # resized up to the protocol's short side
    raw = ovss.load("maskclip", backbone=weights, device="cpu", overrides={"protocol.short_side": None})
    with pytest.raises(ValueError, match="smaller than one 16px patch"):
        raw(tiny, "cat, dog")


def test_inputs_of_every_kind_agree(seg, rgb_image, tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(rgb_image).save(p)
    ref = seg(rgb_image, "cat, dog").labels
    for src in (p, str(p), Image.open(p), torch.from_numpy(rgb_image).permute(2, 0, 1)):
        assert np.array_equal(seg(src, "cat, dog").labels, ref)


def test_missing_and_corrupt_images(seg, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        seg(tmp_path / "missing.jpg", "cat")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        seg(bad, "cat")


def test_empty_and_duplicate_classes(seg, rgb_image):
    with pytest.raises(ValueError, match="empty"):
        seg(rgb_image, [])
    with pytest.raises(ValueError, match="duplicate"):
        seg(rgb_image, "cat, dog, cat")


def test_unknown_method_lists_valid_ones(weights):
    with pytest.raises(KeyError, match="maskclip"):
        ovss.load("maskclipp", backbone=weights)


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(KeyError, match="clip-vit-b16"):
        ovss.load("maskclip", backbone="clip-vit-b17")


def test_unknown_setting_is_named(weights):
    with pytest.raises(KeyError, match="protocol.crops"):
        ovss.load("maskclip", backbone=weights, overrides={"protocol.crops": 0})


def test_composed_recipe_from_python(weights, rgb_image):
    """Any rule x any surgery without a new class: e.g. NACLIP's rule with the residual kept."""
    s = ovss.load("maskclip", backbone=weights, device="cpu",
                  overrides={"attention": "kk+gaussian:3", "surgery.ffn": False, "protocol.crop": 0})
    assert str(s.recipe.attention) == "kk+gaussian:3" and s.recipe.protocol == Protocol(crop=0, mean=CLIP_MEAN, std=CLIP_STD)
    assert s(rgb_image, "cat, dog").labels.shape == (75, 100)


def test_one_call_segment(weights, rgb_image):
    r = ovss.segment(rgb_image, "cat, dog", method="dense-clip", backbone=weights, device="cpu")
    assert r.labels.shape == (75, 100)


def test_upsample_is_the_last_step(seg, rgb_image):
    state = seg.preprocess(rgb_image)
    assert state.size == (75, 100) and state.network_size == (336, 448)
    _, q = seg.queries("cat, dog")
    low = seg.stitched_logits(state, q)
    assert low.shape[-2:] == (336, 448)
    assert upsample(low, (75, 100)).shape == (2, 75, 100)
