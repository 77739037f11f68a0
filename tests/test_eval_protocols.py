"""The two evaluation protocols of `ovss.evaluate`: "mmseg" and "cliptrase" (CLIPtrase's own,
leaves162/CLIPtrase@2b7de61 clip_self_correlation.py and configs/metric.py).

Each rule of the cliptrase protocol is pinned on a tiny hand-made dataset where the two protocols
give different numbers, both worked out by hand below. The stand-in segmenter predicts, at every
pixel, the class written in the image's red channel, so predictions follow the crop exactly.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ovss.data.benchmarks import Sample
from ovss.eval.runner import cliptrase_label, evaluate, resize_center_crop

S = 0.01  # configs/metric.py:16, 18: the smoothing term in the denominators


class RedChannel:
    """A segmenter stand-in: the class of a pixel is its red value; short side = the crop size."""

    def __init__(self, short_side=4):
        self.recipe = SimpleNamespace(protocol=SimpleNamespace(short_side=short_side))
        self.seen = []

    def settings(self):
        return {"method": "red-channel"}

    def __call__(self, image, spec, keep_image=False):
        a = np.asarray(Image.open(image).convert("RGB")) if isinstance(image, Path) else image
        self.seen.append(a.shape[:2])
        return SimpleNamespace(labels=a[..., 0].astype(np.int64))


class Tiny:
    """An in-memory SegDataset: (prediction, label) pairs written as PNG images."""

    ignore_index = 255

    def __init__(self, root: Path, pairs, names, background=False, name="tiny", label_suffix=".png"):
        self.name, self.root, self.background = name, root, background
        self.class_names, self.num_classes = list(names), len(names)
        self.samples, self.labels = [], []
        for k, (pred, label) in enumerate(pairs):
            pred = np.asarray(pred, np.uint8)
            img = np.stack([pred, np.zeros_like(pred), np.zeros_like(pred)], -1)
            Image.fromarray(img).save(root / f"img{k}.png")
            self.samples.append(Sample(f"img{k}", root / f"img{k}.png", root / f"img{k}{label_suffix}"))
            self.labels.append(np.asarray(label, np.uint8))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    def load_label(self, i):
        return self.labels[i]


def both(tmp_path, ds, **kw):
    m = evaluate(RedChannel(), ds, tmp_path / "mmseg", background=ds.background, progress=False)["metrics"]
    c = evaluate(RedChannel(), ds, tmp_path / "cliptrase", background=ds.background, progress=False,
                 protocol="cliptrase", **kw)["metrics"]
    return m, c


# ---- the image and ground-truth geometry (clip_self_correlation.py:38-56) ----------------------
@pytest.mark.parametrize("h,w,size,resized,top_left", [
    (4, 6, 4, (4, 6), (0, 1)),  # short side already 4: no resize; (6 - 4) / 2 = 1
    (4, 7, 4, (4, 7), (0, 2)),  # round(1.5) = 2 (half to even)
    (4, 9, 4, (4, 9), (0, 2)),  # round(2.5) = 2 (half to even), not 3
    (375, 500, 224, (224, 298), (0, 37)),  # int(224 * 500 / 375) = int(298.67) = 298: truncated
    (300, 451, 224, (224, 336), (0, 56)),  # int(336.75) = 336 (rounding would give 337)
    (500, 333, 224, (336, 224), (56, 0)),  # portrait: int(336.34) = 336
])
def test_resize_then_center_crop(h, w, size, resized, top_left):
    """torchvision 0.13 Resize(size) (short side to size, long side int(size * long / short), the
    image itself when the short side already fits) then CenterCrop(size) (offsets
    int(round((side - size) / 2))), on an image whose pixels hold their own column / row."""
    cols = np.tile(np.arange(w, dtype=np.int32), (h, 1))
    rows = np.tile(np.arange(h, dtype=np.int32)[:, None], (1, w))
    out_c = np.asarray(resize_center_crop(Image.fromarray(cols), size, Image.NEAREST))
    out_r = np.asarray(resize_center_crop(Image.fromarray(rows), size, Image.NEAREST))
    assert out_c.shape == (size, size)
    rh, rw = resized
    top, left = top_left
    # PIL's nearest resize takes source index floor((i + 0.5) * src / dst)
    assert out_c[0, 0] == int((left + 0.5) * w / rw) and out_r[0, 0] == int((top + 0.5) * h / rh)
    assert out_c[0, -1] == int((left + size - 1 + 0.5) * w / rw)


def test_center_crop_is_what_is_scored(tmp_path):
    """Rule: only the central size x size square of image and ground truth is scored.
    4 x 6 image, size 4: columns 1..4 kept. Classes a (0), b (1), no background.
    Ground truth: all a except columns 0 and 5, which are b; prediction all a."""
    gt = np.zeros((4, 6))
    gt[:, [0, 5]] = 1
    ds = Tiny(tmp_path, [(np.zeros((4, 6)), gt)], ["a", "b"])
    m, c = both(tmp_path, ds)
    # mmseg: a: I 16, label 16, pred 24 -> 16/24; b: I 0, label 8, pred 0 -> 0
    assert m["IoU"] == pytest.approx([100 * 16 / 24, 0.0])
    assert m["mIoU"] == pytest.approx(100 * 16 / 24 / 2) and m["aAcc"] == pytest.approx(100 * 16 / 24)
    # cliptrase: the crop holds 16 a pixels, all right; b is absent from the cropped ground truth
    assert c["mIoU"] == pytest.approx(100 * 16 / (16 + S)) and c["aAcc"] == pytest.approx(100.0)
    assert np.isnan(c["IoU"][1])


def test_void_is_background_with_a_background_class(tmp_path):
    """Rule: ground-truth 255 is scored as background (clip_self_correlation.py:164-166).
    4 x 4, classes bg (0), cat (1), dog (2). Ground truth: rows 0-1 cat, rows 2-3 void (255).
    Prediction: rows 0-1 cat, row 2 bg, row 3 dog."""
    gt = np.array([[1] * 4, [1] * 4, [255] * 4, [255] * 4])
    pred = np.array([[1] * 4, [1] * 4, [0] * 4, [2] * 4])
    ds = Tiny(tmp_path, [(pred, gt)], ["bg", "cat", "dog"], background=True)
    m, c = both(tmp_path, ds)
    # mmseg: the void rows are dropped: cat 8/8, bg and dog NaN
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0)
    assert np.isnan(m["IoU"][0]) and np.isnan(m["IoU"][2])
    # cliptrase: void -> bg: bg I 4, label 8, pred 4 -> 4/(8+S); cat 8/(8+S); dog absent from the GT
    assert c["IoU"][:2] == pytest.approx([100 * 4 / (8 + S), 100 * 8 / (8 + S)]) and np.isnan(c["IoU"][2])
    assert c["mIoU"] == pytest.approx(100 * (4 / (8 + S) + 8 / (8 + S)) / 2)
    assert c["aAcc"] == pytest.approx(100 * 12 / 16)


def test_void_stays_ignored_without_a_background_class(tmp_path):
    """Without background (VOC20, PC59, ADE150, COCO-Stuff) 255 stays out of the metric."""
    gt = np.array([[1] * 4, [1] * 4, [255] * 4, [255] * 4])
    pred = np.array([[1] * 4, [1] * 4, [0] * 4, [0] * 4])
    ds = Tiny(tmp_path, [(pred, gt)], ["a", "b"])
    m, c = both(tmp_path, ds)
    assert m["mIoU"] == pytest.approx(100.0) and c["mIoU"] == pytest.approx(100 * 8 / (8 + S))


def test_images_with_nothing_but_void_are_skipped(tmp_path):
    """Rule: an image whose cropped ground truth is only the reference's 255 is skipped (lines
    132-141); with a background class that is background and void, both 255 in its detectron2
    maps. Image 1: all cat, predicted cat. Image 2: all background, predicted cat."""
    ds = Tiny(tmp_path, [(np.ones((4, 4)), np.ones((4, 4))), (np.ones((4, 4)), np.zeros((4, 4)))],
              ["bg", "cat", "dog"], background=True)
    m, c = both(tmp_path, ds)
    # mmseg: cat I 16, label 16, pred 32 -> 50; bg I 0, label 16 -> 0; dog NaN
    assert m["mIoU"] == pytest.approx(25.0) and m["num_images"] == 2
    # cliptrase: image 2 skipped: cat 16/(16+S) alone
    assert c["mIoU"] == pytest.approx(100 * 16 / (16 + S))
    assert (c["num_images"], c["skipped_images"]) == (1, 1)


def test_mean_over_classes_in_the_ground_truth_and_smoothing(tmp_path):
    """Rule: mIoU averages the classes present in the ground truth (metric.py:19-20; mmseg: every
    class with a non-empty union), IoU = I / (U + 0.01) (:18), mAcc over all classes (:16-17).
    One 4 x 4 image, classes a, b, c; ground truth all a; prediction left half a, right half b."""
    pred = np.array([[0, 0, 1, 1]] * 4)
    ds = Tiny(tmp_path, [(pred, np.zeros((4, 4)))], ["a", "b", "c"])
    m, c = both(tmp_path, ds)
    # mmseg: a I 8 U 16 -> 50; b predicted, absent: I 0 U 8 -> 0, counted; c NaN
    assert m["mIoU"] == pytest.approx(25.0) and m["mAcc"] == pytest.approx(50.0)
    # cliptrase: a only: 8/(16+S); mAcc (8/(16+S) + 0 + 0) / 3; pixel accuracy 8/16; fwIoU = a's IoU
    assert c["mIoU"] == pytest.approx(100 * 8 / (16 + S))
    assert c["mAcc"] == pytest.approx(100 * 8 / (16 + S) / 3)
    assert c["aAcc"] == pytest.approx(50.0) and c["fwIoU"] == pytest.approx(100 * 8 / (16 + S))


def test_one_confusion_matrix_over_the_dataset(tmp_path):
    """Rule: the histograms are summed over images before any ratio (metric.py:12-14), not a mean
    of per-image scores. Image 1: all a, predicted a. Image 2: all b, 4 pixels predicted b, 12 a."""
    pred2 = np.zeros((4, 4))
    pred2[0] = 1
    ds = Tiny(tmp_path, [(np.zeros((4, 4)), np.zeros((4, 4))), (pred2, np.ones((4, 4)))], ["a", "b"])
    m, c = both(tmp_path, ds)
    # a: I 16, label 16, pred 28 -> U 28; b: I 4, label 16, pred 4 -> U 16
    assert m["mIoU"] == pytest.approx(100 * (16 / 28 + 4 / 16) / 2)
    assert c["mIoU"] == pytest.approx(100 * (16 / (28 + S) + 4 / (16 + S)) / 2)
    # a mean of per-image mIoUs (each over its own GT classes) would be (16/(16+S) + 4/(16+S)) / 2
    assert c["mIoU"] != pytest.approx(100 * (16 / (16 + S) + 4 / (16 + S)) / 2)


def test_coco_object_is_scored_on_the_171_class_maps(tmp_path):
    """Rule: COCO-Object reads COCO-Stuff's 171-class maps with C = 80 (dataset_cfg.py:12-16):
    things 0..79 -> classes 1..80, 80 ("banner") and 255 -> background, 81..170 not scored.
    One 4 x 4 image; 171-class map rows: 0 (person), 80 (banner), 120 (a stuff class), 255;
    the SCLIP-style instance map: row 0 person (1), the rest background (0).
    Prediction rows: person, bg, person, bg."""
    stuff = np.array([[0] * 4, [80] * 4, [120] * 4, [255] * 4])
    inst = np.array([[1] * 4, [0] * 4, [0] * 4, [0] * 4])
    pred = np.array([[1] * 4, [0] * 4, [1] * 4, [0] * 4])
    names = ["background"] + [f"thing {k}" for k in range(80)]
    ds = Tiny(tmp_path, [(pred, inst)], names, background=True, name="coco-object",
              label_suffix="_instanceTrainIds.png")
    Image.fromarray(stuff.astype(np.uint8)).save(tmp_path / "img0_labelTrainIds.png")
    m, c = both(tmp_path, ds)
    # mmseg on the instance map: bg I 8, label 12, pred 8 -> 8/12; person I 4, label 4, pred 8 -> 4/8
    assert m["mIoU"] == pytest.approx(100 * (8 / 12 + 4 / 8) / 2)
    # cliptrase on the 171 map: row 2 not scored; bg 8/(8+S), person 4/(4+S)
    assert c["mIoU"] == pytest.approx(100 * (8 / (8 + S) + 4 / (4 + S)) / 2)
    (tmp_path / "img0_labelTrainIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="coco-stuff171"):
        evaluate(RedChannel(), ds, tmp_path / "missing", background=True, progress=False, protocol="cliptrase")


def test_cliptrase_label_maps():
    assert cliptrase_label(np.array([0, 79, 80, 81, 170, 255]), 81, coco_stuff=True).tolist() == [1, 80, 0, 255, 255, 0]
    assert cliptrase_label(np.array([255, 255]), 81, coco_stuff=True) is None
    assert cliptrase_label(np.array([120, 255]), 81, coco_stuff=True).tolist() == [255, 0]  # stuff: not skipped
    assert cliptrase_label(np.array([0, 255]), 3, background=True) is None
    assert cliptrase_label(np.array([0, 255, 2]), 3, background=True).tolist() == [0, 0, 2]
    assert cliptrase_label(np.array([0, 255, 7]), 3).tolist() == [0, 255, 255]
    assert cliptrase_label(np.array([255]), 3) is None


def test_the_crop_reaches_the_segmenter_and_bad_protocols_fail(tmp_path):
    ds = Tiny(tmp_path, [(np.zeros((6, 9)), np.zeros((6, 9)))], ["a", "b"])
    seg = RedChannel(short_side=4)
    evaluate(seg, ds, tmp_path / "c", progress=False, protocol="cliptrase")
    evaluate(seg, ds, tmp_path / "c5", progress=False, protocol="cliptrase", size=5)
    assert seg.seen == [(4, 4), (5, 5)]
    with pytest.raises(ValueError, match="protocol"):
        evaluate(seg, ds, tmp_path / "x", progress=False, protocol="cityscapes")


def test_cli_protocol_flag(tiny_clip_dir, tmp_path):
    from ovss.data import ensure_synthetic

    root = tmp_path / "val"
    ensure_synthetic(root, n=3, size=40)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "ovss", "eval", "--dataset", "synthetic-scenes", "--root", root,
                        "--method", "maskclip", "--backbone", tiny_clip_dir / "model.safetensors", "--out", out,
                        "--device", "cpu", "--quiet", "--protocol", "cliptrase", "--protocol-size", "32"],
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "cliptrase" and res["settings"]["protocol_size"] == 32
    assert res["metrics"]["num_images"] + res["metrics"]["skipped_images"] == 3
    assert "center crop" in (out / "results.md").read_text()
