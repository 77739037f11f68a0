"""FreeDA (Barsellotti, Amoroso, Cornia, Baraldi, Cucchiara, CVPR 2024): training-free
segmentation with diffusion-augmented prototypes, a kNN bank keyed in CLIP's text space.

Reference: aimagelab/freeda@bee96c5 (src/; the repository's later commits touch the web page
only). The test-time path, as ovss runs it (head `freeda`, `heads/freeda.py`; bank `data/bank.py`):
- class prototypes (models/freeda/freeda.py:271-331): each class's text embedding queries the
  bank's keys for its `k_search` = 350 nearest (FAISS; efSearch 50000 on HNSW, 294-297); the
  prototype is the plain mean of their prototypes (`prototype_mean: true`, 323-324).
- per window (crop 448, stride 224; segmentation/configs/_base_/datasets/*.py `test_cfg`), on the
  un-normalised RGB crop (no Normalize in the test pipeline; BGR -> RGB at freeda.py:652):
  DINOv2 ViT-L/14 (timm vit_large_patch14_dinov2.lvd142m, img_size 518) on the crop resized to
  518 x 518 (bilinear, no antialias), /255, ImageNet-normalised; `forward_features` (final norm),
  class token dropped (freeda.py:129-199, 694-706); patch scores sigmoid(cos(F, p_c))
  (masker.py:249-300), bilinear to the crop with align_corners=True (freeda.py:711).
- superpixels (mask_proposer/superpixel.py:73-119): skimage felzenszwalb of crop / 255 with the
  dataset's scale / sigma / min_size (configs/<ds>/freeda_<ds>.yml:39-43); every superpixel's
  mask bilinearly resized to the 37 x 37 grid (align_corners=True) weights the mean of the
  features; sigmoid(cos(region, p_c)) painted on its pixels, replacing the patch scores
  (freeda.py:470-533, 712-720).
- global term (freeda.py:668-681, 724-726): CLIP ViT-L/14's image embedding of the crop resized
  to 224 (bicubic), cosine with the class text embedding; scores = 0.8 * region + 0.2 * global
  (`ensemble_dino_clip: 0.8`); `ensemble_max_mean: 1.0` and K = 1 make the max/mean step the
  identity.
- windows averaged (mmseg slide inference), bilinear to the image, argmax (no PAMR, no
  category pre-filtering, no threshold: the five configs' datasets have no background class).

Where the method card (shared/methods/...freeda section 4) and the code disagree, ovss follows
the code: the card's "VOC20 ... ADE" superpixel table matches the yml files; the card calls the
global term `g_c` on "CLIP-L/14(crop)" - the code's input is the whole crop that generate_masks
gets, which is the sliding window (as here).

Known differences (stated, not hidden):
- text embeddings: FreeDA averages the raw (un-normalised) template embeddings and normalises
  the mean (freeda.py:283-289); ovss's text bank normalises each template's embedding before the
  mean. Both use the 7 "sub-ImageNet" templates (datasets/templates.py:99-107). The directions
  differ slightly when template norms differ.
- class names: FreeDA's dataset CLASSES; ovss uses the benchmark's class list of `ovss eval`
  (none is shipped for FreeDA).
- the released bank's FAISS index is HNSW (approximate); ovss's exact search returns the true
  nearest keys, which HNSW with efSearch 50000 finds almost always on that bank.
- the bank itself: the paper's is made from Stable-Diffusion images of COCO captions, with
  cross-attention masks; that generator is not released. Use the released bank (read as it is)
  or `ovss build-bank` on a folder of images with masks (generated ones reproduce the recipe).
"""

from __future__ import annotations

from ..core.decision import Decision
from ..core.protocol import Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from ..heads.freeda import FreeDAHead
from ..text.bank import TEMPLATE_SETS

# datasets/templates.py:99-107 (`sub_imagenet_template`, eval_*.yml `template:`)
SUB_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)
TEMPLATE_SETS.setdefault("freeda7", SUB_IMAGENET_TEMPLATES)

_YML = "FreeDA src/configs/{0}/freeda_{0}.yml:{1}"
_DS = "FreeDA src/segmentation/configs/_base_/datasets/{}.py:{}"
_EVAL = "FreeDA src/configs/{0}/eval_{0}.yml:10 (template: sub_imagenet_template); src/datasets/templates.py:99-107"

_DATASETS = {  # preset -> (config folder, dataset file, img_scale line, test_cfg line, (scale, sigma, min_size))
    "voc20": ("pascal20", "pascal_voc12_20", 16, 40, (100, 0.7, 20)),
    "context59": ("pascal59", "pascal_context59", 16, 40, (100, 1.0, 20)),
    "coco-stuff171": ("cocostuff", "stuff", 16, 39, (100, 1.0, 100)),
    "cityscapes": ("cityscapes", "cityscapes", 16, 39, (20, 0.5, 50)),
    "ade20k": ("ade", "ade20k", 16, 39, (100, 1.0, 20)),
}


def _preset(name: str) -> Preset:
    cfg, ds, scale_line, cfg_line, (scale, sigma, min_size) = _DATASETS[name]
    yml = _YML.format(cfg, "{}")
    plugins = (f"freeda:vfm=dinov2-vitl14,dino_size=518,k_search=350,scale={float(scale)},sigma={float(sigma)},"
               f"min_size={min_size},ensemble=0.8,clip_size=224")
    values = {
        "protocol.short_side": (448, _DS.format(ds, scale_line) + " img_scale=(2048, 448)"),
        "protocol.long_cap": (2048, _DS.format(ds, scale_line)),
        "protocol.crop": (448, _DS.format(ds, cfg_line) + " crop_size=(448, 448)"),
        "protocol.stride": (224, _DS.format(ds, cfg_line) + " stride=(224, 224)"),
        "protocol.mean": ((0.0, 0.0, 0.0), _DS.format(ds, 22) + " (Normalize commented out: the raw 0-255 image)"),
        "protocol.std": ((1.0, 1.0, 1.0), _DS.format(ds, 22) + " (Normalize commented out)"),
        "plugins": (plugins, yml.format("7") + " (backbone_model_name), " + yml.format("9") + " (k_search), "
                    + yml.format("15-16") + " (ensemble_dino_clip, ensemble_max_mean), " + yml.format("39-44")
                    + " (felzenszwalb min_size, scale, sigma; prototype_mean); FreeDA src/models/freeda/"
                    "freeda.py:130 (img_size 518), 115-122 (CLIP input 224)"),
        "templates": ("freeda7", _EVAL.format(cfg)),
    }
    return Preset(overrides={k: v for k, (v, _) in values.items()},
                  sources={k: s for k, (_, s) in values.items()},
                  note="Needs a prototype bank (Segmenter(..., bank=PATH), OVSS_FREEDA_BANK=PATH or --set "
                       "plugins=freeda:bank=PATH,...) and FreeDA's CLIP: backbone clip-vit-l14 "
                       "(freeda_<ds>.yml:5-6 clip_model ViT-L-14, openai).")


register_method(MethodSpec(
    name="freeda",
    recipe=Recipe(
        attention=AttentionRule(("id",)),
        surgery=Surgery(),
        protocol=Protocol(short_side=448, long_cap=2048, crop=448, stride=224, mean=(0.0, 0.0, 0.0),
                          std=(1.0, 1.0, 1.0)),
        decision=Decision(logit_scale=1.0, prob_thd=0.0, area_thd=None),
        templates="freeda7",
        plugins=(FreeDAHead(),),
    ),
    summary="DINOv2 features vs class prototypes retrieved from a text-keyed bank, pooled in Felzenszwalb "
            "superpixels, ensembled 0.8/0.2 with CLIP's global image-text similarity (needs a bank)",
    paper="Barsellotti, Amoroso, Cornia, Baraldi, Cucchiara. Training-Free Open-Vocabulary Segmentation "
          "with Offline Diffusion-Augmented Prototype Generation. CVPR 2024",
    code="aimagelab/freeda@bee96c5",
    presets={n: _preset(n) for n in _DATASETS},
    notes=__doc__,
))
