"""The SCLIP / ClearCLIP / NACLIP benchmark presets against their reference configs.

Each table row is what the reference repository's `configs/cfg_<dataset>.py` (plus the
segmentor's defaults) gives, with the line it comes from. Commits: SCLIP b56bd30, ClearCLIP
ad68a40, NACLIP 0cac3a6 (v2); NACLIP v1 rows at 8865082 and cbb720d.
"""

from pathlib import Path

import pytest
import torch

import ovss
from ovss.core.protocol import CLIP_MEAN, CLIP_STD, resized_size, window_boxes
from ovss.heads.attention import AttentionRule
from ovss.heads.dense import Surgery
from ovss.methods import get_method
from ovss.refine.pamr import PAMR
from ovss.text.bank import parse_classes

CLASSNAMES = Path(ovss.__file__).parent / "data" / "classnames"
DATASETS = ["voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff171", "cityscapes",
            "ade20k"]
NAMES = {"voc21": "voc21", "context60": "context60", "coco-object": "coco_object", "voc20": "voc20",
         "context59": "context59", "coco-stuff171": "coco_stuff", "cityscapes": "city_scapes",
         "ade20k": "ade20k"}  # the reference file names: cls_<name>.txt
BACKGROUND = {"voc21", "context60", "coco-object"}

# Columns: short side (= long cap 2048 everywhere: Resize scale=(2048, short)), crop, stride,
# logit_scale, prob_thd, area_thd.
SCLIP = {  # segmentor defaults: clip_segmentor.py:20-21 (crop 224, stride 112, scale 40, prob 0, area None)
    "voc21": (336, 224, 112, 65.0, 0.1, 0.1),  # cfg_voc21.py:17 Resize; :6 logit_scale; :7 prob; :8 area
    "context60": (336, 224, 112, 50.0, 0.1, None),  # cfg_context60.py:16; :6; :7
    "coco-object": (336, 224, 112, 50.0, 0.1, None),  # cfg_coco_object.py:16; :6; :7
    "voc20": (336, 224, 112, 40.0, 0.0, None),  # cfg_voc20.py:14
    "context59": (336, 224, 112, 40.0, 0.0, None),  # cfg_context59.py:14
    "coco-stuff171": (448, 224, 112, 40.0, 0.0, None),  # cfg_coco_stuff164k.py:14 scale=(2048, 448)
    "cityscapes": (560, 224, 112, 40.0, 0.0, None),  # cfg_city_scapes.py:14 scale=(2048, 560)
    "ade20k": (336, 224, 112, 40.0, 0.0, None),  # cfg_ade20k.py:14
}
CLEARCLIP = {  # segmentor defaults: clearclip_segmentor.py:23 (crop 448, stride 224, scale 50, prob 0)
    "voc21": (448, 448, 224, 50.0, 0.5, None),  # cfg_voc21.py:15 Resize scale=(2048, 448); :6 prob_thd
    "context60": (448, 448, 224, 50.0, 0.15, None),  # cfg_context60.py:15; :6
    "coco-object": (448, 448, 224, 50.0, 0.4, None),  # cfg_coco_object.py:15; :6
    "voc20": (448, 448, 224, 50.0, 0.0, None),  # cfg_voc20.py:14
    "context59": (448, 448, 224, 50.0, 0.0, None),  # cfg_context59.py:14
    "coco-stuff171": (448, 448, 224, 50.0, 0.0, None),  # cfg_coco_stuff164k.py:14
    "cityscapes": (448, 224, 224, 50.0, 0.0, None),  # cfg_city_scapes.py:15; :6 slide_crop=224, stride 224
    "ade20k": (448, 448, 224, 50.0, 0.0, None),  # cfg_ade20k.py:14
}
NACLIP = {  # segmentor defaults: naclip.py:21-22 (PAMR 10 x (8, 16), crop 224, stride 112, scale 40, prob 0)
    "voc21": (336, 0, 112, 40.0, 0.1, None),  # cfg_voc21.py:16 Resize; :6 prob_thd; :7 slide_crop=0
    "context60": (336, 224, 112, 40.0, 0.1, None),  # cfg_context60.py:15; :6
    "coco-object": (336, 224, 112, 40.0, 0.1, None),  # cfg_coco_object.py:15; :6
    "voc20": (336, 0, 112, 40.0, 0.0, None),  # cfg_voc20.py:15; :6 slide_crop=0
    "context59": (336, 224, 112, 40.0, 0.0, None),  # cfg_context59.py:14
    "coco-stuff171": (336, 224, 112, 40.0, 0.0, None),  # cfg_coco_stuff164k.py:14 (v2: 336)
    "cityscapes": (560, 224, 112, 40.0, 0.0, None),  # cfg_city_scapes.py:14
    "ade20k": (336, 224, 112, 40.0, 0.0, None),  # cfg_ade20k.py:14
}
NACLIP_EXTRA = {  # the code history and the paper's no-post-processing protocol
    "voc21-v1": (336, 224, 112, 40.0, 0.1, None, True),  # cfg_voc21.py@8865082:6 prob_thd, :15 Resize
    "voc20-v1": (336, 224, 112, 40.0, 0.0, None, True),  # cfg_voc20.py@8865082:14
    "coco-stuff171-v1": (448, 224, 112, 40.0, 0.0, None, True),  # cfg_coco_stuff164k.py@8865082:14
    # cfg_voc21.py@cbb720d:6-7 (prob_thd, area_thd); naclip.py@cbb720d:154 (area rule only without PAMR)
    "voc21-v1-nopamr": (336, 224, 112, 40.0, 0.1, 0.1, False),
    "voc21-nopamr": (336, 0, 112, 40.0, 0.1, None, False),  # eval.py:54-55 --pamr off
    "ade20k-nopamr": (336, 224, 112, 40.0, 0.0, None, False),
}

METHODS = {
    # method: (table, attention, surgery, pad_to_patch, PAMR on, class folder for VOC21/VOC20/COCO-Object)
    "sclip": (SCLIP, AttentionRule(("qq", "kk")), Surgery(True, True), False, False, "sclip"),
    "clearclip": (CLEARCLIP, AttentionRule(("qq",)), Surgery(False, False), True, False, "clearclip"),
    "naclip": (NACLIP, AttentionRule(("kk",), "gaussian", 5.0), Surgery(False, False), False, True, "sclip"),
}
PAMR_10 = (PAMR(steps=10, dilations=(8, 16)),)


def _check(recipe, row, pad, pamr, attention, surgery):
    short, crop, stride, scale, prob, area = row[:6]
    p, d = recipe.protocol, recipe.decision
    assert (p.short_side, p.long_cap, p.crop, p.stride, p.pad_to_patch) == (short, 2048, crop, stride, pad)
    assert (p.mean, p.std) == (CLIP_MEAN, CLIP_STD)
    assert (d.logit_scale, d.prob_thd, d.area_thd) == (scale, prob, area)
    assert recipe.refiners == (PAMR_10 if pamr else ())
    assert recipe.attention == attention and recipe.surgery == surgery
    assert recipe.templates == "imagenet80" and recipe.pos_resize == "scale_factor"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dataset", DATASETS)
def test_benchmark_presets(method, dataset):
    table, attention, surgery, pad, pamr, own = METHODS[method]
    spec = get_method(method)
    preset = spec.presets[dataset]
    _check(spec.resolve(dataset), table[dataset], pad, pamr, attention, surgery)
    folder = own if dataset in ("voc21", "voc20", "coco-object") else "sclip"
    assert preset.classes == f"{folder}/cls_{NAMES[dataset]}.txt"
    assert (CLASSNAMES / preset.classes).is_file()
    assert preset.background == (dataset in BACKGROUND)
    # every number of the preset says where it came from
    assert set(preset.sources) >= set(preset.overrides)
    repo = {"sclip": "SCLIP", "clearclip": "ClearCLIP", "naclip": "NACLIP"}[method]
    assert all(s.startswith(f"{repo} ") and ":" in s for s in preset.sources.values())


@pytest.mark.parametrize("name", sorted(NACLIP_EXTRA))
def test_naclip_history_and_no_pamr_presets(name):
    row = NACLIP_EXTRA[name]
    _check(get_method("naclip").resolve(name), row, False, row[6], AttentionRule(("kk",), "gaussian", 5.0),
           Surgery(False, False))
    assert {f"{d}-nopamr" for d in DATASETS} <= set(get_method("naclip").presets)


def test_method_defaults():
    """The default recipes are the segmentors' own defaults (no benchmark config applied)."""
    _check(get_method("sclip").recipe, (336, 224, 112, 40.0, 0.0, None), False, False,
           AttentionRule(("qq", "kk")), Surgery(True, True))  # clip_segmentor.py:20-21
    _check(get_method("clearclip").recipe, (448, 448, 224, 50.0, 0.0, None), True, False,
           AttentionRule(("qq",)), Surgery(False, False))  # clearclip_segmentor.py:22-23
    _check(get_method("naclip").recipe, (336, 224, 112, 40.0, 0.0, None), False, True,
           AttentionRule(("kk",), "gaussian", 5.0), Surgery(False, False))  # naclip.py:21-22


def test_clearclip_as_shipped():
    """configs/base_config.py:6-7: model_type='vanilla', ignore_residual=True."""
    r = get_method("clearclip").resolve("ade20k-as-shipped")
    assert r.attention == AttentionRule(("qk",)) and r.surgery == Surgery(False, False)
    assert r.protocol == get_method("clearclip").resolve("ade20k").protocol


# A 500x375 VOC image (width 500, height 375) through each reference's test pipeline:
# mmcv keep-ratio rescale to Resize scale=(2048, short), then forward_slide's window loop.
#   method/preset: (resized (h, w), windows (rows, columns), first window, last window)
VOC_500x375 = {
    ("sclip", "voc21"): ((336, 448), (2, 3), (0, 224, 0, 224), (112, 336, 224, 448)),
    ("naclip", "voc21"): ((336, 448), (1, 1), (0, 336, 0, 448), (0, 336, 0, 448)),  # whole image
    ("naclip", "voc21-v1"): ((336, 448), (2, 3), (0, 224, 0, 224), (112, 336, 224, 448)),
    ("clearclip", "voc21"): ((448, 597), (1, 2), (0, 448, 0, 448), (0, 448, 149, 597)),
    # Cityscapes 2048x1024
    ("sclip", "cityscapes"): ((560, 1120), (4, 9), (0, 224, 0, 224), (336, 560, 896, 1120)),
    ("clearclip", "cityscapes"): ((448, 896), (2, 4), (0, 224, 0, 224), (224, 448, 672, 896)),
}
SIZES = {"voc21": (375, 500), "voc21-v1": (375, 500), "cityscapes": (1024, 2048)}


def _mmcv_rescale(h, w, scale):
    # mmcv.imrescale / rescale_size with keep_ratio: factor = min(long / max, short / min),
    # new side = int(side * factor + 0.5)
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def _reference_windows(h_img, w_img, crop, stride):
    # the loop of SCLIP clip_segmentor.py:96-108 (same in NACLIP and ClearCLIP)
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out, (h_grids, w_grids)


@pytest.mark.parametrize("key", sorted(VOC_500x375))
def test_resize_and_window_grid(key):
    method, preset = key
    size, grid, first, last = VOC_500x375[key]
    p = get_method(method).resolve(preset).protocol
    h, w = SIZES[preset]
    assert resized_size(h, w, p.short_side, p.long_cap) == size
    assert _mmcv_rescale(h, w, (p.long_cap, p.short_side)) == size
    boxes = window_boxes(*size, p.crop, p.stride)
    assert len(boxes) == grid[0] * grid[1]
    assert boxes[0] == first and boxes[-1] == last
    if p.crop > 0:
        ref, ref_grid = _reference_windows(*size, p.crop, p.stride)
        assert boxes == ref and ref_grid == grid
        # every window is a whole number of patches, so ClearCLIP's padding never triggers here
        assert all((y2 - y1) % 16 == 0 and (x2 - x1) % 16 == 0 for y1, y2, x1, x2 in boxes)


@pytest.mark.parametrize("folder,name", [(d.name, f.name) for d in sorted(CLASSNAMES.iterdir()) if d.is_dir()
                                         for f in sorted(d.glob("*.txt"))])
def test_class_files_parse(folder, name):
    path = CLASSNAMES / folder / name
    lines = path.read_text().split("\n")
    counts = {"voc21": 21, "context60": 60, "coco_object": 81, "voc20": 20, "context59": 59,
              "coco_stuff": 171, "city_scapes": 19, "ade20k": 150, "context459": 459}
    assert len(lines) == counts[name[4:-4]]  # no trailing newline in any of them
    if (folder, name) in (("sclip", "cls_coco_object.txt"), ("proxyclip", "cls_coco_object.txt"),
                          ("lposs", "cls_coco_object.txt")):
        # 'bed' is one of class 0's stuff words and class 60 (line 61): a user's list like that is
        # refused, the preset reads it as the reference does and the tie goes to class 0
        with pytest.raises(ValueError, match="bed"):
            parse_classes(path)
        spec = parse_classes(path, allow_duplicates=True)
        assert spec.synonyms[0].count("bed") == 1 and spec.synonyms[60] == ("bed",)
        probs = torch.zeros(len(spec.queries), 1, 1)
        probs[[q for q, c in enumerate(spec.query_to_class) if spec.queries[q] == "bed"]] = 5.0
        from ovss.core.decision import class_probabilities

        labels = class_probabilities(probs, spec.query_to_class, len(spec), 1.0).argmax(0)
        assert labels.item() == 0
        return
    spec = parse_classes(path)
    assert len(spec) == len(lines)
    if folder == "sclip" and name in ("cls_voc21.txt", "cls_voc20.txt"):
        assert len(spec.queries) == len(spec) + (25 if name == "cls_voc21.txt" else 0) + 6 + 4
    if folder == "lposs":  # ';'-separated queries only in class 0 of VOC21 (26 words) and COCO-Object
        assert len(spec.queries) == len(spec) + (25 if name == "cls_voc21.txt" else 0)


def test_preset_classes_from_load(tiny_clip_dir):
    seg = ovss.load("naclip", backbone=str(tiny_clip_dir / "model.safetensors"), preset="voc21", device="cpu")
    assert seg.preset_classes == str(CLASSNAMES / "sclip" / "cls_voc21.txt")
    assert seg.preset_class_spec().background and len(seg.preset_class_spec()) == 21
    seg = ovss.load("sclip", backbone=str(tiny_clip_dir / "model.safetensors"), preset="coco-object", device="cpu")
    assert len(seg.preset_class_spec()) == 81
    seg = ovss.load("naclip", backbone=str(tiny_clip_dir / "model.safetensors"), device="cpu")
    assert seg.preset_classes is None


def test_cli_segment_uses_the_preset_class_file(tiny_clip_dir, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from ovss.apps.cli import main

    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["segment", str(img), "--method", "clearclip", "--preset", "voc21", "--backbone",
                 str(tiny_clip_dir / "model.safetensors"), "--out", str(out), "--device", "cpu",
                 "--save", "json"]) == 0
    meta = json.loads((out / "a.json").read_text())
    names = [c["name"] for c in meta["classes"]]
    assert len(names) == 21 and names[0] == "background" and names[-1] == "tvmonitor"
    assert main(["segment", str(img), "--method", "clearclip", "--backbone",
                 str(tiny_clip_dir / "model.safetensors"), "--out", str(out)]) != 0
    assert "give the classes" in capsys.readouterr().err
