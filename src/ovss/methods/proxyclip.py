"""ProxyCLIP (Lan et al., ECCV 2024): CLIP's last-block values mixed by a vision foundation
model's patch affinity (DINO / DINOv2), read out on the proxy's patch grid.

Reference: mc-lan/ProxyCLIP@e7b767fbc58ea218a3b8ba34cd92db521cc5f2e1.
- proxy features (proxyclip_segmentor.py:110-160): the crop, CLIP-normalised, is un-normalised
  with CLIP's 0-1 mean/std and re-normalised with ImageNet's (lines 79-80); DINO v1: the last
  layer's tokens after the final norm (`get_intermediate_layers(x)[0]`, class token dropped,
  lines 132, 154); DINOv2: `get_intermediate_layers(x, reshape=True)[0]` (the same, registers
  dropped; line 159). Default proxy `dino_vitb8` (line 53); `dinov2_vitb14_reg` is the DINOv2
  choice (line 57).
- last CLIP block (open_clip/transformer.py:560-586): values of ln_1(x) by the in-projection; the
  proxy features L2-normalised per position, A = F^T F, A <- (A - mean(A) * beta) * gamma,
  entries < 0 -> -inf, softmax over rows, the same for every head; CLIP's patch values (class
  token dropped) resized bilinearly to the proxy grid; out = out_proj(A V): no residual, no FFN;
  then ln_post and the projection (lines 535-536). beta 1.2, gamma 3.0 (segmentor line 30).
- logits on the proxy grid, bilinear to the (padded) crop, padding cut (forward_feature and
  forward_slide, lines 160-230); crops zero-padded to a multiple of 56 (line 220), 336/112 windows
  (line 30), logit scale 40, prob_thd 0 unless the config sets it (line 30; cfg_voc21.py:6 0.2,
  cfg_context60.py:6 0.15, cfg_coco_object.py:6 0.25); the 80 OpenAI ImageNet templates (line
  90); background = class 0 by prob_thd (postprocess_result, line 267 on).

In ovss this is the head plug-in `proxy` (affinity-only attention rule with the proxy affinity as
a "term" mix, `attention.attend`), so any method can swap its last block for ProxyCLIP's.

Code vs paper / not reproduced: the reference runs CLIP and DINO in fp16 (ovss float32); the
reference's mean of A is over the whole batch, which is one crop there (ovss: per crop); the
reference reshapes DINO features to a square grid from the crop height (line 149), so only square
crops run there (ovss uses the real grid); SAM and MAE proxies (lines 45-49, 60-72) are not
ported (lines 45-49, 60-72 of the segmentor).
"""

from __future__ import annotations

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from ..heads.proxy import ProxyHead

_SEG = "ProxyCLIP proxyclip_segmentor.py:{}"
_CFG = "ProxyCLIP configs/cfg_{}.py:{}"

_DEFAULTS = {
    "protocol.crop": (336, _SEG.format("30-31") + " (slide_crop=336)"),
    "protocol.stride": (112, _SEG.format("30-31") + " (slide_stride=112)"),
    "protocol.pad_to_patch": (True, _SEG.format("218-222") + " (zero pad to a multiple of 56)"),
    "protocol.pad_multiple": (56, _SEG.format(220)),
    "protocol.mean": (CLIP_MEAN, _SEG.format("33-37")),
    "protocol.std": (CLIP_STD, _SEG.format("33-37")),
    "decision.logit_scale": (40.0, _SEG.format("30-31")),
    "decision.prob_thd": (0.0, _SEG.format("30-31")),
    "decision.reduce": ("after_resize", _SEG.format("241-242") + " (forward_slide: logits resized to ori_shape; "
                        "whole image: line 184), " + _SEG.format("267-278") + " (postprocess_result: softmax, "
                        "then the max over a class's queries)"),
    "templates": ("imagenet80", _SEG.format(90) + " (openai_imagenet_template)"),
    "pos_resize": ("scale_factor", "ProxyCLIP open_clip/transformer.py:540-557"),
}


def _preset(cfg: str, short: int, classes: str, resize_line: int, background: bool = False,
            extra: dict | None = None, vfm: str = "dino-vitb8", note: str = "") -> Preset:
    resize = _CFG.format(cfg, resize_line) + f" Resize scale=(2048, {short})"
    values = {"protocol.short_side": (short, resize), "protocol.long_cap": (2048, resize), **_DEFAULTS}
    values["plugins"] = (f"proxy:vfm={vfm},beta=1.2,gamma=3.0,layer=-1",
                         _SEG.format("31, 53" if vfm == "dino-vitb8" else "31, 57"))
    for key, (value, line) in (extra or {}).items():
        values[key] = (value, _CFG.format(cfg, line))
    return Preset.from_values(values, {"classes": _CFG.format(cfg, 5)},
                              classes=None if classes == "cls_ade20k847.txt"
                              else _CLASS_DIR.get(classes, "sclip") + "/" + classes,
                              background=background, note=note)


# where each ProxyCLIP class file's copy lives (data/classnames/README.md)
_CLASS_DIR = {"cls_voc21.txt": "proxyclip", "cls_coco_object.txt": "proxyclip", "cls_context459.txt": "proxyclip",
              "cls_voc20.txt": "clearclip"}
# cls_ade20k847.txt is not shipped: its names contain commas (ovss's class-file separator) and
# ProxyCLIP's "; " synonyms; the ade847 presets take the class list from the user.

_ROWS = {
    "voc21": dict(resize_line=15, cfg="voc21", short=336, classes="cls_voc21.txt", background=True,
                  extra={"decision.prob_thd": (0.2, 6)}),
    "context60": dict(resize_line=15, cfg="context60", short=336, classes="cls_context60.txt", background=True,
                      extra={"decision.prob_thd": (0.15, 6)}),
    "coco-object": dict(resize_line=15, cfg="coco_object", short=336, classes="cls_coco_object.txt", background=True,
                        extra={"decision.prob_thd": (0.25, 6)}),
    "voc20": dict(resize_line=14, cfg="voc20", short=336, classes="cls_voc20.txt"),
    "context59": dict(resize_line=14, cfg="context59", short=336, classes="cls_context59.txt"),
    "coco-stuff171": dict(resize_line=14, cfg="coco_stuff164k", short=336, classes="cls_coco_stuff.txt"),
    "cityscapes": dict(resize_line=16, cfg="city_scapes", short=448, classes="cls_city_scapes.txt",
                       extra={"protocol.crop": (224, 7), "protocol.stride": (112, 6)}),
    "ade20k": dict(resize_line=14, cfg="ade20k", short=448, classes="cls_ade20k.txt"),
    "context459": dict(resize_line=14, cfg="context459", short=448, classes="cls_context459.txt"),
    "ade847": dict(resize_line=14, cfg="ade847", short=448, classes="cls_ade20k847.txt"),
}


def _presets() -> dict[str, Preset]:
    out = {}
    for name, row in _ROWS.items():
        out[name] = _preset(**row)
        out[f"{name}-dinov2"] = _preset(**row, vfm="dinov2-vitb14-reg",
                                        note="DINOv2 ViT-B/14 with registers as the proxy "
                                        "(proxyclip_segmentor.py:57, vfm_model='dinov2').")
    return out


register_method(MethodSpec(
    name="proxyclip",
    recipe=Recipe(
        attention=AttentionRule(()),
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=336, long_cap=2048, crop=336, stride=112, pad_to_patch=True,
                          pad_multiple=56, mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        plugins=(ProxyHead(),),
    ),
    summary="CLIP's last-block values mixed by DINO's patch affinity ((A - 1.2 mean) * 3, negatives cut), "
    "no residual or FFN, read out on DINO's grid (DINO ViT-B/8 by default; DINOv2 presets)",
    paper="Lan, Zhang, Yue, Xia, Shi, Shen. ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary "
    "Segmentation. ECCV 2024",
    code="mc-lan/ProxyCLIP@e7b767fbc58ea218a3b8ba34cd92db521cc5f2e1",
    presets=_presets(),
    notes=__doc__,
))
