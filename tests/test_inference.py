"""The shared inference path: resize rule, windows, stitching, decision rule."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.core.decision import Decision, class_probabilities, decide
from ovss.core.protocol import Protocol, preprocess, resized_size, slide_logits, window_boxes
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


def _reference_windows(h, w, crop, stride):
    # mmseg / SCLIP forward_slide window placement, written out as the reference does it.
    out = []
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


@pytest.mark.parametrize("h,w", [(336, 448), (224, 224), (100, 300), (597, 448), (560, 1120)])
def test_window_grid_matches_mmseg(h, w):
    boxes = window_boxes(h, w, 224, 112)
    assert boxes == _reference_windows(h, w, 224, 112)
    cover = np.zeros((h, w), int)
    for y1, y2, x1, x2 in boxes:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert window_boxes(h, w, 0, 0) == [(0, h, 0, w)]
    assert window_boxes(336, 448, 224, 112)[-1] == (112, 336, 224, 448)


def _toy_readout(crops):
    # A deterministic "network": patch logits = 2 channels of 16x16 average pools.
    return F.avg_pool2d(crops[:, :2], 16)


def _reference_slide(img, crop, stride):
    _, _, h, w = img.shape
    preds = torch.zeros(1, 2, h, w)
    count = torch.zeros(1, 1, h, w)
    for y1, y2, x1, x2 in _reference_windows(h, w, crop, stride):
        lg = F.interpolate(_toy_readout(img[:, :, y1:y2, x1:x2]), size=(y2 - y1, x2 - x1), mode="bilinear")
        preds += F.pad(lg, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


@pytest.mark.parametrize("batch", [1, 3, 32])
def test_slide_equals_reference_loop(batch):
    img = torch.randn(1, 3, 200, 330)
    out = slide_logits(img, _toy_readout, Protocol(crop=112, stride=56, window_batch=batch), 16)
    assert torch.allclose(out, _reference_slide(img, 112, 56), atol=1e-6)


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
    assert (full - bands).abs().max() < 1e-5
