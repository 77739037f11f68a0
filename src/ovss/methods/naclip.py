"""NACLIP (Hajimiri, Ben Ayed, Dolz, WACV 2025): neighbourhood attention in a reduced last block.

Default recipe = the model-level defaults of sinahmr/NACLIP `naclip.py` (`NACLIP.__init__`,
lines 20-22) at commit 0cac3a651f753b11315ea799cfbfabf79da1bd76 (the "v2" code of 2024-09-16):
- last block, arch='reduced': Wo(softmax(s KK^T + Omega) V) + bo on ln_1(x), no residual, no
  FFN (clip/model.py:118-119, 197-207); Omega = exp(-|p_i - p_j|^2 / (2 * 5^2)) over patch grid
  positions, unscaled, the same for every head, zero on the CLS row and column
  (gaussian_std=5, naclip.py:21; clip/model.py:153-176, 189-199). `AttentionRule(("kk",),
  "gaussian", 5.0)` builds the same matrix in closed form; it equals the reference's convolved
  window to float rounding (<= 2.4e-7, the reference's linspace coordinates);
- ln_post + projection on every token, CLS dropped, then L2-normalised (naclip.py:58-60);
- 224/112 sliding windows, no padding (naclip.py:22, 99-100); logits bilinear to the crop,
  averaged, bilinear to the original size (lines 68, 127); whole image when slide_crop=0
  (patch logits bilinear to the input size, then to the original size);
- PAMR with 10 steps and dilations (8, 16) on the original-size logits, guided by the
  normalised input resized to the original size (naclip.py:21, 50, 129-132): ON by default;
- logit scale 40, prob_thd 0 (line 22); the 80 OpenAI ImageNet templates (line 35); CLIP
  mean/std (line 24); +0.1 scale-factor positional resize (clip/model.py:134-151).

Decision (postprocess_result, lines 139-153): x 40, softmax over all queries, max over synonyms,
argmax, prob_thd -> class 0. The probabilities are then renormalised to sum to 1 (line 153);
that only changes the returned scores, never the labels. No area rule since 2024-06-10.

Code vs paper:
- The benchmark presets follow the current (v2) configs: VOC21 and VOC20 on the whole image
  (slide_crop=0), COCO-Stuff at short side 336. `*-v1` presets give the April-September 2024
  code (commit 8865082820483e8985bc8e7b60907651c695b974: sliding windows on VOC, COCO-Stuff at
  448), whose README numbers (VOC21 62.36, VOC20 80.60, Stuff 25.18) are what the v2 numbers
  replaced.
- The paper's main table is without post-processing, the repo runs PAMR by default: the
  `*-nopamr` presets are `eval.py --pamr off` (eval.py:54-55). `voc21-v1-nopamr` is the first
  release (commit cbb720dac5e6166bb901c154da0263708945573b), where VOC21 without PAMR also
  applied SCLIP's area rule (area_thd=0.1, only when PAMR is off).
Not reproduced: fp16 (clip.load on GPU), cv2's fixed-point uint8 resize; PAMR's out-of-memory
fallback (the reference skips PAMR when it fails, naclip.py:131-135).
"""

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from ..refine import parse_refiner

_SEG = "NACLIP naclip.py:{}"
_CFG = "NACLIP configs/cfg_{}.py:{}"
PAMR_SPEC = "pamr:steps=10,dilations=8|16"
_V1 = "8865082820483e8985bc8e7b60907651c695b974"  # 2024-06-10, last code before v2
_V0 = "cbb720dac5e6166bb901c154da0263708945573b"  # 2024-04-12, first release (area rule)

_DEFAULTS = {
    "protocol.crop": (224, _SEG.format(22)),
    "protocol.stride": (112, _SEG.format(22)),
    "protocol.pad_to_patch": (False, _SEG.format("99-100") + " (crops go to the model unpadded)"),
    "protocol.mean": (CLIP_MEAN, _SEG.format(24)),
    "protocol.std": (CLIP_STD, _SEG.format(24)),
    "decision.logit_scale": (40.0, _SEG.format(22)),
    "decision.prob_thd": (0.0, _SEG.format(22)),
    "decision.area_thd": (None, _SEG.format("139-153") + " (no area rule)"),
    "decision.reduce": ("after_resize", _SEG.format("126-127") + " (predict: logits resized to ori_shape, "
                        "windows or whole image), " + _SEG.format("139-149") + " (postprocess_result: softmax, "
                        "then the max over a class's queries)"),
    "refiners": (PAMR_SPEC, _SEG.format(21) + " (pamr_steps=10, pamr_stride=(8, 16))"),
    "templates": ("imagenet80", _SEG.format(35) + " (openai_imagenet_template)"),
    "pos_resize": ("scale_factor", "NACLIP clip/model.py:134-151"),
}
_NO_PAMR = ("", "NACLIP eval.py:54-55 (--pamr off: pamr_steps=0)")


def _preset(cfg: str, resize_line: int, short: int, classes: str, background: bool = False,
            extra: dict | None = None, note: str = "", commit: str | None = None,
            pamr: bool = True) -> Preset:
    """`extra`: {setting: (value, line in the config)}; `commit`: the config read at that commit."""
    at = f"@{commit[:7]}" if commit else ""
    cfg_src = (lambda line: _CFG.format(cfg, line) + at)
    resize = cfg_src(resize_line) + f" Resize scale=(2048, {short})"
    values = {"protocol.short_side": (short, resize),
              "protocol.long_cap": (2048, resize), **_DEFAULTS}
    for key, (value, line) in (extra or {}).items():
        values[key] = (value, cfg_src(line) if isinstance(line, int) else line)
    if not pamr:
        values["refiners"] = _NO_PAMR
    return Preset.from_values(
        values, {"classes": cfg_src(5)},
        classes=f"sclip/{classes}",  # NACLIP's class files are byte-identical to SCLIP's
        background=background,
        note=note,
    )


_BED = ("The class file has 'bed' both among class 0's stuff words and as class 60; ovss's "
        "class parser rejects a name in two classes (in the reference the tie goes to class 0, so "
        "'bed' is never predicted).")
_WHOLE = "Whole image (slide_crop=0) since v2 (2024-09-16); the v1 code used 224/112 windows (see '{}-v1')."

# name -> keyword arguments of _preset, v2 (current) configs
_V2 = {
    "voc21": dict(cfg="voc21", resize_line=16, short=336, classes="cls_voc21.txt", background=True,
                  extra={"decision.prob_thd": (0.1, 6), "protocol.crop": (0, 7)},
                  note=_WHOLE.format("voc21")),
    "context60": dict(cfg="context60", resize_line=15, short=336, classes="cls_context60.txt",
                      background=True, extra={"decision.prob_thd": (0.1, 6)}),
    "coco-object": dict(cfg="coco_object", resize_line=15, short=336, classes="cls_coco_object.txt",
                        background=True, extra={"decision.prob_thd": (0.1, 6)}, note=_BED),
    "voc20": dict(cfg="voc20", resize_line=15, short=336, classes="cls_voc20.txt",
                  extra={"protocol.crop": (0, 6)}, note=_WHOLE.format("voc20")),
    "context59": dict(cfg="context59", resize_line=14, short=336, classes="cls_context59.txt"),
    "coco-stuff171": dict(cfg="coco_stuff164k", resize_line=14, short=336, classes="cls_coco_stuff.txt",
                          note="Short side 336 since v2 (2024-09-16); 448 before (see 'coco-stuff171-v1')."),
    "cityscapes": dict(cfg="city_scapes", resize_line=14, short=560, classes="cls_city_scapes.txt"),
    "ade20k": dict(cfg="ade20k", resize_line=14, short=336, classes="cls_ade20k.txt"),
}
# the v1 configs (commit 8865082) where they differ from v2
_V1_ROWS = {
    "voc21-v1": dict(cfg="voc21", resize_line=15, short=336, classes="cls_voc21.txt", background=True,
                     extra={"decision.prob_thd": (0.1, 6)}, commit=_V1,
                     note="v1 protocol (224/112 windows): README before v2 reported VOC21 62.36 with PAMR."),
    "voc20-v1": dict(cfg="voc20", resize_line=14, short=336, classes="cls_voc20.txt", commit=_V1,
                     note="v1 protocol (224/112 windows): README before v2 reported VOC20 80.60 with PAMR."),
    "coco-stuff171-v1": dict(cfg="coco_stuff164k", resize_line=14, short=448, classes="cls_coco_stuff.txt",
                             commit=_V1, note="v1 protocol (short side 448): README before v2 reported 25.18 "
                             "with PAMR."),
}


def _presets() -> dict[str, Preset]:
    out = {}
    for name, row in {**_V2, **_V1_ROWS}.items():
        out[name] = _preset(**row)
        if name == "voc21-v1":
            continue  # its no-PAMR variant is the first release's, below
        note = (row.get("note", "") + " " if row.get("note") else "") + (
            "PAMR off, as the paper's main table (no post-processing).")
        out[f"{name}-nopamr"] = _preset(**{**row, "note": note}, pamr=False)
    # The first release: VOC21 without PAMR also dropped small classes (SCLIP's area rule).
    out["voc21-v1-nopamr"] = _preset(
        cfg="voc21", resize_line=16, short=336, classes="cls_voc21.txt", background=True, commit=_V0,
        extra={"decision.prob_thd": (0.1, 6), "decision.area_thd": (0.1, 7)}, pamr=False,
        note="First release (2024-04-12): 224/112 windows, and with PAMR off the area rule "
        f"area_thd=0.1 (naclip.py:154@{_V0[:7]}, applied only without PAMR). Most likely the protocol "
        "of the paper's no-post-processing VOC21 number (58.9), released with this code; unconfirmed.")
    return out


PRESETS = _presets()

register_method(MethodSpec(
    name="naclip",
    recipe=Recipe(
        attention=AttentionRule(("kk",), prior="gaussian", prior_std=5.0),
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=336, long_cap=2048, crop=224, stride=112, pad_to_patch=False,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        refiners=(parse_refiner(PAMR_SPEC),),
    ),
    summary="k-k attention plus a Gaussian neighbourhood prior (std 5 patches) in a last block without "
    "residual and FFN; PAMR on by default",
    paper="Hajimiri, Ben Ayed, Dolz. Pay Attention to Your Neighbours: Training-Free Open-Vocabulary "
    "Semantic Segmentation. WACV 2025",
    code="sinahmr/NACLIP@0cac3a651f753b11315ea799cfbfabf79da1bd76",
    presets=PRESETS,
    notes=__doc__,
))
