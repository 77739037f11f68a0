"""mIoU as mmseg's IoUMetric computes it: dataset-summed histograms, NaN classes excluded."""

import json
import math

import numpy as np
import pytest
import torch

from ovss.eval.metrics import IoUAccumulator, intersect_and_union


def _two_images():
    # Image 1: label 0 0 / 1 1, prediction 0 1 / 1 1.
    l1, p1 = np.array([[0, 0], [1, 1]]), np.array([[0, 1], [1, 1]])
    # Image 2: the 255 pixel is dropped whatever is predicted there.
    l2, p2 = np.array([[2, 2], [255, 0]]), np.array([[2, 0], [1, 0]])
    return (p1, l1), (p2, l2)


def test_hand_worked_two_images():
    acc = IoUAccumulator(4)  # class 3 is in neither prediction nor label: excluded
    for p, l in _two_images():
        acc.update(p, l)
    # Summed by hand: intersect [2, 2, 1, 0], pred [3, 3, 1, 0], label [3, 2, 2, 0], union [4, 3, 2, 0].
    assert acc.area_intersect.tolist() == [2, 2, 1, 0]
    assert acc.area_pred.tolist() == [3, 3, 1, 0]
    assert acc.area_label.tolist() == [3, 2, 2, 0]
    assert acc.area_union.tolist() == [4, 3, 2, 0]
    r = acc.compute()
    assert r["IoU"][:3] == pytest.approx([50.0, 200 / 3, 50.0])
    assert math.isnan(r["IoU"][3]) and math.isnan(r["Acc"][3])
    assert r["mIoU"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert r["Acc"][:3] == pytest.approx([200 / 3, 100.0, 50.0])
    assert r["mAcc"] == pytest.approx((200 / 3 + 100 + 50) / 3)
    assert r["aAcc"] == pytest.approx(500 / 7)
    assert r["num_images"] == 2
    # Dataset-level, not a mean over images: image 1 alone would give mIoU (50 + 66.7) / 2.
    assert acc.compute(digits=2)["mIoU"] == 55.56


def _confusion_metrics(preds, labels, c, ignore=255):
    """Independent reference: one confusion matrix (rows label, columns prediction) over the dataset."""
    cm = np.zeros((c, c), np.int64)
    for p, l in zip(preds, labels):
        keep = l != ignore
        np.add.at(cm, (l[keep], p[keep]), 1)
    tp = np.diag(cm).astype(float)
    label_area, pred_area = cm.sum(1), cm.sum(0)
    union = label_area + pred_area - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100
        acc = np.where(label_area > 0, tp / label_area, np.nan) * 100
    return iou, acc, tp.sum() / label_area.sum() * 100


def test_matches_confusion_matrix_on_random_predictions():
    rng = np.random.default_rng(0)
    c = 7
    preds, labels = [], []
    acc = IoUAccumulator(c)
    for _ in range(12):
        h, w = rng.integers(5, 30, size=2)
        l = rng.integers(0, c - 1, size=(h, w))  # class c-1 never labelled
        l[rng.random((h, w)) < 0.1] = 255
        p = rng.integers(0, c, size=(h, w))
        preds.append(p)
        labels.append(l)
        acc.update(torch.from_numpy(p), torch.from_numpy(l))  # torch input works too
    iou, a, aacc = _confusion_metrics(preds, labels, c)
    r = acc.compute()
    np.testing.assert_allclose(r["IoU"], iou)
    np.testing.assert_allclose(r["Acc"], a)
    assert r["mIoU"] == pytest.approx(np.nanmean(iou))
    assert r["mAcc"] == pytest.approx(np.nanmean(a))
    assert r["aAcc"] == pytest.approx(aacc)
    # The never-labelled but predicted class has IoU 0 (counted), Acc NaN (not counted).
    assert r["IoU"][c - 1] == 0.0 and math.isnan(r["Acc"][c - 1])


def test_ignore_pixels_are_dropped():
    label = np.full((4, 4), 255)
    label[0, 0] = 1
    pred = np.zeros((4, 4), np.int64)
    pred[0, 0] = 1
    acc = IoUAccumulator(3)
    acc.update(pred, label)
    r = acc.compute()
    assert acc.area_pred.tolist() == [0, 1, 0]  # the 15 ignored zeros are not counted
    assert r["mIoU"] == 100.0 and r["aAcc"] == 100.0
    assert math.isnan(r["IoU"][0]) and math.isnan(r["IoU"][2])
    i, u, p, g = intersect_and_union(pred, label, 3, ignore_index=255)
    assert (i.tolist(), u.tolist(), p.tolist(), g.tolist()) == ([0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0])


def test_absent_classes_excluded_from_mean():
    acc = IoUAccumulator(10)
    acc.update(np.array([[0, 1]]), np.array([[0, 0]]))
    r = acc.compute()
    # class 0: IoU 1/2; class 1 predicted but absent: IoU 0; classes 2..9: NaN, excluded.
    assert r["IoU"][:2] == [50.0, 0.0]
    assert all(math.isnan(v) for v in r["IoU"][2:])
    assert r["mIoU"] == 25.0
    assert r["mAcc"] == 50.0  # only class 0 has label area


def test_batches_merge_and_resume_equal_one_pass():
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 5, size=(6, 8, 8))
    labels = rng.integers(0, 5, size=(6, 8, 8))
    labels[:, 0] = 255
    one = IoUAccumulator(5)
    for p, l in zip(preds, labels):
        one.update(p, l)
    batch = IoUAccumulator(5)
    batch.update(preds, labels)
    a, b = IoUAccumulator(5), IoUAccumulator(5)
    a.update(preds[:2], labels[:2])
    b.update(preds[2:], labels[2:])
    a.merge(b)
    resumed = IoUAccumulator(5)
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for acc in (batch, a, resumed):
        assert acc.state_dict() == one.state_dict()
        assert acc.compute() == one.compute()
    assert one.num_images == 6
    with pytest.raises(ValueError):
        IoUAccumulator(4).load_state_dict(one.state_dict())
    with pytest.raises(ValueError):
        one.merge(IoUAccumulator(4))


def test_empty_and_bad_input():
    r = IoUAccumulator(3).compute()
    assert math.isnan(r["mIoU"]) and math.isnan(r["aAcc"])
    with pytest.raises(ValueError):
        IoUAccumulator(3).update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError):
        IoUAccumulator(3).update(np.full((2, 2), 0.5), np.zeros((2, 2), int))


def test_worked_example_of_benchmarks_md():
    """../shared/benchmarks.md section 3: two images, 3 classes, ignore 255."""
    acc = IoUAccumulator(3)
    acc.update(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 255]))
    acc.update(np.array([0, 0]), np.array([0, 0]))
    m = acc.compute(digits=2)
    assert (m["mIoU"], m["mAcc"], m["aAcc"]) == (62.5, 87.5, 80.0)
    assert m["IoU"][:2] == [75.0, 50.0] and np.isnan(m["IoU"][2])
    variant = IoUAccumulator(3)  # B predicts class 2 on one pixel: class 2 counts with IoU 0
    variant.update(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 255]))
    variant.update(np.array([0, 2]), np.array([0, 0]))
    assert variant.compute()["IoU"][2] == 0.0
