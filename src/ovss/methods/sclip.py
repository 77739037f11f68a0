"""SCLIP (Wang, Mei, Yuille, ECCV 2024): correlative self-attention in the last block.

Default recipe = the model-level defaults of wangf3014/SCLIP `clip_segmentor.py`
(`CLIPForSegmentation.__init__`, lines 19-21) at commit b56bd3014b9e8a3ee3450bcfc53700a67d627b7a:
- last block: softmax(s QQ^T) + softmax(s KK^T), *summed* (rows sum to 2), residual and FFN kept
  (clip/model.py:250-251, 295-298); ln_post + projection on every token, CLS dropped after
  (clip_segmentor.py:63-66);
- 224/112 sliding windows, no padding: a crop remainder that does not fill a patch is dropped by
  the patch conv (clip_segmentor.py:21, 108); window logits bilinear to the crop, averaged, then
  bilinear to the original size (lines 74, 119);
- logit scale 40, prob_thd 0, area_thd None, PAMR off (pamr_steps=0) (lines 20-21);
- the 80 OpenAI ImageNet templates (line 38); CLIP mean/std (lines 24-25);
- positional embedding resized with the +0.1 scale-factor rule (clip/model.py:263-281).
Short side 336 (long side capped at 2048) is the configs' test resize for 6 of the 8 benchmarks.

Decision order (postprocess_result, lines 148-170): x logit_scale, softmax over all queries, max
over each class's synonyms, the area rule (when area_thd is set), argmax, prob_thd -> class 0.
`area_thd` is only set for VOC21 (configs/cfg_voc21.py:8); the paper reports its table as
"without post-processing", the preset follows the code.

Not reproduced: fp16 (the reference runs clip.load in half precision on GPU; ovss runs float32);
cv2's fixed-point resize of the uint8 image (ovss's bilinear can differ by one grey level).
The reference's whole-image path (slide_crop=0, unused by its configs) resizes the patch logits
straight to the original size in one step, where ovss resizes to the input size first.
"""

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery

_SEG = "SCLIP clip_segmentor.py:{}"
_CFG = "SCLIP configs/cfg_{}.py:{}"

# setting -> (value, source) shared by every benchmark: the segmentor's defaults
_DEFAULTS = {
    "protocol.crop": (224, _SEG.format(21)),
    "protocol.stride": (112, _SEG.format(21)),
    "protocol.pad_to_patch": (False, _SEG.format("108-109") + " (crops go to the model unpadded)"),
    "protocol.mean": (CLIP_MEAN, _SEG.format(24)),
    "protocol.std": (CLIP_STD, _SEG.format(25)),
    "decision.logit_scale": (40.0, _SEG.format(20)),
    "decision.prob_thd": (0.0, _SEG.format(20)),
    "decision.area_thd": (None, _SEG.format(21)),
    "decision.reduce": ("after_resize", _SEG.format("118-119") + " (forward_slide: logits resized to ori_shape; "
                        "whole image: line 76), " + _SEG.format("148-159") + " (postprocess_result: softmax, "
                        "then the max over a class's queries)"),
    "refiners": ((), _SEG.format(20) + " (pamr_steps=0)"),
    "templates": ("imagenet80", _SEG.format(38) + " (openai_imagenet_template)"),
    "pos_resize": ("scale_factor", "SCLIP clip/model.py:271-278"),
}


def _preset(cfg: str, resize_line: int, short: int, classes: str, background: bool = False,
            extra: dict | None = None, note: str = "") -> Preset:
    """A benchmark preset: the segmentor defaults, the config's Resize scale=(2048, short) and
    its model overrides ({setting: (value, line in the config)})."""
    resize = _CFG.format(cfg, resize_line) + f" Resize scale=(2048, {short})"
    values = {"protocol.short_side": (short, resize),
              "protocol.long_cap": (2048, resize), **_DEFAULTS}
    for key, (value, line) in (extra or {}).items():
        values[key] = (value, _CFG.format(cfg, line))
    return Preset.from_values(
        values, {"classes": _CFG.format(cfg, 5)},
        classes=f"sclip/{classes}",
        background=background,
        note=note,
    )


_BED = ("The class file has 'bed' both among class 0's stuff words and as class 60; ovss's "
        "class parser rejects a name in two classes (in the reference the tie goes to class 0, so "
        "'bed' is never predicted).")

PRESETS = {
    "voc21": _preset("voc21", 17, 336, "cls_voc21.txt", True,
                     {"decision.logit_scale": (65.0, 6), "decision.prob_thd": (0.1, 7),
                      "decision.area_thd": (0.1, 8)},
                     note="area_thd=0.1 (small non-background classes dropped) is in the code's "
                     "config; the paper describes no such post-processing. The preset follows the code."),
    "context60": _preset("context60", 16, 336, "cls_context60.txt", True,
                         {"decision.logit_scale": (50.0, 6), "decision.prob_thd": (0.1, 7)}),
    "coco-object": _preset("coco_object", 16, 336, "cls_coco_object.txt", True,
                           {"decision.logit_scale": (50.0, 6), "decision.prob_thd": (0.1, 7)}, note=_BED),
    "voc20": _preset("voc20", 14, 336, "cls_voc20.txt"),
    "context59": _preset("context59", 14, 336, "cls_context59.txt"),
    "coco-stuff171": _preset("coco_stuff164k", 14, 448, "cls_coco_stuff.txt"),
    "cityscapes": _preset("city_scapes", 14, 560, "cls_city_scapes.txt"),
    "ade20k": _preset("ade20k", 14, 336, "cls_ade20k.txt"),
}

register_method(MethodSpec(
    name="sclip",
    recipe=Recipe(
        attention=AttentionRule(("qq", "kk")),
        surgery=Surgery(residual=True, ffn=True),
        protocol=Protocol(short_side=336, long_cap=2048, crop=224, stride=112, pad_to_patch=False,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        refiners=(),
    ),
    summary="correlative self-attention (q-q + k-k softmaxes, summed) in the last block; "
    "residual and FFN kept",
    paper="Wang, Mei, Yuille. SCLIP: Rethinking Self-Attention for Dense Vision-Language Inference. "
    "ECCV 2024",
    code="wangf3014/SCLIP@b56bd3014b9e8a3ee3450bcfc53700a67d627b7a",
    presets=PRESETS,
    notes=__doc__,
))
