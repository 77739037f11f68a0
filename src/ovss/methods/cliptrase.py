"""CLIPtrase (Shao, Tian, Zhao, Su, ECCV 2024): self-correlation recalibration + patch clustering.

Default recipe = leaves162/CLIPtrase at commit 2b7de612e5745ccaf9f7c57ee5ba83d526062f0c, the
standalone evaluation `clip_self_correlation.py` (the paper's and README's numbers) at 224 px:
- last block: softmax(s QQ^T) + softmax(s KK^T) + softmax(s VV^T), summed (rows sum to 3), with
  the residual and the FFN kept (clip_utils/attn2.py:254-277, clip_utils/model.py:191-195, 250-251):
  `AttentionRule(("qq", "kk", "vv"))`, `Surgery(True, True)`; ln_post + projection on every token;
- the `cluster` refiner (ovss.refine.cluster): DBSCAN(eps 0.7, min_samples 3) on the rows of
  block 11's self-correlation map (head mean of cos qq, cos kk, cos vv, minus the class-token row,
  clamped at 0; attn2.py:295-308, clip_self_correlation.py:148-152, 168-169), cluster maps
  upsampled x4, 7x7 median filter, upsampled to the image, each cluster region voting for its
  majority class (lines 180-210);
- the whole image in one pass (no windows), logits x 100 (clip.logit_scale.exp(), line 154),
  argmax (no threshold); OpenAI's mean/std on the 0-1 scale (line 48); the 80 ImageNet templates
  (configs/dataset_cfg.py:57-138); positional embedding resized by scale factor (+0.1),
  bicubic (clip_utils/model.py:291-309).

Presets:
- `repo-224`, `repo-336`: its own protocol's model side: short side 224 / 336, one pass, DBSCAN
  (0.7, 3) / (1.1, 7) (clip_self_correlation.py:233-234), and its evaluation protocol for
  `ovss eval` (`Preset.eval_protocol = "cliptrase"`, ovss.eval.runner: bicubic resize and square
  center crop of image and ground truth, lines 38-56; ground-truth 255 scored as background,
  lines 164-166; an image with no ground truth left is skipped, lines 132-141; one confusion
  matrix over the dataset, mIoU over the classes present in the ground truth with +0.01
  smoothing, configs/metric.py; COCO-Object scored on COCO-Stuff's 171-class maps). The resize
  and crop belong to the evaluation: elsewhere (`ovss segment`, `ovss.load`) these presets see
  the whole image, resized to the short side by the recipe (bilinear, as every ovss recipe).
- `<benchmark>-repo-224`, `<benchmark>-repo-336` for voc21, voc20, context60, context59,
  coco-object, coco-stuff171, ade20k (its VOC21, VOC20, PC60, PC59, COCO80_val, COCO171_val,
  ADE150): the same plus its class lists (configs/dataset_cfg.py, shipped under
  data/classnames/cliptrase/: VOC21's 33 background words, COCO-Object's 107, PC60's
  "background"; background queries form class 0 here, its label C there) and, for voc20, the
  class-token prior its VOC20 run applies (lines 159-161; ovss.heads.cls_prior). Its numbers are not
  comparable to the other methods' (center crop only, void as background, GT-present mean).
- `<benchmark>`: the standard protocol (SCLIP's test pipeline for that benchmark: resize, 224/112
  windows, logit scale and thresholds, class files; sources cite SCLIP's configs), with
  CLIPtrase's block and clustering at its 336 px setting (1.1, 7); the clustering then needs a
  second backbone pass over the whole resized image (the windows' features are not one grid).

Notes: the reference is ViT-B/16 only (blocks 11 and 12 by position; here `layer=-2` and the
last block for any depth) and square inputs only (the cluster maps are resized to
image_size x image_size); ovss handles any size. Ties in a cluster's vote go to the smallest
label in both, but CLIPtrase numbers the background class last (C) where ovss numbers it 0.
"""

from ..core.decision import Decision
from ..core.protocol import Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, plugin_spec, register_method
from ..heads.attention import AttentionRule
from ..heads.cls_prior import ClsPrior
from ..heads.dense import Surgery
from ..refine.cluster import Cluster
from .sclip import PRESETS as SCLIP_PRESETS

COMMIT = "2b7de612e5745ccaf9f7c57ee5ba83d526062f0c"
_SC = "CLIPtrase clip_self_correlation.py:{}"
# OpenAI CLIP's mean/std on the 0-1 scale (clip_self_correlation.py:48), times 255
OPENAI_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
OPENAI_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
RULE = AttentionRule(("qq", "kk", "vv"))
_RULE_SRC = "CLIPtrase clip_utils/attn2.py:254-277 (self_qk_weight), clip_utils/model.py:191-195, 250-251"


def _cluster(size: int) -> str:
    eps, m = (0.7, 3) if size == 224 else (1.1, 7)
    return f"cluster:eps={eps},min_samples={m},layer=-2,ratio=4,vote=majority"


_DC = "CLIPtrase configs/dataset_cfg.py:{}"
_EVAL_SRC = (_SC.format("38-56, 82-88, 132-141, 164-166, 212-218") + " and configs/metric.py:3-31 "
             "(resize + center crop, 255 as background, skip empty, GT-present mean)")
# ovss benchmark -> (its dataset key, class file, dataset_cfg.py lines of its lists, with background)
REPO_DATASETS = {
    "voc21": ("VOC21", "cls_voc21.txt", "49-54", True),
    "voc20": ("VOC20", "cls_voc20.txt", "44-48", False),
    "context60": ("PC60", "cls_context60.txt", "33-38", True),
    "context59": ("PC59", "cls_context59.txt", "28-32", False),
    "coco-object": ("COCO80_val", "cls_coco_object.txt", "12-17", True),
    "coco-stuff171": ("COCO171_val", "cls_coco_stuff.txt", "18-22", False),
    "ade20k": ("ADE150", "cls_ade20k.txt", "2-6", False),
}


def _repo_dataset(name: str, size: int) -> Preset:
    key, file, lines, bg = REPO_DATASETS[name]
    base = _repo(size, voc20=name == "voc20")
    sources = dict(base.sources)
    sources["classes"] = _DC.format(lines) + f" {key} labels" + (" + background (class 0 here, label C there; "
                                                               "clip_self_correlation.py:115-120)" if bg else "")
    return Preset(overrides=base.overrides, sources=sources, classes=f"cliptrase/{file}", background=bg,
                  eval_protocol="cliptrase", note=base.note + f" Its {key} class list.")


def _repo(size: int, voc20: bool = False) -> Preset:
    values = {
        "protocol.short_side": (size, _SC.format("38-43") + f" Resize({size}) (then CenterCrop({size}): the "
                                f"evaluation protocol's, the crop reaches the model at {size} x {size})"),
        "protocol.crop": (0, _SC.format("129-145") + " (one forward pass per image, no windows)"),
        "protocol.mean": (OPENAI_MEAN, _SC.format(48) + " Normalize((0.48145466, 0.4578275, 0.40821073), ...) x 255"),
        "protocol.std": (OPENAI_STD, _SC.format(48) + " Normalize(..., (0.26862954, 0.26130258, 0.27577711)) x 255"),
        "decision.logit_scale": (100.0, _SC.format(154) + " clip.logit_scale.exp()"),
        "decision.prob_thd": (0.0, _SC.format(162) + " (argmax, no threshold)"),
        "decision.area_thd": (None, _SC.format(162)),
        "decision.reduce": ("after_resize", _SC.format("156-158") + " (patch logits resized to the image), "
                            + _SC.format("162-165") + " (argmax over every query, then a background word's "
                            "label -> the background class)"),
        "refiners": (_cluster(size), _SC.format("168-210") + f" (DBSCAN eps/min_samples: line {233 if size == 224 else 234})"),
        "templates": ("imagenet80", "CLIPtrase configs/dataset_cfg.py:57-138 (80 ImageNet templates)"),
        "pos_resize": ("scale_factor", "CLIPtrase clip_utils/model.py:291-309"),
        "attention": (str(RULE), _RULE_SRC),
        "surgery.residual": (True, "CLIPtrase clip_utils/model.py:191-195 (block 12 keeps x + attn)"),
        "surgery.ffn": (True, "CLIPtrase clip_utils/model.py:191-195 (block 12 keeps its MLP)"),
        "plugins": ("", _SC.format("154-162") + " (no class-token prior)"),
    }
    note = ("CLIPtrase's own protocol: its model side here, its evaluation (center crop, 255 as background, "
            "GT-present mean) through ovss eval's cliptrase protocol.")
    if voc20:
        values["plugins"] = (plugin_spec(ClsPrior(100.0)), _SC.format("159-161") + " (VOC20: patch logits x CLS logits)")
        note += " VOC20: the class-token prior."
    return Preset.from_values(values, {"eval_protocol": _EVAL_SRC}, note=note, eval_protocol="cliptrase")


def _standard(name: str) -> Preset:
    base = SCLIP_PRESETS[name]
    keep = [k for k in base.overrides if k.startswith(("protocol.", "decision.", "templates", "pos_resize"))]
    overrides = {k: base.overrides[k] for k in keep}
    sources = {k: base.sources[k] for k in keep}
    overrides["decision.area_thd"] = None
    sources["decision.area_thd"] = (_SC.format(162) + " (argmax only: CLIPtrase has no area rule; SCLIP's VOC21 "
                                    "area rule is SCLIP's own post-processing)")
    overrides["decision.reduce"] = "after_resize"
    sources["decision.reduce"] = (_SC.format("156-165") + " (argmax over every query of the resized logits; "
                                  "SCLIP's order too: clip_segmentor.py:118-119, 148-159)")
    overrides["refiners"] = _cluster(336)
    sources["refiners"] = _SC.format(234) + " (the 336 px DBSCAN setting: the resized images are >= 336 px)"
    overrides["attention"], sources["attention"] = str(RULE), _RULE_SRC
    overrides["surgery.residual"], sources["surgery.residual"] = True, "CLIPtrase clip_utils/model.py:191-195"
    overrides["surgery.ffn"], sources["surgery.ffn"] = True, "CLIPtrase clip_utils/model.py:191-195"
    if name == "voc20":
        overrides["plugins"] = plugin_spec(ClsPrior(100.0))
        sources["plugins"] = _SC.format("159-161") + " (VOC20: the class-token prior, per window)"
    return Preset(overrides=overrides, sources=sources | {"classes": base.sources["classes"]}, classes=base.classes,
                  background=base.background,
                  note="Standard (SCLIP) protocol with CLIPtrase's last block and clustering; no published "
                  "number belongs to it.")


PRESETS = {
    "repo-224": _repo(224), "repo-336": _repo(336),
    **{f"{name}-repo-{size}": _repo_dataset(name, size) for name in REPO_DATASETS for size in (224, 336)},
    **{name: _standard(name) for name in SCLIP_PRESETS},
}

register_method(MethodSpec(
    name="cliptrase",
    recipe=Recipe(
        attention=RULE,
        surgery=Surgery(residual=True, ffn=True),
        protocol=Protocol(short_side=224, long_cap=2048, crop=0, stride=112, pad_to_patch=False,
                          mean=OPENAI_MEAN, std=OPENAI_STD),
        decision=Decision(logit_scale=100.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        refiners=(Cluster(eps=0.7, min_samples=3, layer=-2, ratio=4, vote="majority"),),
        plugins=(),
    ),
    summary="q-q + k-k + v-v softmaxes summed in the last block (residual, FFN kept); DBSCAN on block 11's "
    "self-correlation, one class per cluster (the `cluster` refiner)",
    paper="Shao, Tian, Zhao, Su. Explore the Potential of CLIP for Training-Free Open Vocabulary Semantic "
    "Segmentation. ECCV 2024",
    code=f"leaves162/CLIPtrase@{COMMIT}",
    presets=PRESETS,
    notes=__doc__,
))
