"""LPOSS and LPOSS+ (Stojnic, Kalantidis, Tolias, CVPR 2025): label propagation over the patches
of all windows jointly (one graph per image), then (LPOSS+) over pixels.

Reference: vladan-stojnic/LPOSS@e489a7445528922ddfe4e39631ef2fe34827c873.
- seeds (models/maskclip/maskclip.py:50-91, 185-191; lposs.py:121-140): MaskCLIP's value path on the last
  block WITH the residual and the FFN (`extract_v`: out_proj(v) + x, + mlp(ln_2)), ln_post, the
  projection (decode head's 1x1 conv), class token dropped, L2-normalised; positional embedding
  resized to the crop's grid bicubically to the exact size (mmseg `resize`, maskclip.py:54-66,
  93-120); Y = cosine with the unit text embeddings (lposs_eval.py:305).
- graph (lposs_eval.py:50-86): DINO ViT-B/16 (v1) last block's attention values (qkv hook,
  heads concatenated, class token dropped, L2-normalised; lposs.py:52-105, configs/lposs.yaml
  `enc_type_feats: v`), kNN k = 400 (self included), weight max(0, s)^gamma * exp(-sigma *
  |p_i - p_j|^eta) on patch centres in the resized image (window offset + 8 + 16 index),
  gamma 3, sigma 0.01, eta (pix_dist_pow) 1; W + W^T; D^-1/2 W D^-1/2, diagonal removed.
- propagation: (I - 0.95 W) Z = Y per class by CG, x0 = 0, tol 1e-6, 10 iterations (89-103).
- windows 224/112 (segmentation/configs/_base_/datasets/*.py `test_cfg`), all in one graph; each
  window's Z bilinear to the window, overlaps averaged (lposs_eval.py:307-341).
- LPOSS+ (configs/lposs_plus.yaml `pixel_refine: true`, tau 0.01, r 13): the refiner
  `lposs_plus` at the network resolution (`ovss.refine.lposs`), then the resize to the original
  size (lines 344-362).
- resize: short side 448, long side <= 2048 (`img_scale=(2048, 448)`); decision: argmax of the
  propagated scores, no threshold; background synonyms by max (`reduce_to_true_classes`,
  lines 352-354, 365-370) on the network-size scores, BEFORE the bilinear resize to the original
  size (lines 356-361): `decision.reduce="before_resize"` (every other method here reduces after
  the resize; the order matters only for classes with several queries at a resized output).
Backbones: OpenCLIP ViT-B/16 laion2b_s34b_b88k (`configs/maskclip.yaml`) and DINO ViT-B/16.

In ovss the patch stage is the head `lposs` (`LPOSSHead.joint_slide`), which replaces the
per-window readout: it needs every window's features at once.

Class lists: LPOSS's own (its dataset classes' CLASSES, shipped as data/classnames/lposs/); VOC21
and COCO-Object class 0 are its stuff words, Context-60's the word "background"; no thresholds.
LPOSS evaluates on these 8 benchmarks only (configs/lposs.yaml:27-35 `evaluate.task`), not ADE20K-847.

Precision, as the reference (see ovss.ops.graphs): both Laplacians are built in float32 (degrees,
D^-1/2, products, alpha * W) and solved in float64; the patch scores stay float64 until the
windows are added into the float32 canvas; LPOSS+'s float64 scores are resized to the original
size in float64 (`inference.upsample`). Input: the 0-1 image normalised with OpenAI's 0-1
mean/std (`protocol.mean` / `std` are those times 255, not the mmseg configs' 122.771 ..., which
are 5e-6 off); the head recovers the 0-1 image from the network input and normalises it with the
0-1 constants for CLIP and ImageNet's for DINO, as there.

Not reproduced: FAISS's GPU kNN and CuPy (exact top-k and a column-batched CG of the same steps
here); the order of the float32 degree sums (cuSPARSE's there, a rounded float64 sum here;
tests/refine/test_lposs_plus.py shows what that order is worth).
"""

from __future__ import annotations

from ..core.decision import Decision
from ..core.protocol import Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from ..heads.lposs import OPENAI_MEAN, OPENAI_STD, LPOSSHead
from ..refine.lposs import LPOSSPlus

_EVAL = "LPOSS segmentation/evaluation/lposs_eval.py:{}"
_DS = "LPOSS segmentation/configs/_base_/datasets/{}.py:{}"
_CFG_LP = "LPOSS configs/lposs.yaml"
_CFG_LPP = "LPOSS configs/lposs_plus.yaml"

_DATASETS = {  # preset -> (LPOSS dataset config file, line of img_scale, line of test_cfg)
    "voc21": ("pascal_voc12", 35, 64), "voc20": ("pascal_voc12_20", 10, 33),
    "context60": ("pascal_context", 9, 30), "context59": ("pascal_context59", 10, 33),
    "coco-stuff171": ("stuff", 11, 31), "coco-object": ("coco", 10, 31),
    "cityscapes": ("cityscapes", 10, 30), "ade20k": ("ade20k", 30, 57),
}
# preset -> (shipped list under data/classnames/lposs/, LPOSS file:lines of the dataset class's
# CLASSES). The class names are `dataset.CLASSES` (main_eval.py:34-36,
# segmentation/evaluation/builder.py:52), ';' separating the queries of one class
# (models/maskclip/maskclip.py:179-180). segmentation/datasets/__init__.py
# imports all five of its modules when custom_import.py pulls in coco_object, so its classes
# (registered with force=True) replace the vendored mmseg ones; ADE20K and Cityscapes come from the
# vendored mmseg/ (the repo root is first on sys.path).
_CLASSES = {
    "voc21": ("cls_voc21.txt", "segmentation/datasets/pascal_voc.py:16-20 (PascalVOCDataset)"),
    "voc20": ("cls_voc20.txt", "segmentation/datasets/pascal_voc20.py:16-19 (PascalVOCDataset20)"),
    "context60": ("cls_context60.txt", "segmentation/datasets/pascal_context.py:19-28 (PascalContextDataset)"),
    "context59": ("cls_context59.txt", "segmentation/datasets/pascal_context.py:69-77 (PascalContextDataset59)"),
    "coco-stuff171": ("cls_coco_stuff.txt", "segmentation/datasets/coco_stuff.py:15-44 (COCOStuffDataset)"),
    "coco-object": ("cls_coco_object.txt", "segmentation/datasets/coco_object.py:15-24 (COCOObjectDataset)"),
    "cityscapes": ("cls_city_scapes.txt", "mmseg/datasets/cityscapes.py:21-24 (CityscapesDataset)"),
    "ade20k": ("cls_ade20k.txt", "mmseg/datasets/ade.py:21-45 (ADE20KDataset)"),
}
_BED = ("COCO-Object's list has 'bed' among class 0's words and as class 60 (as SCLIP's): both queries "
        "get equal scores and the reference's argmax tie goes to class 0, so 'bed' is never predicted.")


def _preset(name: str, plus: bool) -> Preset:
    ds, scale_line, cfg_line = _DATASETS[name]
    values = {
        "protocol.short_side": (448, _DS.format(ds, scale_line) + " img_scale=(2048, 448)"),
        "protocol.long_cap": (2048, _DS.format(ds, scale_line)),
        "protocol.crop": (224, _DS.format(ds, cfg_line) + " crop_size=(224, 224)"),
        "protocol.stride": (112, _DS.format(ds, cfg_line) + " stride=(112, 112)"),
        "protocol.mean": (OPENAI_MEAN, "LPOSS models/maskclip/maskclip.py:21 (OPENAI_NORMALIZE on 0-1 input) x 255"),
        "protocol.std": (OPENAI_STD, "LPOSS models/maskclip/maskclip.py:21 (OPENAI_NORMALIZE on 0-1 input) x 255"),
        "decision.reduce": ("before_resize", _EVAL.format("352-354") + " (reduce_to_true_classes at the network size, "
                            "lines 365-370: the max over the background words' scores), then "
                            + _EVAL.format("356-361") + " (resize to ori_shape); the softmax over classes after "
                            "(mmseg/models/segmentors/encoder_decoder.py:245-248)"),
        "plugins": ("lposs:vfm=dino-vitb16,feature=v,k=400,gamma=3.0,sigma=0.01,eta=1.0,alpha=0.95,maxiter=10",
                    _CFG_LP + " (k, gamma, sigma, pix_dist_pow, alpha, enc_type_feats); " + _EVAL.format("89-103")),
        "refiners": ("lposs_plus:alpha=0.95,tau=0.01,r=13,maxiter=10" if plus else "",
                     _CFG_LPP + " (pixel_refine: true, tau, r)" if plus else _CFG_LP + " (pixel_refine: false)"),
    }
    file, where = _CLASSES[name]
    return Preset.from_values(values, {"classes": "LPOSS " + where},
                              classes=f"lposs/{file}",
                              background=name in ("voc21", "context60", "coco-object"),
                              note=_BED if name == "coco-object" else "")


def _spec(name: str, plus: bool) -> MethodSpec:
    return MethodSpec(
        name=name,
        recipe=Recipe(
            attention=AttentionRule(("id",)),
            surgery=Surgery(residual=True, ffn=True),
            protocol=Protocol(short_side=448, long_cap=2048, crop=224, stride=112, mean=OPENAI_MEAN, std=OPENAI_STD),
            decision=Decision(logit_scale=1.0, prob_thd=0.0, area_thd=None, reduce="before_resize"),
            templates="imagenet80",
            pos_resize="size",
            plugins=(LPOSSHead(),),
            refiners=(LPOSSPlus(mean=OPENAI_MEAN, std=OPENAI_STD),) if plus else (),
        ),
        summary=("MaskCLIP seeds propagated on a DINO kNN graph over all windows jointly (CG, 10 steps)"
                 + ("; then pixel-level propagation on a Lab colour graph (13x13 windows)" if plus else "")),
        paper="Stojnic, Kalantidis, Tolias. LPOSS: Label Propagation Over Patches and Pixels for "
              "Open-vocabulary Semantic Segmentation. CVPR 2025",
        code="vladan-stojnic/LPOSS@e489a7445528922ddfe4e39631ef2fe34827c873",
        presets={n: _preset(n, plus) for n in _DATASETS},
        notes=__doc__,
    )


register_method(_spec("lposs", False))
register_method(_spec("lposs+", True))
