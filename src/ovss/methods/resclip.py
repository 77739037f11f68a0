"""ResCLIP (Yang, Deng, Li, Duan, CVPR 2025): residual cross-correlation + semantic feedback.

Two head plug-ins on an SCSA last block (ovss.heads.rcs.RCS, ovss.heads.feedback.SFR), usable on any
recipe (`--set plugins=rcs+sfr`). Default recipe = yvhangyang/ResCLIP at commit
0e085f7f52f06098b383599e9653cd28cc665a8c with the README's main setting
`bash test_all.sh wo_resi resclip 5` (NACLIP + ResCLIP, the repo's default and headline):
- last block: NACLIP's (k-k attention + Gaussian window std 5, no residual, no FFN;
  arch='wo_resi', attn_strategy='resclip' = the 'naclip' branch, clip/model.py:473-494);
- RCS: the mean q-k softmax map of blocks 6-9 (clip/model.py:326-329), mixed after the softmax:
  A = tau_rcs ((1 - lambda_rcs) A + lambda_rcs A_c) (line 494); tau = 2.0 in every config;
- SFR: a first last-block pass with RCS (create_logit_temp, lines 242-290) -> bilinear to the
  crop -> PAMR(10, (8, 16)) on the crop -> softmax(40 x) over queries -> argmax, max prob below
  temp_thd -> query 0 -> per-patch mode (create_patch_matrix, 106-126) -> same-label affinity,
  line-of-sight damping, 1-D raster Gaussian (std 5), ReLU, row normalisation
  (generate_attention_sfr, 152-240) -> divided by its max, float16, mixed into the k-k logits
  before the Gaussian window: L = tau_sfr ((1 - lambda_sfr) L + lambda_sfr S) (lines 474-486);
- 224/112 windows, no padding; logit scale 40; prob_thd 0; no PAMR on the output
  (resclip_segmentor.py:23-26); the 80 ImageNet templates (line 39); CLIP mean/std (line 28);
  +0.1 scale-factor positional resize with align_corners=False (clip/model.py:377-394).
Decision (postprocess_result, lines 164-194): as NACLIP's (x 40, softmax over queries, max over
synonyms, argmax, prob_thd -> 0; the renormalisation only touches the stored scores).

Quirks of the code reproduced by the benchmark presets (they change numbers; the paper does not
describe them), each named in `ovss.heads.feedback`: PAMR inside SFR; the line-of-sight test (not
connected components) that samples only the first steps(i, j) / max_steps of each segment; the
1-D smoothing along raster order; the float16 cast of the prior. The `*-fixed` presets keep PAMR
(a design choice, not a bug) and fix the three others: the whole segment is checked, the
smoothing is a 2-D Gaussian over the patch grid and the prior stays float32. They are ovss's
variants: no published number belongs to them.

Plug-ins on SCLIP and ClearCLIP (the paper's other two rows, same configs per benchmark;
`eval.py --arch w_resi --attn sclip` and `--arch wo_resi --attn clearclip`): the `*-on-sclip`
presets (q-q + k-k softmaxes summed, residual and FFN kept; SFR mixed into both terms' logits,
no Gaussian window, clip/model.py:519-541) and `*-on-clearclip` (q-q, no residual, no FFN, no
Gaussian window, lines 543-563), both with ResCLIP's own protocol (224/112, logit scale 40).

Code vs paper and other notes:
- use_rcs / use_sfr: resclip_segmentor.py:61-62 stores them as 1-tuples (trailing commas), so
  they are always true and an RCS-only or SFR-only run is not reachable through the flags; in
  ovss each plug-in is simply present or not (`plugins=rcs`, `plugins=sfr`).
- The paper's lambda_rcs = 0.5, lambda_sfr = 0.7 and no temperatures; the code uses tau and
  per-benchmark lambdas (the presets follow the code).
- VOC21 and VOC20 run on the whole image (slide_crop=0); the reference then builds a pairwise
  path tensor of N^2 x (max_steps + 1) x 2 int64 (N = 588 at 336 x 448: ~155 MB); ovss bounds it.
- `eval.py --show-dir` silently sets pamr_steps=50 with strides (1, 2, 4, 8, 12, 24) (eval.py:
  37-38); not a preset (visualisation mode).
- SFR's seed threshold and temperature act per query (synonyms not merged), as in the code.
- The reference works on batch 1 only (create_logit_temp's softmax loop overwrites its tensor);
  ovss batches windows and computes every window's seed map and prior on its own.
Not reproduced: fp16 inference of the whole network (clip.load on GPU; ovss runs float32, the
prior's float16 rounding is reproduced); PAMR's silent skip on RuntimeError; cv2's fixed-point
resize.
"""

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, plugin_spec, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from ..heads.feedback import SFR
from ..heads.rcs import RCS

COMMIT = "0e085f7f52f06098b383599e9653cd28cc665a8c"
_SEG = "ResCLIP resclip_segmentor.py:{}"
_MODEL = "ResCLIP clip/model.py:{}"
_CFG = "ResCLIP configs/cfg_{}.py:{}"

NACLIP_RULE = AttentionRule(("kk",), prior="gaussian", prior_std=5.0)
BASES = {  # base method -> (attention rule, surgery, source)
    "naclip": (NACLIP_RULE, Surgery(residual=False, ffn=False),
               "ResCLIP README / test_all.sh: arch=wo_resi, attn=resclip, std=5 (clip/model.py:473-494)"),
    "sclip": (AttentionRule(("qq", "kk")), Surgery(residual=True, ffn=True),
              "ResCLIP eval.py --arch w_resi --attn sclip (clip/model.py:350-355, 519-541)"),
    "clearclip": (AttentionRule(("qq",)), Surgery(residual=False, ffn=False),
                  "ResCLIP eval.py --arch wo_resi --attn clearclip (clip/model.py:356-360, 543-563)"),
}

_DEFAULTS = {
    "protocol.crop": (224, _SEG.format(26)),
    "protocol.stride": (112, _SEG.format(25)),
    "protocol.pad_to_patch": (False, _SEG.format("91-131") + " (crops go to the model unpadded)"),
    "protocol.mean": (CLIP_MEAN, _SEG.format(28)),
    "protocol.std": (CLIP_STD, _SEG.format(28)),
    "decision.logit_scale": (40.0, _SEG.format(25)),
    "decision.prob_thd": (0.0, _SEG.format(25)),
    "decision.area_thd": (None, _SEG.format(25)),
    "decision.reduce": ("after_resize", _SEG.format("153-155") + " (predict: logits resized to ori_shape, "
                        "windows or whole image), " + _SEG.format("164-173") + " (postprocess_result: softmax, "
                        "then the max over a class's queries)"),
    "refiners": ((), _SEG.format(24) + " (pamr_steps=0)"),
    "templates": ("imagenet80", _SEG.format(39) + " (openai_imagenet_template)"),
    "pos_resize": ("scale_factor", _MODEL.format("377-394")),
}

# benchmark -> (config name, lines {field: line}, Resize short side, values)
#   values: prob_thd, slide_crop (None = default 224), temp_thd, (tau, lambda) RCS, (tau, lambda) SFR
_ROWS = {
    "voc21": ("voc21", dict(classes=5, prob=6, crop=7, temp=8, dse=9, rcs=10, sfr=11, resize=20), 336,
              dict(prob=0.1, crop=0, temp=0.50, rcs=(2.0, 0.3), sfr=(2.2, 0.7))),
    "context60": ("context60", dict(classes=5, prob=6, temp=7, dse=8, rcs=9, sfr=10, resize=19), 336,
                  dict(prob=0.1, crop=None, temp=0.30, rcs=(2.0, 0.3), sfr=(1.8, 0.7))),
    "coco-object": ("coco_object", dict(classes=5, prob=6, temp=7, dse=8, rcs=9, sfr=10, resize=19), 336,
                    dict(prob=0.1, crop=None, temp=0.11, rcs=(2.0, 0.4), sfr=(1.8, 0.7))),
    "voc20": ("voc20", dict(classes=5, crop=6, temp=7, dse=8, rcs=9, sfr=10, resize=19), 336,
              dict(prob=0.0, crop=0, temp=0.10, rcs=(2.0, 0.6), sfr=(2.1, 0.6))),
    "context59": ("context59", dict(classes=5, temp=6, dse=7, rcs=8, sfr=9, resize=18), 336,
                  dict(prob=0.0, crop=None, temp=0.25, rcs=(2.0, 0.4), sfr=(1.8, 0.7))),
    "coco-stuff171": ("coco_stuff164k", dict(classes=5, temp=6, dse=7, rcs=8, sfr=9, resize=18), 336,
                      dict(prob=0.0, crop=None, temp=0.11, rcs=(2.0, 0.4), sfr=(1.8, 0.7))),
    "cityscapes": ("city_scapes", dict(classes=5, temp=6, dse=7, rcs=8, sfr=9, resize=18), 560,
                   dict(prob=0.0, crop=None, temp=0.10, rcs=(2.0, 0.2), sfr=(2.1, 0.6))),
    "ade20k": ("ade20k", dict(classes=5, temp=6, dse=7, rcs=8, sfr=9, resize=18), 336,
               dict(prob=0.0, crop=None, temp=0.25, rcs=(2.0, 0.3), sfr=(2.1, 0.7))),
}
_CLASSES = {"voc21": "cls_voc21.txt", "context60": "cls_context60.txt", "coco-object": "cls_coco_object.txt",
            "voc20": "cls_voc20.txt", "context59": "cls_context59.txt", "coco-stuff171": "cls_coco_stuff.txt",
            "cityscapes": "cls_city_scapes.txt", "ade20k": "cls_ade20k.txt"}
_BACKGROUND = {"voc21", "context60", "coco-object"}
_BED = ("The class file has 'bed' both among class 0's stuff words and as class 60 (the reference's "
        "tie goes to class 0).")
_FIXED = ("ovss variant (no published number): the code's line-of-sight test checks only the first "
          "steps/max_steps of each segment, its smoothing runs along raster order across grid rows "
          "and its prior is rounded to float16; here the whole segment is checked, the smoothing is a "
          "2-D Gaussian over the patch grid and the prior stays float32. PAMR on the seed is kept.")


def resclip_plugins(rcs: tuple[float, float], sfr: tuple[float, float], temp: float, fixed: bool = False):
    """ResCLIP's two plug-ins with a benchmark's (tau, lambda) pairs and seed threshold."""
    seed = dict(seed_thd=temp, logit_scale=40.0, pamr_steps=10, pamr_dilations=(8, 16), std=5.0)
    if fixed:
        seed.update(line="full", smooth="grid", half=False)
    return (RCS(layers=(5, 6, 7, 8), scale=rcs[0], weight=rcs[1]), SFR(scale=sfr[0], weight=sfr[1], **seed))


def _preset(name: str, base: str = "naclip", fixed: bool = False) -> Preset:
    cfg, lines, short, v = _ROWS[name]
    src = (lambda field: _CFG.format(cfg, lines[field]))
    resize = src("resize") + f" Resize scale=(2048, {short})"
    rule, surgery, base_src = BASES[base]
    values = {"protocol.short_side": (short, resize), "protocol.long_cap": (2048, resize), **_DEFAULTS}
    if v["prob"]:
        values["decision.prob_thd"] = (v["prob"], src("prob"))
    if v["crop"] is not None:
        values["protocol.crop"] = (v["crop"], src("crop") + " slide_crop=0 (whole image)")
    plugins = resclip_plugins(v["rcs"], v["sfr"], v["temp"], fixed)
    plug_src = (f"{src('rcs')} attn_rcs_weights={list(v['rcs'])}; {src('sfr')} attn_sfr_weights="
                f"{list(v['sfr'])}; {src('temp')} temp_thd={v['temp']}; {src('dse')} delete_same_entity=True "
                f"(line-of-sight damping); RCS layers {_MODEL.format('327-329')}; SFR seed PAMR(10, (8, 16)) "
                f"{_MODEL.format('279-284')}, seed softmax x logit_scale 40 {_MODEL.format(287)} "
                f"({_SEG.format(25)}), smoothing std = gaussian_std 5 {_MODEL.format(344)}")
    if fixed:
        plug_src += "; line='full', smooth='grid', half=False: ovss's fixes (see the preset note)"
    values["plugins"] = ("+".join(plugin_spec(p) for p in plugins), plug_src)
    values["attention"] = (str(rule), base_src)
    values["surgery.residual"] = (surgery.residual, base_src)
    values["surgery.ffn"] = (surgery.ffn, base_src)
    notes = []
    if v["crop"] == 0:
        notes.append("Whole image (slide_crop=0), as the config.")
    if name == "coco-object":
        notes.append(_BED)
    if base != "naclip":
        notes.append(f"ResCLIP on {base.upper() if base == 'sclip' else 'ClearCLIP'} (the paper's "
                     f"'{base} + ResCLIP' row), with ResCLIP's protocol and this benchmark's config.")
    if fixed:
        notes.append(_FIXED)
    return Preset.from_values(
        values, {"classes": src("classes")},
        classes=f"sclip/{_CLASSES[name]}",  # ResCLIP's class files are byte-identical to SCLIP's
        background=name in _BACKGROUND,
        note=" ".join(notes),
    )


def _presets() -> dict[str, Preset]:
    out = {}
    for name in _ROWS:
        out[name] = _preset(name)
        out[f"{name}-fixed"] = _preset(name, fixed=True)
        out[f"{name}-on-sclip"] = _preset(name, base="sclip")
        out[f"{name}-on-clearclip"] = _preset(name, base="clearclip")
    return out


PRESETS = _presets()

register_method(MethodSpec(
    name="resclip",
    recipe=Recipe(
        attention=NACLIP_RULE,
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=336, long_cap=2048, crop=224, stride=112, pad_to_patch=False,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0, prob_thd=0.0, area_thd=None),
        templates="imagenet80",
        pos_resize="scale_factor",
        refiners=(),
        # the segmentor has no defaults for the weights and seed threshold (None raises in the
        # code); the default recipe takes the ADE20K config's (2.0, 0.3), (2.1, 0.7), 0.25
        plugins=resclip_plugins((2.0, 0.3), (2.1, 0.7), 0.25),
    ),
    summary="NACLIP's last block + RCS (mean q-k attention of blocks 6-9 mixed in) + SFR (a first "
    "pass's label map as an attention prior for a second pass); also on SCLIP/ClearCLIP",
    paper="Yang, Deng, Li, Duan. ResCLIP: Residual Attention for Training-free Dense Vision-language "
    "Inference. CVPR 2025",
    code=f"yvhangyang/ResCLIP@{COMMIT}",
    presets=PRESETS,
    notes=__doc__,
))
