"""Benchmark readers on tiny copies of each real on-disk layout: listing order, label decoding and
mapping (palette indices, reduce_zero_label, 255 ignore), metadata, and the missing-path messages."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from ovss.data import (
    DATASETS,
    Sample,
    SegDataset,
    create_dataset,
    ensure_synthetic,
    list_datasets,
    load_meta,
    read_label,
)

H, W = 8, 10
BENCHMARKS = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco-stuff171": 171,
              "coco-object": 81, "cityscapes": 19, "ade20k": 150}


def jpg(path, k=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 40 * k, np.uint8)).save(path, quality=90)


def png_l(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, np.uint8)).save(path)


def png_voc(path, arr):
    """A VOC-style palette PNG: indices stored, colours from the VOC colour map (255 = (224, 224, 192))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(arr, np.uint8))  # "L"; putpalette makes it "P", same values
    pal = np.zeros((256, 3), np.uint8)
    pal[:21] = load_meta("voc21")["palette"]
    pal[255] = (224, 224, 192)
    im.putpalette(pal.tobytes())
    im.save(path)


def label(values, border=None):
    """An HxW map cycling through `values`, optionally with a 1-pixel border of `border`."""
    a = np.resize(np.asarray(values, np.uint8), H * W).reshape(H, W)
    if border is not None:
        a[0, :] = a[-1, :] = a[:, 0] = a[:, -1] = border
    return a


def make_voc(tmp_path, stems=("2007_000129", "2007_000033", "2007_000042")):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    maps = {}
    for k, s in enumerate(stems):
        jpg(root / "JPEGImages" / f"{s}.jpg", k)
        maps[s] = label([0, 15, k + 1], border=255)
        png_voc(root / "SegmentationClass" / f"{s}.png", maps[s])
    jpg(root / "JPEGImages" / "2007_999999.jpg")  # present but not listed: must not appear
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems) + "\n\n")
    return root, maps


# ---------------------------------------------------------------------------------------- metadata


def test_registry_and_metadata():
    assert set(BENCHMARKS) | {"folder", "synthetic-scenes"} == set(list_datasets())
    assert list_datasets("context*") == ["context59", "context60"]
    for name, n in BENCHMARKS.items():
        meta = load_meta(name)
        assert len(meta["classes"]) == n and len(meta["palette"]) == n, name
        assert meta["reduce_zero_label"] == (name in ("voc20", "context59", "ade20k")), name
        assert meta["ignore_index"] == 255 and meta["source"], name
        assert DATASETS.get(name).reduce_zero_label == meta["reduce_zero_label"]
    with pytest.raises(KeyError, match="Did you mean voc21"):
        create_dataset("voc2l", "x")
    ade, cs, c60, co = (load_meta(n)["classes"] for n in ("ade20k", "coco-stuff171", "context60", "coco-object"))
    assert ade[7] == "bed" and ade[0] == "wall" and ade[-1] == "flag"
    assert cs[0] == "person" and cs[79] == "toothbrush" and cs[80] == "banner" and cs[170] == "wood"
    assert co == ["background"] + cs[:80]
    assert c60[0] == "background" and c60[1] == "aeroplane" and c60[-1] == "wood"
    assert load_meta("context59")["classes"] == c60[1:]
    assert load_meta("voc20")["classes"] == load_meta("voc21")["classes"][1:]
    voc = np.array(load_meta("voc21")["palette"])
    assert voc[15].tolist() == [192, 128, 128] and voc[20].tolist() == [0, 64, 128]
    assert np.array_equal(np.array(load_meta("voc20")["palette"]), voc[1:])
    assert load_meta("cityscapes")["palette"][0] == [128, 64, 128]
    assert load_meta("ade20k")["palette"][0] == [120, 120, 120]
    assert load_meta("coco-object")["palette"][0] == [0, 0, 0]
    assert len(load_meta("context60")["detail_category_ids"]) == 60


# ----------------------------------------------------------------------------------------- readers


def test_voc21_and_voc20(tmp_path):
    root, maps = make_voc(tmp_path)
    ds = create_dataset("voc21", root)
    assert isinstance(ds, SegDataset) and ds.name == "voc21" and ds.split == "val"
    assert [s.name for s in ds] == ["2007_000129", "2007_000033", "2007_000042"]  # list-file order
    s = ds[1]
    assert s == Sample("2007_000033", root / "JPEGImages" / "2007_000033.jpg",
                       root / "SegmentationClass" / "2007_000033.png")
    name, img, lab = ds[-1]
    assert (name, img.name, lab.name) == ("2007_000042", "2007_000042.jpg", "2007_000042.png")
    assert ds.num_classes == 21 and ds.ignore_index == 255 and ds.background and not ds.reduce_zero_label
    assert ds.class_names[15] == "person" and ds.palette.shape == (21, 3) and ds.palette.dtype == np.uint8
    got = ds.load_label(1)
    assert got.dtype == np.uint8 and np.array_equal(got, maps["2007_000033"])  # indices, not colours
    assert set(np.unique(got)) == {0, 2, 15, 255}
    assert ds.load_image(0).shape == (H, W, 3)
    with pytest.raises(IndexError):
        ds[3]

    ds20 = create_dataset("voc20", root)
    assert ds20.num_classes == 20 and not ds20.background and ds20.reduce_zero_label
    assert [s.name for s in ds20] == [s.name for s in ds]
    raw = maps["2007_000033"]
    exp = np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1))
    got20 = ds20.load_label(1)
    assert np.array_equal(got20, exp) and set(np.unique(got20)) == {1, 14, 255}


def test_context60_and_context59(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2010"
    stems = ["2008_000008", "2008_000002"]
    maps = {s: label(np.arange(k, 60, 3)) for k, s in enumerate(stems)}
    for s in stems:
        jpg(root / "JPEGImages" / f"{s}.jpg")
        png_l(root / "SegmentationClassContext" / f"{s}.png", maps[s])
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000008\n2008_000002\n")
    c60 = create_dataset("context60", root)
    assert [s.name for s in c60] == stems and c60.num_classes == 60 and c60.background
    assert np.array_equal(c60.load_label(0), maps[stems[0]])  # every pixel scored, 0 = background
    c59 = create_dataset("context59", root)
    assert c59.num_classes == 59 and c59.reduce_zero_label and not c59.background
    raw = maps[stems[0]]
    assert 0 in raw and np.array_equal(c59.load_label(0), np.where(raw == 0, 255, raw - 1))


def make_coco(tmp_path, suffix):
    root = tmp_path / "coco_stuff164k"
    stems = ["000000000632", "000000000139", "000000000285"]
    maps = {}
    for k, s in enumerate(stems):
        jpg(root / "images" / "val2017" / f"{s}.jpg", k)
        maps[s] = label([0, 79, 80, 170, 255, k])
        png_l(root / "annotations" / "val2017" / f"{s}{suffix}", maps[s])
        png_l(root / "annotations" / "val2017" / f"{s}.png", np.full((H, W), 181))  # raw map: not a label here
    jpg(root / "images" / "val2017" / ".000000000001.jpg")  # dot-files are skipped, as in mmengine
    return root, maps


@pytest.mark.parametrize("name,suffix", [("coco-stuff171", "_labelTrainIds.png"),
                                         ("coco-object", "_instanceTrainIds.png")])
def test_coco(tmp_path, name, suffix):
    root, maps = make_coco(tmp_path, suffix)
    ds = create_dataset(name, root)
    assert [s.name for s in ds] == ["000000000139", "000000000285", "000000000632"]  # sorted scan
    assert ds[0].label_path == root / "annotations" / "val2017" / f"000000000139{suffix}"
    assert ds.background == (name == "coco-object") and not ds.reduce_zero_label
    assert np.array_equal(ds.load_label(2), maps["000000000632"])
    assert create_dataset(name, root, split="val2017")[0].name == "000000000139"


def test_cityscapes_recursive(tmp_path):
    root = tmp_path / "cityscapes"
    names = ["munster/munster_000000_000019", "frankfurt/frankfurt_000001_000058",
             "frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
    maps = {}
    for k, n in enumerate(names):
        jpg(root / "leftImg8bit" / "val" / f"{n}_leftImg8bit.png", k)
        maps[n] = label(list(range(19)) + [255])
        png_l(root / "gtFine" / "val" / f"{n}_gtFine_labelTrainIds.png", maps[n])
        png_l(root / "gtFine" / "val" / f"{n}_gtFine_labelIds.png", np.full((H, W), 7))
        png_l(root / "gtFine" / "val" / f"{n}_gtFine_color.png", np.zeros((H, W)))
    ds = create_dataset("cityscapes", root)
    assert [s.name for s in ds] == sorted(names)
    assert ds[0].image_path == root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png"
    assert ds[0].label_path == (root / "gtFine" / "val" / "frankfurt" /
                                "frankfurt_000000_000294_gtFine_labelTrainIds.png")
    assert np.array_equal(ds.load_label(3), maps["munster/munster_000000_000019"])
    assert ds.num_classes == 19 and ds.palette[0].tolist() == [128, 64, 128]


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for k, s in enumerate(["ADE_val_00000002", "ADE_val_00000001"]):
        jpg(root / "images" / "validation" / f"{s}.jpg", k)
        png_l(root / "annotations" / "validation" / f"{s}.png", label([0, 1, 2, 150, 255]))
    (root / "objectInfo150.txt").write_text("not an image\n")
    ds = create_dataset("ade20k", root)
    assert [s.name for s in ds] == ["ADE_val_00000001", "ADE_val_00000002"]
    got = ds.load_label(0)
    assert np.array_equal(got, label([255, 0, 1, 149, 255]))  # 0 "other" -> 255, v -> v - 1, 255 stays
    assert ds.num_classes == 150 and ds.class_names[7] == "bed"
    assert create_dataset("ade20k", root, split="validation")[0].name == "ADE_val_00000001"


def test_read_label_checks(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_label(tmp_path / "rgb.png")
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="wrap"):
        read_label(tmp_path / "wide.png")
    Image.fromarray(np.array([[0, 200, 255]], np.uint16)).save(tmp_path / "narrow.png")
    got = read_label(tmp_path / "narrow.png", reduce_zero_label=True)
    assert got.dtype == np.uint8 and got.tolist() == [[255, 199, 255]]
    with pytest.raises(FileNotFoundError, match="label file not found"):
        read_label(tmp_path / "none.png")


# ------------------------------------------------------------------------------------------ errors


def test_missing_list_file_message(tmp_path):
    root, _ = make_voc(tmp_path)
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError) as e:
        create_dataset("voc21", root)
    assert str(e.value).startswith(
        f"VOC21: missing {root}/ImageSets/Segmentation/val.txt; expected VOCdevkit/VOC2012 with JPEGImages/, "
        "SegmentationClass/, ImageSets/Segmentation/val.txt")


def test_missing_root_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"ADE20K: missing {tmp_path / 'nope'}; expected "
                                                          "ADEChallengeData2016 with images/validation/")):
        create_dataset("ade20k", tmp_path / "nope")
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(f"Cityscapes: missing {root / 'gtFine' / 'val'}; "
                                                          "expected cityscapes with leftImg8bit/val/, gtFine/val/")):
        create_dataset("cityscapes", root)
    ctx = tmp_path / "VOC2010"
    (ctx / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="SegmentationClassContext; .*ovss prepare context"):
        create_dataset("context59", ctx)


def test_parent_folder_hint(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"(found {tmp_path / 'VOCdevkit' / 'VOC2012'}: pass")):
        create_dataset("voc21", tmp_path)


def test_listed_image_without_label_or_image(tmp_path):
    root, _ = make_voc(tmp_path)
    (root / "SegmentationClass" / "2007_000033.png").unlink()
    (root / "SegmentationClass" / "2007_000042.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        create_dataset("voc20", root)
    msg = str(e.value)
    assert msg.startswith(f"VOC20: missing label {root / 'SegmentationClass' / '2007_000033.png'} for image "
                          f"{root / 'JPEGImages' / '2007_000033.jpg'}")
    assert "(and 1 more images without labels)" in msg
    (root / "JPEGImages" / "2007_000129.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"missing image {root / 'JPEGImages' / '2007_000129.jpg'}, "
                                                          "listed in")):
        create_dataset("voc21", root)


def test_unconverted_labels_point_to_prepare(tmp_path):
    root, _ = make_coco(tmp_path, "_labelTrainIds.png")
    with pytest.raises(FileNotFoundError) as e:
        create_dataset("coco-object", root)  # only raw maps and labelTrainIds: instanceTrainIds not made yet
    assert "000000000139_instanceTrainIds.png" in str(e.value) and "ovss prepare coco-object" in str(e.value)
    city = tmp_path / "cityscapes"
    jpg(city / "leftImg8bit" / "val" / "ulm" / "ulm_000000_000001_leftImg8bit.png")
    png_l(city / "gtFine" / "val" / "ulm" / "ulm_000000_000001_gtFine_labelIds.png", np.zeros((H, W)))
    with pytest.raises(FileNotFoundError, match="source label ulm_000000_000001_gtFine_labelIds.png is there: "
                                                ".*ovss prepare cityscapes"):
        create_dataset("cityscapes", city)


def test_empty_scan_and_bad_split(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no \*\.jpg images under"):
        create_dataset("ade20k", root)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        create_dataset("ade20k", root, split="test")


# ------------------------------------------------------------------------------------ folder layouts


def test_folder_dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "classes.txt").parent.mkdir()
    (root / "classes.txt").write_text("cat, kitty\ndog\n")
    for k, n in enumerate(["b", "a"]):
        jpg(root / "images" / f"{n}.jpg", k)
        png_l(root / "masks" / f"{n}.png", np.full((H, W), k))
    ds = create_dataset("folder", root)
    assert ds.name == "folder" and ds.class_names == ["cat", "dog"] and ds.classes == [["cat", "kitty"], ["dog"]]
    assert ds.num_classes == 2 and ds.palette.shape == (2, 3) and ds.ignore_index == 255
    name, img, mask = ds[0]
    assert (name, img, mask) == ("a", root / "images" / "a.jpg", root / "masks" / "a.png")
    assert ds.load_label(0).tolist() == np.ones((H, W)).tolist() and ds.load_label(-1).max() == 0
    with pytest.raises(FileNotFoundError, match="dataset root not found"):
        create_dataset("folder", tmp_path / "none")


def test_synthetic_scenes(tmp_path):
    from ovss.data.synthetic import CLASSES, PALETTE

    root = tmp_path / "syn"
    with pytest.raises(FileNotFoundError, match="ensure_synthetic"):
        create_dataset("synthetic-scenes", root)
    assert ensure_synthetic(root, n=2, size=32) == root
    ds = create_dataset("synthetic-scenes", root)
    assert len(ds) == 2 and ds.class_names == CLASSES and ds.palette.tolist() == [list(c) for c in PALETTE]
    assert ds.load_label(0).shape == (32, 32) and ds.load_image(1).shape == (32, 32, 3)
    before = ds[0].image_path.stat().st_mtime_ns
    ensure_synthetic(root, n=2, size=32)  # complete: nothing rewritten
    assert ds[0].image_path.stat().st_mtime_ns == before
