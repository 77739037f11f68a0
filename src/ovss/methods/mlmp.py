"""MLMP (Osowiechi, Noori, Bahri, Hakim, Ben Ayed, Desrosiers; NeurIPS 2025): test-time adaptation
of a training-free segmenter's LayerNorms by a multi-level, multi-template entropy objective.

Reference: dosowiechi/MLMP@2a887de018b3f2c3b132f69fe806bab12a2d511f (`bash/<dataset>/mlmp.sh`,
`adapt/mlmp.py`, `ovss/clip/model.py`, `ovss/__init__.py`, `main.py`, `prompts.yaml`,
`utils/segmentation_datasets.py`, `utils/mm_transforms.py`). The pieces are `heads/mlmp.py` (the
adapter and the readout) and `core/tta.py` (how a call is adapted and restored).

- base segmenter: NACLIP's last block ("reduced": k-k attention + Gaussian prior, std 5, no
  residual, no FFN; ovss/__init__.py:34-36), no PAMR, the 7 templates of prompts.yaml;
- per image: 10 Adam steps (lr 1e-3, betas (0.9, 0.999), no weight decay) on the affine parameters
  of every LayerNorm of the image tower, minimising the entropy of the patch logits of the last 18
  blocks' averaged attention outputs, per template, + 1.0 x the class-token entropy
  (bash/v21/mlmp.sh:13-22, adapt/mlmp.py:91, 170-183), from the source weights each time;
- readout: each of the 18 levels weighted per window by softmax(-its mean entropy), fused before
  ln_post (ovss/clip/model.py:601-651); logits x the weights' exp(logit_scale), softmax over the
  queries, max over a class's synonyms, argmax (main.py:346-358).

Protocols. MLMP's own (the dataset presets, e.g. `voc21`): the image squashed to 224 x 224
(aspect not kept; Cityscapes 1120 x 560 cut into 224/112 windows) and the ground truth resized
to the same size (cv2 nearest) and scored there (`ovss eval` protocol "mlmp";
utils/mm_transforms.py:99-121, bash/*/mlmp.sh:7). Its numbers are not comparable with other
methods'. The standard protocol (`<dataset>-standard`, and the recipe without a preset): NACLIP's
mmseg resize (short side 336, Cityscapes 560) with 224/112 windows, full-size labels.

Code vs paper / what differs here:
- Batch: the reference adapts on 2 images at once (BATCH_SIZE=2, a shuffled DataLoader) and
  evaluates them with the weights adapted on both; here each image is adapted on its own (all of
  its windows jointly, as the reference does within a batch), so no state passes between images
  or requests. With 2-image batches the pairing (and so the numbers) changes with the shuffle.
- The reference runs in mixed precision on the GPU (fp16 weights and activations, LayerNorms and
  their Adam state in fp32); ovss runs in the model's precision (float32 unless loaded otherwise).
  tests/test_mlmp.py states what that costs in parity.
- logit_scale: the weights' own exp(logit_scale) in the loss and the layer weights (100 for
  OpenAI's CLIP; the method card's "100 cos" is that value, the code reads the weights, and the
  code is followed); the decision's logit scale (100) only changes the scores, not the labels.
- The paper's backbone is ViT-L/14 (`--backbone clip-vit-l14`); with a 12-block ViT-B the 18
  levels are all 12 blocks, as the reference's -1..-18 list gives there.
Not reproduced: the 15 corruptions (ImageNet-C style) the paper also evaluates on; the 3 trials
(only the batch shuffle differs between them).
"""

from __future__ import annotations

from ..core.decision import Decision
from ..core.protocol import Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, plugin_spec, register_method
from ..core.registry import ADAPTERS
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery
from ..heads.mlmp import MLMP, MLMPReadout

# utils/segmentation_datasets.py:353-354 (not the mmseg configs' rounded 122.771, ...)
MLMP_MEAN = (122.7709, 116.7460, 104.0937)
MLMP_STD = (68.5005, 66.6322, 70.3232)
TTA = plugin_spec(MLMP(), ADAPTERS)
READOUT = plugin_spec(MLMPReadout())

_SH = "MLMP bash/{}/mlmp.sh:{}"
_NACLIP_CFG = "NACLIP configs/cfg_{}.py:{} Resize scale=(2048, {}) (the standard mmseg protocol of MLMP's base model)"

# preset name -> (MLMP bash folder, class file, background, squash, NACLIP config name, its resize line, short side)
_DATASETS = {
    "voc21": ("v21", "cls_voc21.txt", True, (224, 224), "voc21", 16, 336),
    "voc20": ("v20", "cls_voc20.txt", False, (224, 224), "voc20", 15, 336),
    "context59": ("p59", "cls_context59.txt", False, (224, 224), "context59", 14, 336),
    "context60": ("p60", "cls_context60.txt", True, (224, 224), "context60", 15, 336),
    "coco-object": ("coco_obj", "cls_coco_object.txt", True, (224, 224), "coco_object", 15, 336),
    "coco-stuff171": ("coco_stuff", "cls_coco_stuff.txt", False, (224, 224), "coco_stuff164k", 14, 336),
    "cityscapes": ("cityscapes", "cls_city_scapes.txt", False, (1120, 560), "city_scapes", 14, 560),
}
# MLMP's class-extension files are byte-identical to these shipped ones (Cityscapes: LPOSS's,
# with "trafficlight" / "trafficsign" written as one word)
_CLASS_DIR = {"cityscapes": "lposs"}
_EXT = {"v21": "voc21", "v20": "voc20", "p59": "context59", "p60": "context60", "coco_obj": "coco_object",
        "coco_stuff": "coco_stuff", "cityscapes": "cityscapes"}


def _presets() -> dict[str, Preset]:
    out = {}
    for name, (sh, cls_file, bg, squash, cfg, line, short) in _DATASETS.items():
        common = {
            "tta": (TTA, _SH.format(sh, "13-22") + " (OUT_VISION -1..-18, ALPHA_CLS 1.0, LR 0.001, STEPS 10); "
                    "MLMP adapt/mlmp.py:91 (Adam betas (0.9, 0.999), weight_decay 0), 115-120 (reset per batch)"),
            "plugins": (READOUT, _SH.format(sh, 13) + " (OUT_VISION: 18 levels); MLMP ovss/clip/model.py:601-651"),
            "templates": ("mlmp7", _SH.format(sh, 14) + " (PROMPT_DIR prompts.yaml)"),
            "protocol.mean": (MLMP_MEAN, "MLMP utils/segmentation_datasets.py:353"),
            "protocol.std": (MLMP_STD, "MLMP utils/segmentation_datasets.py:354"),
            "protocol.crop": (224, _SH.format(sh, 43) + " (--patch_size 224 224)"),
            "protocol.stride": (112, _SH.format(sh, 44) + " (--patch_stride 112)"),
        }
        own = {**common, "protocol.squash": (squash, _SH.format(sh, 7) + " (INIT_RESIZE; "
                                                     "utils/mm_transforms.py:103-115, aspect not kept)")}
        standard = {**common,
                    "protocol.short_side": (short, _NACLIP_CFG.format(cfg, line, short)),
                    "protocol.long_cap": (2048, _NACLIP_CFG.format(cfg, line, short))}
        classes = f"{_CLASS_DIR.get(name, 'sclip')}/{cls_file}"
        cls_src = f"MLMP utils/class_extensions/{_EXT[sh]}.txt (main.py:281-283, 349-355 --class_extensions)"
        own_note = ("MLMP's own protocol: the image squashed, the ground truth resized to the same size (nearest) "
                    "and scored there; not comparable with other methods' numbers.")
        std_note = ("The standard protocol (mmseg resize, 224/112 windows, full-size labels), comparable with the "
                    "other methods.")
        for pname, values, protocol, note in ((name, own, "mlmp", own_note),
                                              (f"{name}-standard", standard, "mmseg", std_note)):
            out[pname] = Preset(overrides={k: v for k, (v, _) in values.items()},
                                sources={k: s for k, (_, s) in values.items()} | {"classes": cls_src},
                                classes=classes, background=bg, note=note, eval_protocol=protocol)
    return out


register_method(MethodSpec(
    name="mlmp",
    recipe=Recipe(
        attention=AttentionRule(("kk",), prior="gaussian", prior_std=5.0),
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=336, long_cap=2048, crop=224, stride=112, pad_to_patch=False,
                          mean=MLMP_MEAN, std=MLMP_STD),
        decision=Decision(logit_scale=100.0, prob_thd=0.0, area_thd=None),
        templates="mlmp7",
        pos_resize="scale_factor",
        refiners=(),
        plugins=(MLMPReadout(),),
        tta=(MLMP(),),
    ),
    summary="test-time adaptation of the image tower's LayerNorms (10 Adam steps per image on a multi-level, "
    "multi-template entropy) under NACLIP's last block; entropy-weighted multi-level readout",
    paper="Osowiechi, Noori, Bahri, Hakim, Ben Ayed, Desrosiers. Test-Time Adaptation of Vision-Language Models "
    "for Open-Vocabulary Semantic Segmentation. NeurIPS 2025 (arXiv 2505.21844)",
    code="dosowiechi/MLMP@2a887de018b3f2c3b132f69fe806bab12a2d511f",
    presets=_presets(),
    notes=__doc__,
))
