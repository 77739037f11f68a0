"""Label conversions checked value by value on tiny inputs in each source format, plus skip-existing,
atomic outputs, the Detail-free PASCAL-Context route (RLE goldens made with pycocotools) and the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from ovss.data import create_dataset
from ovss.data.prepare import (
    add_prepare_parser,
    apply_lut,
    coco_object_lut,
    convert_cityscapes,
    convert_coco_object,
    convert_coco_stuff,
    convert_context,
    rle_decode,
)

UNUSED = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]  # COCO thing ids without masks (raw value = id - 1)
ALL_RAW = list(range(182)) + [255]


def png_l(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, np.uint8)).save(path)


def jpg(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def read(path):
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.array(im)


def expected_stuff(v):
    if v == 255 or v in UNUSED:
        return 255
    return v - sum(u < v for u in UNUSED)  # position among the used raw values


def make_coco_raw(tmp_path):
    root = tmp_path / "coco_stuff164k"
    raw_all = np.array(ALL_RAW, np.uint8).reshape(3, 61)  # every raw value once
    fixture = np.array([[0, 89, 91], [181, 255, 11]], np.uint8)  # benchmarks.md section 6 + an unused id
    for stem, arr in (("000000000139", raw_all), ("000000000285", fixture)):
        png_l(root / "annotations" / "val2017" / f"{stem}.png", arr)
        jpg(root / "images" / "val2017" / f"{stem}.jpg", *arr.shape)
    return root, raw_all, fixture


def test_coco_stuff_values_and_skip(tmp_path):
    root, raw_all, _ = make_coco_raw(tmp_path)
    with pytest.warns(UserWarning, match="written as 255"):
        rep = convert_coco_stuff(root, progress=False)
    assert (rep.written, rep.skipped) == (2, 0) and len(rep.unknown) == 2
    out_dir = root / "annotations" / "val2017"
    got = read(out_dir / "000000000139_labelTrainIds.png")
    assert got.tolist() == [[expected_stuff(int(v)) for v in row] for row in raw_all]
    assert sorted(set(got.ravel().tolist()) - {255}) == list(range(171))
    assert read(out_dir / "000000000285_labelTrainIds.png").tolist() == [[0, 79, 80], [170, 255, 255]]
    # spot values of the mmseg table: raw 12 (stop sign) -> 11, raw 26 -> 24, raw 91 (banner) -> 80
    assert [got.ravel()[v] for v in (10, 12, 26, 66, 69, 89, 91)] == [10, 11, 24, 60, 61, 79, 80]
    assert not list(out_dir.glob(".*"))  # no temp files left behind

    # skip-existing: a rerun writes nothing; a file already there is left alone unless overwrite=True
    out = out_dir / "000000000285_labelTrainIds.png"
    png_l(out, np.zeros((2, 3)))
    rep = convert_coco_stuff(root, progress=False)
    assert (rep.written, rep.skipped) == (0, 2) and read(out).max() == 0
    with pytest.warns(UserWarning):
        rep = convert_coco_stuff(root, progress=False, overwrite=True)
    assert rep.written == 2 and read(out).tolist() == [[0, 79, 80], [170, 255, 255]]

    ds = create_dataset("coco-stuff171", root)  # the readers take the converted layout as is
    assert [s.name for s in ds] == ["000000000139", "000000000285"]
    assert ds.load_label(1).tolist() == [[0, 79, 80], [170, 255, 255]]


def test_coco_stuff_strict_and_missing(tmp_path):
    root, _, _ = make_coco_raw(tmp_path)
    with pytest.raises(ValueError, match=r"000000000139.png: values \[11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90\] are not in the conversion table"):
        convert_coco_stuff(root, progress=False, strict=True, splits=["val2017"])
    with pytest.raises(FileNotFoundError, match="annotations/train2017"):
        convert_coco_stuff(root, progress=False, splits=["train2017"])


def test_coco_object_from_raw_and_trainids(tmp_path):
    root, raw_all, _ = make_coco_raw(tmp_path)
    out = tmp_path / "coco_object"
    with pytest.warns(UserWarning):
        rep = convert_coco_object(root, out, progress=False)
    assert rep.written == 2
    got = read(out / "annotations" / "val2017" / "000000000285_instanceTrainIds.png")
    assert got.tolist() == [[1, 80, 0], [0, 0, 255]]  # person, toothbrush, stuff, stuff, unlabelled, unused
    got = read(out / "annotations" / "val2017" / "000000000139_instanceTrainIds.png")
    exp = [[(255 if v in UNUSED else 0 if v > 90 else expected_stuff(v) + 1) for v in row] for row in raw_all.tolist()]
    assert got.tolist() == exp and sorted(set(got.ravel().tolist()) - {255}) == list(range(81))
    assert (out / "images" / "val2017" / "000000000139.jpg").is_file()  # linked, not copied
    ds = create_dataset("coco-object", out)
    assert len(ds) == 2 and ds.load_label(1).tolist() == [[1, 80, 0], [0, 0, 255]]

    # from COCO-Stuff trainIds (auto picks them when no raw maps are there): same labels on valid values
    only_ids = tmp_path / "ids"
    t = np.array([list(range(171)) + [255]], np.uint8)
    png_l(only_ids / "annotations" / "val2017" / "000000000001_labelTrainIds.png", t)
    rep = convert_coco_object(only_ids, progress=False)
    got = read(only_ids / "annotations" / "val2017" / "000000000001_instanceTrainIds.png")
    assert got.ravel().tolist() == list(range(1, 81)) + [0] * 91 + [0]
    valid = [v for v in ALL_RAW if v not in UNUSED]
    lut_raw, lut_ids = coco_object_lut("raw"), coco_object_lut("trainids")
    assert all(lut_raw[v] == lut_ids[expected_stuff(v)] for v in valid)


def test_cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    png_l(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", ids)
    png_l(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_instanceIds.png", ids)  # not an input
    jpg(root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png", 2, 17)
    rep = convert_cityscapes(root, progress=False)
    assert (rep.written, rep.skipped, rep.unknown) == (1, 0, {})
    got = read(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png").ravel()
    train = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert got.tolist() == [train.get(i, 255) for i in range(34)]
    assert convert_cityscapes(root, progress=False).skipped == 1
    ds = create_dataset("cityscapes", root)
    assert [s.name for s in ds] == ["lindau/lindau_000000_000019"]
    with pytest.raises(FileNotFoundError, match="gtFine/train"):
        convert_cityscapes(root, progress=False, splits=["train"])


# ---- PASCAL-Context: compressed RLE strings below were produced by pycocotools 2.0.11 `mask.encode`

RLE_A = {"size": [6, 8], "counts": "01<2G00000004N"}
RLE_B = {"size": [10, 12], "counts": "<370l0i1"}


def mask_a():
    a = np.zeros((6, 8), np.uint8)
    a[1:4, 2:7] = 1
    a[5, 7] = 1
    a[0, 0] = 1
    return a


def mask_b():
    b = np.zeros((10, 12), np.uint8)
    b[:, 6:] = 1
    b[2:5, 1:3] = 1
    return b


def test_rle_decode_goldens():
    assert np.array_equal(rle_decode(RLE_A), mask_a())
    assert np.array_equal(rle_decode(RLE_B), mask_b())
    assert rle_decode({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [[0, 1, 0], [1, 0, 0]]  # column-major
    with pytest.raises(ValueError, match="do not cover"):
        rle_decode({"size": [2, 3], "counts": [1, 2]})


def make_context_json(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    images = [
        {"image_id": 20080008, "file_name": "2008_000008.jpg", "height": 6, "width": 8, "phase": "val"},
        {"image_id": 20080002, "file_name": "2008_000002.jpg", "height": 10, "width": 12, "phase": "val"},
        {"image_id": 20080003, "file_name": "2008_000003.jpg", "height": 4, "width": 5, "phase": "val"},
        {"image_id": 20080001, "file_name": "2008_000001.jpg", "height": 4, "width": 5, "phase": "train"},
    ]
    full = {"size": [6, 8], "counts": [0, 48]}
    anns = [
        {"id": 1, "image_id": 20080008, "category_id": 458, "segmentation": full},  # wood everywhere ...
        {"id": 2, "image_id": 20080008, "category_id": 2, "segmentation": RLE_A},  # ... then aeroplane on top
        {"id": 3, "image_id": 20080002, "category_id": 440, "segmentation": RLE_B},  # wall
        {"id": 4, "image_id": 20080002, "category_id": 7, "segmentation": {"size": [10, 12], "counts": [0, 1, 119]}},
        {"id": 5, "image_id": 20080001, "category_id": 2, "segmentation": {"size": [4, 5], "counts": [0, 20]}},
    ]
    data = {"images": images, "annos_segmentation": anns, "categories": []}
    voc.mkdir(parents=True)
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    for img in images:
        jpg(voc / "JPEGImages" / img["file_name"], img["height"], img["width"])
    return voc


def test_context(tmp_path):
    voc = make_context_json(tmp_path)
    with pytest.warns(UserWarning, match="2008_000002.jpg"):
        rep = convert_context(voc / "trainval_merged.json", progress=False)
    assert (rep.written, rep.skipped) == (3, 0)
    lab = voc / "SegmentationClassContext"
    assert np.array_equal(read(lab / "2008_000008.png"), np.where(mask_a() == 1, 1, 59))  # later ann wins
    exp_b = np.where(mask_b() == 1, 56, 0)
    exp_b[0, 0] = 255  # category 7 is not one of the 59 classes (mmseg would assert): written as ignore
    assert np.array_equal(read(lab / "2008_000002.png"), exp_b)
    assert read(lab / "2008_000003.png").tolist() == np.zeros((4, 5)).tolist()  # no annotations: background
    assert not (lab / "2008_000001.png").exists()  # train phase not asked for
    val_txt = voc / "ImageSets" / "SegmentationContext" / "val.txt"
    assert val_txt.read_text() == "2008_000002\n2008_000003\n2008_000008\n"

    c60, c59 = create_dataset("context60", voc), create_dataset("context59", voc)
    assert [s.name for s in c60] == ["2008_000002", "2008_000003", "2008_000008"]
    assert c60.class_names[1] == "aeroplane" and c60.class_names[56] == "wall" and c60.class_names[59] == "wood"
    assert np.array_equal(c59.load_label(2), np.where(mask_a() == 1, 0, 58))

    # skip-existing: the val files are not redone (so no warning); the train split on demand
    rep = convert_context(voc, progress=False, splits=["val", "train"], strict=False)
    assert (rep.written, rep.skipped) == (1, 3)
    assert read(lab / "2008_000001.png").tolist() == np.ones((4, 5)).tolist()
    with pytest.raises(ValueError, match=r"values \[7\]"):
        convert_context(voc, progress=False, strict=True, overwrite=True)
    with pytest.raises(ValueError, match="no images of phase 'test'"):
        convert_context(voc, progress=False, splits=["test"])


def test_apply_lut_out_of_range():
    lut = np.array([5, -1, 7], np.int16)
    out, unknown = apply_lut(np.array([[0, 1, 2, 9]]), lut)
    assert out.tolist() == [[5, 255, 7, 255]] and unknown == [1, 9]


def test_cli(tmp_path, capsys):
    root, _, _ = make_coco_raw(tmp_path)
    parser = argparse.ArgumentParser(prog="ovss")
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", "coco-stuff", "--src", str(root), "--quiet"])
    with pytest.warns(UserWarning):
        assert args.func(args) == 0
    assert "wrote 2 file(s)" in capsys.readouterr().out
    assert (root / "annotations" / "val2017" / "000000000139_labelTrainIds.png").is_file()
    voc = make_context_json(tmp_path)
    args = parser.parse_args(["prepare", "context59", "--src", str(voc), "--quiet"])
    with pytest.warns(UserWarning):
        assert args.func(args) == 0
    assert (voc / "ImageSets" / "SegmentationContext" / "val.txt").is_file()
    args = parser.parse_args(["prepare", "synthetic-scenes", "--out", str(tmp_path / "syn"), "--n", "1", "--quiet"])
    assert args.func(args) == 0 and len(create_dataset("synthetic-scenes", tmp_path / "syn")) == 1
    with pytest.raises(ValueError, match="needs --src"):
        args = parser.parse_args(["prepare", "cityscapes"])
        args.func(args)
