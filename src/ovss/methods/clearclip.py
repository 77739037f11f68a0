"""ClearCLIP (Lan et al., ECCV 2024): q-q attention in the last block, no residual, no FFN.

Default recipe = mc-lan/ClearCLIP at commit ad68a404d55d48d27330b93554eb64a234ff717f with
`model_type='ClearCLIP'` (the paper's method; what `demo.py:28` passes):
- last block: Wo(softmax(s QQ^T) V) + bo on ln_1(x), with the residual and the FFN dropped
  (`ignore_residual=True`, clearclip_segmentor.py:22; open_clip/transformer.py:525-526 and
  614-616); ln_post + projection on every token, CLS dropped (pool_type 'tok');
- 448/224 sliding windows (clearclip_segmentor.py:23); each crop zero-padded in normalised space,
  symmetrically (left = pad // 2), to a multiple of the patch size and the logits cropped back
  (compute_padsize, lines 168-180 and 246-258): `Protocol.pad_to_patch`;
- logit scale 50, prob_thd 0, no PAMR (line 23); the 80 OpenAI ImageNet templates (line 98);
  CLIP mean/std (lines 25-26);
- positional embedding resized with the +0.1 scale-factor rule (open_clip/transformer.py:569-587).

Code vs paper: the shipped `configs/base_config.py:6` sets `model_type='vanilla'` (q-k attention;
with line 7's ignore_residual=True also no residual and no FFN), so `eval.py` on the shipped
configs does not run ClearCLIP (issues #3 and #12: ADE 9.13). The recipe and the benchmark presets
use ClearCLIP's attention; the protocol numbers follow the configs. The `*-as-shipped` presets
reproduce the shipped default (q-k attention, no residual, no FFN).

Text side: `get_cls_idx` (line 288) splits class lines on "," (SCLIP/NACLIP: ", "), so
"a, b" would give the query " b" with a leading space; ClearCLIP's class files contain no
commas, so this never happens with them (and CLIP's tokenizer drops the space anyway).
ClearCLIP's VOC21/VOC20/COCO-Object files have no synonyms (class 0 is the word "background");
its other five files are byte-identical to SCLIP's.

Not reproduced: fp16 (`precision='fp16'`, `inputs.half()`, line 208; ovss runs float32); cv2's
fixed-point uint8 resize. Position-embedding corner case: the reference skips interpolation
whenever a crop has exactly 196 patches (transformer.py:510), even for a non-square grid such as
7x28; ovss interpolates those. No preset produces such a crop (the short side is 448).
"""

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery

_SEG = "ClearCLIP clearclip_segmentor.py:{}"
_CFG = "ClearCLIP configs/cfg_{}.py:{}"

_DEFAULTS = {
    "protocol.crop": (448, _SEG.format(23)),
    "protocol.stride": (224, _SEG.format(23)),
    "protocol.pad_to_patch": (True, _SEG.format("168-180") + " (compute_padsize, lines 246-258)"),
    "protocol.mean": (CLIP_MEAN, _SEG.format(25)),
    "protocol.std": (CLIP_STD, _SEG.format(26)),
    "decision.logit_scale": (50.0, _SEG.format(23)),
    "decision.prob_thd": (0.0, _SEG.format(23)),
    "decision.area_thd": (None, _SEG.format("216-230") + " (no area rule)"),
    "decision.reduce": ("after_resize", _SEG.format("189-190") + " (forward_slide: logits resized to ori_shape; "
                        "whole image: line 134), " + _SEG.format("216-227") + " (postprocess_result: softmax, "
                        "then the max over a class's queries)"),
    "refiners": ((), _SEG.format("194-214") + " (no PAMR)"),
    "templates": ("imagenet80", _SEG.format(98) + " (openai_imagenet_template)"),
    "pos_resize": ("scale_factor", "ClearCLIP open_clip/transformer.py:569-587"),
}

# ClearCLIP's own class files (no synonyms) where they differ from SCLIP's; the other five are
# byte-identical to SCLIP's and shared with it (data/classnames/README.md).
_OWN_FILES = {"cls_voc21.txt", "cls_voc20.txt", "cls_coco_object.txt"}


def _preset(cfg: str, resize_line: int, classes: str, background: bool = False,
            extra: dict | None = None, note: str = "", shipped: bool = False) -> Preset:
    resize = _CFG.format(cfg, resize_line) + " Resize scale=(2048, 448)"
    values = {"protocol.short_side": (448, resize),
              "protocol.long_cap": (2048, resize), **_DEFAULTS}
    for key, (value, line) in (extra or {}).items():
        values[key] = (value, _CFG.format(cfg, line))
    if shipped:
        values["attention"] = ("qk", "ClearCLIP configs/base_config.py:6 (model_type='vanilla')")
        values["surgery.residual"] = (False, "ClearCLIP configs/base_config.py:7 (ignore_residual=True)")
        values["surgery.ffn"] = (False, "ClearCLIP configs/base_config.py:7 (ignore_residual=True)")
    folder = "clearclip" if classes in _OWN_FILES else "sclip"
    return Preset.from_values(
        values, {"classes": _CFG.format(cfg, 5)},
        classes=f"{folder}/{classes}",
        background=background,
        note=note,
    )


_SHIPPED = ("The repo's shipped default, model_type='vanilla' with ignore_residual=True: q-k attention "
            "without residual or FFN, i.e. not ClearCLIP (issues #3, #12 report ADE 9.13 / Context59 21.9).")

PRESETS = {
    "voc21": _preset("voc21", 15, "cls_voc21.txt", True, {"decision.prob_thd": (0.5, 6)}),
    "context60": _preset("context60", 15, "cls_context60.txt", True, {"decision.prob_thd": (0.15, 6)}),
    "coco-object": _preset("coco_object", 15, "cls_coco_object.txt", True, {"decision.prob_thd": (0.4, 6)}),
    "voc20": _preset("voc20", 14, "cls_voc20.txt"),
    "context59": _preset("context59", 14, "cls_context59.txt"),
    "coco-stuff171": _preset("coco_stuff164k", 14, "cls_coco_stuff.txt"),
    "cityscapes": _preset("city_scapes", 15, "cls_city_scapes.txt", extra={"protocol.crop": (224, 6)},
                          note="224 px windows with the default stride 224 (clearclip_segmentor.py:23): "
                          "non-overlapping."),
    "ade20k": _preset("ade20k", 14, "cls_ade20k.txt"),
    "context59-as-shipped": _preset("context59", 14, "cls_context59.txt", note=_SHIPPED, shipped=True),
    "ade20k-as-shipped": _preset("ade20k", 14, "cls_ade20k.txt", note=_SHIPPED, shipped=True),
}

register_method(MethodSpec(
    name="clearclip",
    recipe=Recipe(
        attention=AttentionRule(("qq",)),
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=448, long_cap=2048, crop=448, stride=224, pad_to_patch=True,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=50.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        refiners=(),
    ),
    summary="q-q attention in the last block with its residual and FFN removed",
    paper="Lan et al. ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language Inference. "
    "ECCV 2024",
    code="mc-lan/ClearCLIP@ad68a404d55d48d27330b93554eb64a234ff717f",
    presets=PRESETS,
    notes=__doc__,
))
