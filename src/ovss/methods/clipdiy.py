"""CLIP-DIY (Wysoczanska, Ramamonjisoa, Trzcinski, Simeoni, WACV 2024): CLIP's image embedding of
every crop of a multi-scale grid, regrouped into score maps, averaged over scales and fused with
FOUND's unsupervised saliency. No dense CLIP features at all.

Reference: wysoczanska/clip-diy@f88932d9e001597f407ada7b02bad99a80ccbe92; FOUND:
valeoai/FOUND@1ad22bacf1a6854faff1b5d4be300d54cad6f277 (`ovss.backbones.found`).
- resize (src/datasets/load_dataset.py:25-28, configs/cfg_clip_*.yaml `img_size`): the uint8
  image to 256 x 256 (albumentations `Resize(interpolation=1)`: cv2 INTER_LINEAR, aspect not kept),
  no normalisation (`normalize=False`: ToTensorV2 keeps uint8).
- crops (src/clip_conv.py:102-107, 146-153; cfg `patch_sizes: [256, 128, 64]`, `strides: [2]`):
  `unfold(scale, scale // 2)` on both axes, raster order: 1 + 9 + 49 = 59 crops; each to PIL
  (`ToPILImage` of the uint8 crop) and through `CLIPImageProcessor` (bicubic resize to 224, centre
  crop 224, /255, OpenAI mean/std), `CLIPVisionModelWithProjection.image_embeds`, L2-normalised
  (clip_conv.py:129-144); cosine with the unit text embeddings, logit scale NOT applied (line 141).
- maps (clip_conv.py:155-172, cfg `interpolate_logits: True`, `align_corners: False`): each
  scale's crop grid bilinear to 256 x 256; averaged over the scales with `patch_w1..3` = 1
  (clip_conv.py:107: mean of weighted maps).
- saliency fusion (eval_clipconv.py:49-60, cfg `saliency: True`): FOUND's sigmoid probability at
  the image's own size (thirdparty/extract_saliency.py:259-284 `--drop-probs`), resized to
  256 x 256 like the image (pascal_voc.py:172-174); class 0 times (1 - s), the others times s;
  softmax; argmax (line 64).
- text (clip_conv.py:61-62, 113-127): one prompt "a photo of a {class}" (no full stop), class 0
  the literal word "background" (src/datasets/pascal_voc.py:22-44, coco.py:103).
- output (src/semseg/evaluate.py:55-56): the 256 x 256 label map resized to the ground truth
  with cv2 INTER_NEAREST; here the fused scores are resized nearest to the image (then the
  argmax), which gives the same labels.
Backbone: laion/CLIP-ViT-B-32-laion2B-s34B-b79K (cfg `clip_model`), in ovss
`backbone="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"`.

In ovss the whole method is the head `clipdiy` (`CLIPDIYHead.joint_slide`): it reads the image at
its own size (protocol `short_side=None`, `crop=0`), makes the 256 x 256 image and the crops
itself, and runs FOUND on the original image. Any saliency map can replace FOUND
(`CLIPDIYHead(saliency=...)`: "none", a .npy path, an array, a callable); `dino=` replaces
FOUND's DINO tower, `decoder=` its weights.

Reference bugs (none changes the numbers reproduced here):
- `_create_prompt` tests `text.startswith('aeiou')` (the literal string), so the prompt is always
  "a photo of a ..." (never "an"); reproduced (it is what the numbers used).
- `eval_clipconv.py:94` reloads the predictions from `cfg.results`, which no config defines, and
  `configs/cfg_clip_pascal.yaml:13` writes `output_dir: {paths.results}` without the `$` (YAML
  reads a mapping): the script does not run unmodified. Not reproduced (ovss evaluates directly).
- `eval_clipconv.py:60`: the softmax before the argmax changes nothing; kept as ovss's decision
  (logit scale 1, so the probabilities equal the reference's).
- `MetaClipConv` reshapes crops into a square grid (`int(n ** 0.5)`); only square resizes work
  (as here: `size` is one side).
The image's resize to 256 x 256 is cv2's fixed-point INTER_LINEAR, reproduced bit for bit
(`heads.clipdiy.resize_uint8`, checked against opencv-python 5.1's SIMD path; `resize=torch` is a
rounded float bilinear, one grey level off on ~12% of values).
Not reproduced: the evaluation's ground truth resized to short side 448 with nearest
(`PascalVOCSegmentation.get_mask`, coco.py:126-128): `ovss eval` scores at the ground truth's
own size.
"""

from __future__ import annotations

from ..core.decision import Decision
from ..core.protocol import Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.clipdiy import OPENAI_MEAN01, OPENAI_STD01, CLIPDIYHead
from ..heads.dense import Surgery

_REPO = "CLIP-DIY {}"
_MEAN = tuple(255 * v for v in OPENAI_MEAN01)
_STD = tuple(255 * v for v in OPENAI_STD01)
TEMPLATES = ("a photo of a {}",)  # clip_conv.py:61-62 (no full stop; never "an")

# preset -> (config file, class list shipped under data/classnames/clipdiy/, its source)
# (the config's lines: align_corners, then img_size .. interpolate_logits)
_DATASETS = {
    "voc21": ("configs/cfg_clip_pascal.yaml:{}", (14, "17-23"), "cls_voc21.txt",
              "src/datasets/pascal_voc.py:22-44 (VOC_CLASSES)"),
    "coco-object": ("configs/cfg_clip_coco.yaml:{}", (15, "18-24"), "cls_coco_object.txt",
                    "src/datasets/coco.py:19-100, 103 (COCO_CLASS_NAMES_ALL = ['background'] + COCO_CLASS_NAMES)"),
}


def _preset(name: str) -> Preset:
    cfg, (ac_line, lines), file, where = _DATASETS[name]
    ds = "src/datasets/pascal_voc.py:166-176" if name == "voc21" else "src/datasets/coco.py:131-149"
    values = {
        "protocol.short_side": (None, _REPO.format(f"{ds} (the image and its saliency map read at their own "
                                                   "size, then the transform's Resize(256, 256), which the head does: "
                                                   "see plugins)")),
        "protocol.crop": (0, _REPO.format("src/clip_conv.py:102-107 (one image, no sliding windows)")),
        "protocol.mean": (_MEAN, _REPO.format("src/clip_conv.py:83, 134 (CLIPImageProcessor of the model: OpenAI's "
                                              "image_mean) x 255; the head recovers the uint8 image from the input, so "
                                              "any value gives the same numbers")),
        "protocol.std": (_STD, _REPO.format("src/clip_conv.py:83, 134 (CLIPImageProcessor of the model: OpenAI's "
                                            "image_std) x 255; as protocol.mean")),
        "decision.logit_scale": (1.0, _REPO.format("src/clip_conv.py:141 (#* logit_scale: cosines as logits); "
                                                   "eval_clipconv.py:60 (softmax of the fused cosines)")),
        "decision.prob_thd": (0.0, _REPO.format("eval_clipconv.py:64 (argmax, no threshold)")),
        "templates": (TEMPLATES, _REPO.format("src/clip_conv.py:61-62, 117 (one prompt; the 'aeiou' test never matches)")),
        "plugins": (("clipdiy:size=256,scales=256|128|64,strides=2,weights=1.0|1.0|1.0,side=224,interpolate=True,"
                     "align_corners=False,saliency=found,vfm=dino-vits8,decoder=found-duts-tr"),
                    _REPO.format(cfg.format(lines) + " (img_size, patch_sizes, patch_w1-3, strides, interpolate_logits), "
                                 + cfg.format(ac_line) + " (align_corners); src/datasets/load_dataset.py:26 (Resize 256x256); "
                                 "eval_clipconv.py:49-60 (saliency: True, fusion); FOUND "
                                 "configs/found_DUTS-TR.yaml:1-7, model.py:53 (ViT-S/8 keys, 1x1 decoder)")),
    }
    return Preset(overrides={k: v for k, (v, _) in values.items()},
                  sources={k: s for k, (_, s) in values.items()} | {"classes": _REPO.format(where)},
                  classes=f"clipdiy/{file}", background=True)


register_method(MethodSpec(
    name="clipdiy",
    recipe=Recipe(
        attention=AttentionRule(("id",)),
        surgery=Surgery(),
        protocol=Protocol(short_side=None, crop=0, mean=_MEAN, std=_STD),
        decision=Decision(logit_scale=1.0, prob_thd=0.0, area_thd=None),
        templates=TEMPLATES,
        plugins=(CLIPDIYHead(),),
    ),
    summary="CLIP image embeddings of a 256/128/64-px crop grid, averaged over scales, fused with FOUND saliency",
    paper="Wysoczanska, Ramamonjisoa, Trzcinski, Simeoni. CLIP-DIY: CLIP Dense Inference Yields Open-Vocabulary "
          "Semantic Segmentation For-Free. WACV 2024",
    code="wysoczanska/clip-diy@f88932d9e001597f407ada7b02bad99a80ccbe92",
    presets={n: _preset(n) for n in _DATASETS},
    notes=__doc__,
))
