"""CASS (Kim et al., CVPR 2025): spectral DINO graphs distilled into CLIP's last attention, and
object-presence text refinement.

Reference: MICV-yonsei/CASS@228ecdd8 (`clip/model.py`, `cass_segmentor.py`, `configs/`).
- last block ("reduced", model.py:136-152, 240-313): ln_1 of the last block's input through the
  in-projection; the class token dropped (line 271); per head the CLIP key graph s k k^T (line 379)
  and a DINO key graph (below) fused by `spectral.SpectralDistill` (lines 367-428), plus NACLIP's
  Gaussian window (std 5, no class token; lines 181-203, 276, 300) and a softmax; out-projection,
  no residual and no FFN, then ln_post and the projection (line 147).
- DINO graph (model.py:110-119, 315-351; dino/dino_attention.py): DINO ViT-B/8's last-block keys
  on the crop, cast to fp16 (line 112), class token dropped, resized bilinearly on the grid to
  CLIP's, rescaled with one min/max into the range of CLIP's patch keys; s K K^T in fp16.
- spectral matching (lines 205-238, 379-428): top-20 eigenvalues (float64), L2 then L1
  normalisation, sum of absolute differences of the sorted spectra; `linear_sum_assignment` on
  1 - distance; `torch.svd_lowrank(q=10, niter=2)` of the matched DINO graph (the energy test of
  `optimal_q` always passes at q=10: its last cumulative ratio is 1); singular values stretched
  to [0.5 min, 1.5 max] except for VOC20 and Cityscapes (model.py:465-473); zero diagonal, rescaled
  into the CLIP graph's range, fused (10 w D + K) / (10 w + 1).
- text (cass_segmentor.py:86-170): 80 ImageNet templates; Ward clustering of the queries on
  cosine distance cut at h_threshold; the image-level prior is the vanilla last block's class
  token (normalised) against the queries, from the whole image when sliding (except Cityscapes,
  lines 193-199, 240-243) and from the window otherwise; in each cluster the likeliest query moves to
  normalise((1 - mean_vector_weight) t + mean_vector_weight normalise(mean of its top-2
  patches)); logits (1 - global_semantics_weight) F T^T + global_semantics_weight prior.
- read-out (lines 201-300): 224/112 windows (or the whole image), bilinear per window, x40,
  softmax, max over a class's names, argmax, prob_thd; PAMR off (`eval.py --pamr off` default,
  eval_all.sh).

Quirks of the reference kept by default (each a setting of `CASSHead`):
- `dino_input="cass"`: the DINO input is rebuilt from the CLIP-normalised crop by un-normalising
  with ImageNet statistics whose blue std is 0.255 (not 0.225), x255, a uint8 cast (truncation),
  and a PIL bicubic resize to a min(H, W) square (non-square crops are squashed)
  (cass_segmentor.py:75-78, 179-180; model.py:107-108). "exact" feeds DINO the crop itself,
  correctly re-normalised, at its own aspect ratio.
- `pairing="cass"`: the assignment's rows are DINO heads and columns CLIP heads, but CLIP head
  `row` is fused with DINO head `col` (model.py:405-410); "matched" fuses the assigned pairs.
- `dino_half=True`: DINO's keys and graphs are fp16 even when CLIP runs in float32.
- `svd="lowrank"`: randomised SVD drawing from the global generator; the head seeds it with
  `seed` once per image (the reference seeds once per run, so its draws for an image depend on
  the images before it). "exact" uses a full SVD.
The reference's DINOv2 option (`dinov2_vitb14_reg4`, every crop resized to 518x518, registers
dropped; cass_segmentor.py:73-75, model.py:116-117, 319-320) is `vfm=dinov2-vitb14-reg,
dino_side=518`; no config uses it and it is not parity-checked. Not ported: the "scale-up"
variant (the class-token prior from a second CLIP, ViT-L/14).
"""

from __future__ import annotations

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.cass import CASSHead
from ..heads.dense import Surgery

_SEG = "CASS cass_segmentor.py:{}"
_MODEL = "CASS clip/model.py:{}"
_CFG = "CASS configs/cfg_{}.py:{}"

_DEFAULTS = {
    "protocol.crop": (224, _SEG.format(33) + " (slide_crop=224)"),
    "protocol.stride": (112, _SEG.format(33) + " (slide_stride=112)"),
    "protocol.mean": (CLIP_MEAN, _SEG.format(35)),
    "protocol.std": (CLIP_STD, _SEG.format(35)),
    "decision.logit_scale": (40.0, _SEG.format(33)),
    "decision.prob_thd": (0.0, _SEG.format(33)),
    "decision.reduce": ("after_resize", _SEG.format("270-271") + " (predict: logits resized to ori_shape, "
                        "windows or whole image), " + _SEG.format("284-295") + " (postprocess_result: softmax, "
                        "then the max over a class's queries)"),
    "templates": ("imagenet80", _SEG.format("86-96") + " (openai_imagenet_template)"),
    "pos_resize": ("scale_factor", _MODEL.format("164-180")),
    "attention": ("kk+gaussian:5", _MODEL.format("379, 300") + "; " + _SEG.format(32) + " (gaussian_std=5.)"),
}

# preset -> (config stem, class file, short side, resize line, gsw, mvw, h, their lines, prob_thd line)
_ROWS = {
    "voc21": ("voc21", "cls_voc21.txt", 336, 21, 0.1, 0.03, 0.10, (10, 11, 12), 6),
    "context60": ("context60", "cls_context60.txt", 336, 21, 0.25, 0.04, 0.09, (9, 10, 11), 6),
    "coco-object": ("coco_object", "cls_coco_object.txt", 336, 21, 0.25, 0.01, 0.10, (9, 10, 11), 6),
    "voc20": ("voc20", "cls_voc20.txt", 336, 20, 0.4, 0.02, 0.10, (8, 9, 10), None),
    "context59": ("context59", "cls_context59.txt", 336, 20, 0.25, 0.04, 0.09, (8, 9, 10), None),
    "coco-stuff171": ("coco_stuff164k", "cls_coco_stuff.txt", 336, 20, 0.2, 0.02, 0.02, (8, 9, 10), None),
    "cityscapes": ("city_scapes", "cls_city_scapes.txt", 560, 21, 0.1, 0.03, 0.14, (8, 9, 10), None),
    "ade20k": ("ade20k", "cls_ade20k.txt", 336, 20, 0.3, 0.05, 0.06, (8, 9, 10), None),
}
_BACKGROUND = {"voc21", "context60", "coco-object"}


def _preset(name: str) -> Preset:
    cfg, classes, short, rline, gsw, mvw, h, (lg, lm, lh), pline = _ROWS[name]
    resize = _CFG.format(cfg, rline) + f" Resize scale=(2048, {short})"
    values = {"protocol.short_side": (short, resize), "protocol.long_cap": (2048, resize), **_DEFAULTS}
    if name == "voc21":
        values["protocol.crop"] = (0, _CFG.format(cfg, 7) + " slide_crop=0 (whole image)")
    if pline is not None:
        values["decision.prob_thd"] = (0.1, _CFG.format(cfg, pline))
    stretch = cfg not in ("voc20", "city_scapes")
    plugin = (f"cass:text_weight={mvw},prior_weight={gsw},cluster_threshold={h},stretch={stretch},"
              f"global_cls={'window' if cfg == 'city_scapes' else 'image'}")
    values["plugins"] = (plugin, f"{_CFG.format(cfg, f'{lg}-{lh}')} (global_semantics_weight, mean_vector_weight, "
                         f"h_threshold); eigenscaling {_MODEL.format('465-473')}; prior source "
                         f"{_SEG.format('193-199, 240-243')}")
    return Preset.from_values(values, {"classes": _CFG.format(cfg, 5)},
                              classes="sclip/" + classes, background=name in _BACKGROUND)


register_method(MethodSpec(
    name="cass",
    recipe=Recipe(
        attention=AttentionRule(("kk",), prior="gaussian", prior_std=5.0),
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=336, long_cap=2048, crop=224, stride=112,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        plugins=(CASSHead(),),
    ),
    summary="CLIP's last-block key graph fused per head with a spectrum-matched low-rank DINO ViT-B/8 key "
    "graph (+ NACLIP's Gaussian), no residual or FFN; queries adapted to the image per Ward cluster and "
    "blended with the class-token prior",
    paper="Kim, Ju, Han, Yang, Hwang. Distilling Spectral Graph for Object-Context Aware Open-Vocabulary "
    "Semantic Segmentation. CVPR 2025",
    code="MICV-yonsei/CASS@228ecdd8",
    presets={name: _preset(name) for name in _ROWS},
    notes=__doc__,
))
