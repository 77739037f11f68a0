"""The shared inference path: resize rule, windows, stitching, decision rule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from measured import max_abs_diff

from ovss.core.decision import Decision, class_probabilities, decide
from ovss.core.protocol import Protocol, preprocess, resized_size, slide_logits, stitch, window_boxes
from ovss.core.resize import upsample, upsample_rows


@pytest.mark.parametrize("hw,short,cap,expected", [
    ((375, 500), 336, 2048, (336, 448)),  # VOC-sized image, SCLIP/NACLIP protocol
    ((500, 375), 448, 2048, (597, 448)),  # int(500 * 448/375 + 0.5) = 597
    ((1024, 2048), 560, 2048, (560, 1120)),  # Cityscapes at 560
    ((100, 5000), 336, 2048, (41, 2048)),  # long side capped: factor = 2048/5000
    ((375, 500), 520, 520, (390, 520)),  # MaskCLIP Context59: (520, 520) caps the long side
    ((375, 500), None, 2048, (375, 500)),
])
def test_resize_rule_is_mmcv_keep_ratio(hw, short, cap, expected):
    assert resized_size(*hw, short, cap) == expected


def test_preprocess_normalises_with_clip_stats():
    img = np.full((20, 30, 3), 128, np.uint8)
    clip = dict(mean=(122.771, 116.746, 104.094), std=(68.501, 66.632, 70.323))
    x = preprocess(img, Protocol(short_side=None, **clip))
    assert x.shape == (1, 3, 20, 30)
    assert torch.allclose(x[0, :, 0, 0], (128 - torch.tensor([122.771, 116.746, 104.094]))
                          / torch.tensor([68.501, 66.632, 70.323]))
    assert preprocess(img, Protocol(short_side=40, **clip)).shape == (1, 3, 40, 60)
    # a protocol without statistics takes the caller's (the backbone's, in a Segmenter)
    y = preprocess(img, Protocol(short_side=None), mean=clip["mean"], std=clip["std"])
    assert torch.equal(x, y)
    with pytest.raises(ValueError, match="normalisation"):
        preprocess(img, Protocol(short_side=None))


def test_float_images_are_resized_not_quantised():
    img = np.full((20, 30, 3), 100.4, np.float32)
    p = Protocol(short_side=40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert torch.allclose(preprocess(img, p), torch.full((1, 3, 40, 60), 100.4))
    assert torch.equal(preprocess(img.astype(np.uint8), p), torch.full((1, 3, 40, 60), 100.0))


# mmseg's slide rule (EncoderDecoder.slide_inference, also SCLIP/NACLIP's forward_slide): per side
# grids = max(side - crop + stride - 1, 0) // stride + 1; window i starts at i * stride, ends at
# min(start + crop, side) and is moved back to end - crop (not below 0). Boxes (y1, y2, x1, x2), rows
# first. The expected boxes below are worked out by hand from that rule, not by running it.
HAND_WINDOWS = {
    # 2 x 3 grid: (336 - 224 + 111) // 112 + 1 = 2, (448 - 224 + 111) // 112 + 1 = 3
    (336, 448, 224, 112): [(0, 224, 0, 224), (0, 224, 112, 336), (0, 224, 224, 448),
                           (112, 336, 0, 224), (112, 336, 112, 336), (112, 336, 224, 448)],
    (224, 224, 224, 112): [(0, 224, 0, 224)],  # exactly one crop
    # height below the crop: one row covering it; the second column ends at 300 and moves back to 76
    (100, 300, 224, 112): [(0, 100, 0, 224), (0, 100, 76, 300)],
    (50, 60, 224, 112): [(0, 50, 0, 60)],  # smaller than a crop both ways: the whole image
    # 5 rows ((597 - 224 + 111) // 112 + 1); the last starts at 448, ends at 597, moves back to 373
    (597, 448, 224, 112): [(y1, y2, x1, x2) for y1, y2 in ((0, 224), (112, 336), (224, 448), (336, 560), (373, 597))
                           for x1, x2 in ((0, 224), (112, 336), (224, 448))],
    # a stride that divides nothing: 4 x 2 windows; the last row starts at 210 -> (150, 250)
    (250, 170, 100, 70): [(y1, y2, x1, x2) for y1, y2 in ((0, 100), (70, 170), (140, 240), (150, 250))
                          for x1, x2 in ((0, 100), (70, 170))],
    (40, 50, 0, 0): [(0, 40, 0, 50)],  # crop 0: the whole image in one pass
}


@pytest.mark.parametrize("case", sorted(HAND_WINDOWS))
def test_window_boxes_match_hand_computed_mmseg_windows(case):
    assert window_boxes(*case) == HAND_WINDOWS[case]


def _side_starts(side, crop, stride):
    """The window spans along one side, from the properties alone (no grid formula)."""
    if side <= crop:
        return [(0, side)]
    n = math.ceil((side - crop) / stride) + 1  # enough strides to reach the border
    return [(min(i * stride, side - crop), min(i * stride, side - crop) + crop) for i in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_window_boxes_properties(seed):
    """On random sizes: every pixel covered; as many windows per side as strides needed to reach
    the border; the last window flush with the border; every window crop-sized on a side longer
    than the crop; starts on the stride grid except the last; rows first."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        crop = int(rng.integers(8, 64))
        stride = int(rng.integers(1, crop + 1))
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        boxes = window_boxes(h, w, crop, stride)
        rows, cols = _side_starts(h, crop, stride), _side_starts(w, crop, stride)
        assert boxes == [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]
        cover = np.zeros((h, w), int)
        for y1, y2, x1, x2 in boxes:
            assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
            assert y2 - y1 == min(crop, h) and x2 - x1 == min(crop, w)
            cover[y1:y2, x1:x2] += 1
        assert cover.min() >= 1
        assert max(b[1] for b in boxes) == h and max(b[3] for b in boxes) == w  # flush with the border
        for spans in (rows, cols):
            assert all(a == i * stride for i, (a, _) in enumerate(spans[:-1]))  # on the stride grid
            if len(spans) > 1:  # the last start is past the one before, but not by more than a stride
                assert spans[-2][0] < spans[-1][0] <= spans[-2][0] + stride


def _toy_readout(crops):
    # A deterministic "network": patch logits = 2 channels of 16x16 average pools.
    return F.avg_pool2d(crops[:, :2], 16)


def _reference_slide(img, crop, stride):
    _, _, h, w = img.shape
    preds = torch.zeros(1, 2, h, w)
    count = torch.zeros(1, 1, h, w)
    for y1, y2, x1, x2 in window_boxes(h, w, crop, stride):  # placement: tested above
        lg = F.interpolate(_toy_readout(img[:, :, y1:y2, x1:x2]), size=(y2 - y1, x2 - x1), mode="bilinear")
        preds += F.pad(lg, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


@pytest.mark.parametrize("batch", [1, 3, 32])
def test_slide_equals_reference_loop(batch):
    img = torch.randn(1, 3, 200, 330)
    out = slide_logits(img, _toy_readout, Protocol(crop=112, stride=56, window_batch=batch), 16)
    diff = max_abs_diff(out, _reference_slide(img, 112, 56), f"inference.slide.batch{batch}")
    assert diff < 1e-6, diff  # 0 measured (values <= 0.18; Intel Xeon, 1 and 2 threads): the float32 floor


def test_stitch_averages_overlaps_in_the_canvas_dtype():
    """Two overlapping windows (values 1 and 3): 1 and 3 where alone, 2 where both; float64 blocks
    are added into a float32 canvas when asked (LPOSS's dtypes); no window at all is an error."""
    blocks = [((0, 2, 0, 3), torch.full((2, 2, 3), 1.0, dtype=torch.float64)),
              ((1, 3, 1, 4), torch.full((2, 2, 3), 3.0, dtype=torch.float64))]
    out = stitch(iter(blocks), (3, 4), dtype=torch.float32)
    want = torch.tensor([[1, 1, 1, 0], [1, 2, 2, 3], [0, 3, 3, 3]], dtype=torch.float32)
    want[0, 3] = want[2, 0] = float("nan")  # no window: 0 / 0
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4)
    torch.testing.assert_close(out, want.expand(2, 3, 4), equal_nan=True, rtol=0, atol=0)
    assert stitch(iter(blocks), (3, 4)).dtype == torch.float64  # default: the first block's dtype
    with pytest.raises(ValueError, match="at least one window"):
        stitch(iter(()), (3, 4))


def test_whole_image_and_padding():
    img = torch.randn(1, 3, 40, 50)
    whole = slide_logits(img, _toy_readout, Protocol(crop=0), 16)
    assert whole.shape == (2, 40, 50)
    padded = slide_logits(img, _toy_readout, Protocol(crop=0, pad_to_patch=True), 16)
    assert padded.shape == (2, 40, 50)
    assert not torch.allclose(whole, padded)  # padding to 48x64 changes the patch grid


def test_synonyms_take_max_after_softmax_over_all_queries():
    logits = torch.randn(5, 4, 6)
    q2c = [0, 1, 1, 2, 2]
    probs = class_probabilities(logits, q2c, 3, 40.0)
    soft = (logits * 40).softmax(0)
    assert torch.allclose(probs[0], soft[0])
    assert torch.allclose(probs[1], torch.maximum(soft[1], soft[2]))
    assert torch.allclose(probs[2], torch.maximum(soft[3], soft[4]))


def test_probability_threshold_sends_pixels_to_background():
    probs = torch.tensor([[[0.1, 0.2]], [[0.5, 0.3]], [[0.4, 0.5]]])  # (3, 1, 2)
    labels, _ = decide(probs, Decision(prob_thd=0.45))
    assert labels.tolist() == [[1, 2]]
    labels, _ = decide(probs, Decision(prob_thd=0.51))
    assert labels.tolist() == [[0, 0]]


def test_area_threshold_as_sclip():
    # class 2 wins 1 of 10 non-background pixels: with area_thd 0.1 it is dropped (1 > 1.0 is false)
    probs = torch.zeros(3, 1, 10)
    probs[1, 0, :9] = 0.6
    probs[2, 0, :9] = 0.3
    probs[2, 0, 9] = 0.7
    probs[1, 0, 9] = 0.2
    labels, p = decide(probs, Decision(area_thd=0.1))
    assert labels[0, 9] == 1 and (p[2] == 0).all()
    labels, _ = decide(probs, Decision(area_thd=0.05))
    assert labels[0, 9] == 2


def test_banded_upsampling_matches_full():
    x = torch.randn(4, 21, 28)
    full = upsample(x, (375, 500))
    bands = torch.cat([b for _, _, b in upsample_rows(x, (375, 500), 64)], dim=1)
    diff = max_abs_diff(full, bands, "inference.banded_upsample")
    assert diff < 2e-5, diff  # 4.2e-6 measured (values <= 4.2; Intel Xeon, 1 and 2 threads): 4.8x
