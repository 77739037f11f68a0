"""Dense CLIP: the unchanged last block read out per patch (the "vanilla CLIP" baseline row).

Every later paper reports it (SCLIP Table 1: VOC21 18.8, ADE 3.1 with ViT-B/16), to show that
CLIP's q-k attention in the last block destroys spatial detail.
"""

from ..core.decision import Decision
from ..core.protocol import CLIP_MEAN, CLIP_STD, Protocol
from ..core.recipe import MethodSpec, Recipe, register_method
from ..heads.attention import AttentionRule
from ..heads.dense import Surgery

register_method(MethodSpec(
    name="dense-clip",
    recipe=Recipe(
        attention=AttentionRule(("qk",)),
        surgery=Surgery(residual=True, ffn=True),
        protocol=Protocol(short_side=336, crop=224, stride=112,
                          mean=CLIP_MEAN, std=CLIP_STD),
        decision=Decision(logit_scale=40.0),
    ),
    summary="CLIP's own last block (q-k attention, residual, FFN) read out at every patch",
    paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
    code="openai/CLIP",
    notes="Protocol defaults follow the SCLIP/NACLIP 8-benchmark skeleton (short side 336, 224/112 "
    "windows, logit scale 40); ClearCLIP's maintainer uses prob_thd 0.2 for this baseline on "
    "background datasets (ClearCLIP issue #2).",
))
