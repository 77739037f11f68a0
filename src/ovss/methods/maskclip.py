"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022): identity attention in the last block (the value path).

Default recipe = the MaskCLIP row later papers re-run (TCL, CLIP-DINOiser, ClearCLIP, ResCLIP):
OpenAI CLIP, last block with attention replaced by the identity, residual and FFN kept,
ln_post + projection on every patch, CLIP mean/std.

How the official release (chongzhou96/MaskCLIP, an mmseg 0.20 fork) differs, from its code:
- its ViT uses exact GELU and LayerNorm eps 1e-6, not CLIP's QuickGELU and 1e-5 (all blocks);
- ImageNet mean/std, not CLIP's (configs/_base_/datasets/*.py);
- whole-image inference, the positional embedding resized to the target size (mmseg `resize`),
  and bottom-right padding of the input to a multiple of 16;
- logits are raw cosines with no temperature; key smoothing and prompt denoising exist but are
  off in every released MaskCLIP config;
- text: 85 templates (the 80 ImageNet ones + 5 scene templates), one name per class.
The `official-*` presets reproduce the protocol parts (normalisation, whole image, size-based
positional resize, 85 templates, test resize); the GELU/eps difference is a property of the
weights conversion, available as `ovss.load(..., act="gelu")`, and the corner padding is not
reproduced (the patch conv drops the remainder instead).
"""

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Protocol
from ..core.recipe import MethodSpec, Preset, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery

_OFFICIAL = {
    "protocol.crop": 0,
    "protocol.mean": IMAGENET_MEAN,
    "protocol.std": IMAGENET_STD,
    "pos_resize": "size",
    "templates": "maskclip85",
    "decision.reduce": "after_resize",
}
_SRC = {
    "protocol.crop": "MaskCLIP configs/maskclip/*.py: test_cfg=dict(mode='whole')",
    "protocol.mean": "MaskCLIP configs/_base_/datasets/*.py: img_norm_cfg mean=[123.675, 116.28, 103.53]",
    "protocol.std": "MaskCLIP configs/_base_/datasets/*.py: img_norm_cfg std=[58.395, 57.12, 57.375]",
    "pos_resize": "MaskCLIP mmseg/models/backbones/vit.py: resize_pos_embed via mmseg resize (size)",
    "templates": "MaskCLIP tools/maskclip_utils/prompt_engineering.py: 80 ImageNet + 5 scene templates",
    "decision.reduce": "MaskCLIP mmseg/models/segmentors/encoder_decoder.py:217-222, 249 (logits resized to "
                       "ori_shape, then the softmax; its class files have one name per class, so no reduction)",
}


def _official(short: int, long: int, resize_src: str) -> Preset:
    return Preset(
        overrides={**_OFFICIAL, "protocol.short_side": short, "protocol.long_cap": long},
        sources={**_SRC, "protocol.short_side": resize_src, "protocol.long_cap": resize_src},
    )


register_method(MethodSpec(
    name="maskclip",
    recipe=Recipe(
        attention=AttentionRule(("id",)),
        surgery=Surgery(residual=True, ffn=True),
        protocol=Protocol(short_side=336, crop=224, stride=112,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0),
    ),
    summary="identity attention in the last block (value path), residual and FFN kept",
    paper="Zhou, Loy, Dai. Extract Free Dense Labels from CLIP. ECCV 2022",
    code="chongzhou96/MaskCLIP",
    presets={
        "official-voc20": _official(
            512, 2048, "configs/maskclip/maskclip_vit16_512x512_voc12aug_20.py: Resize img_scale=(2048, 512)"),
        "official-context59": _official(
            520, 520, "configs/maskclip/maskclip_vit16_520x520_pascal_context_59.py: img_scale=(520, 520)"),
        "official-coco-stuff171": _official(
            512, 2048, "configs/maskclip/maskclip_vit16_512x512_coco-stuff164k.py: img_scale=(2048, 512)"),
        "official-cityscapes": _official(
            512, 1024, "configs/maskclip/maskclip_vit16_1024x512_cityscapes.py: img_scale=(1024, 512)"),
    },
    notes=__doc__,
))
