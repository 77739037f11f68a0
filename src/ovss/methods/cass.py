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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionRule, Mix
from ..dense import PLUGINS, Surgery, last_block
from ..hierarchy import ward_clusters
from ..inference import CLIP_MEAN, CLIP_STD, Decision, Protocol, slide_logits, window_boxes
from ..presence import class_token_prior, presence_logits
from ..spectral import HeadMatching, SpectralDistill, key_graphs, rescale_range
from .base import MethodSpec, Preset, Recipe, register_method
from .proxyclip import _IMAGENET_MEAN, _IMAGENET_STD, get_vfm

# cass_segmentor.py:75-78: the inverse of ImageNet normalisation, with 0.255 for the blue std
_CASS_INV_MEAN = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255)
_CASS_INV_STD = (1 / 0.229, 1 / 0.224, 1 / 0.255)


def cass_dino_input(crop: torch.Tensor, mean, std, patch: int, mode: str = "cass", side: int = 0) -> torch.Tensor:
    """One CLIP-normalised crop (1, 3, H, W) -> DINO's normalised input (1, 3, h, w).

    side: "cass" mode's square size: 0 = the crop's shorter side with PIL's bicubic filter (the
    DINO ViT-B/8 path), > 0 = that size with PIL's bilinear filter (the DINOv2 path's
    `transforms.Resize((518, 518))`, dinov2/dino_attention.py:36-40)."""
    dev = crop.device
    im = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
    ist = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
    if mode == "cass":
        from PIL import Image

        x = crop[0].detach().float().cpu()
        y = (x - torch.tensor(_CASS_INV_MEAN).view(3, 1, 1)) / torch.tensor(_CASS_INV_STD).view(3, 1, 1)
        arr = (y.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        filt = Image.Resampling.BILINEAR if side > 0 else Image.Resampling.BICUBIC
        side = side if side > 0 else min(arr.shape[0], arr.shape[1])
        img = Image.fromarray(arr).resize((side, side), filt)
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
        t = (t - im) / ist
    elif mode == "exact":
        m = torch.tensor(mean, device=dev).view(3, 1, 1)
        s = torch.tensor(std, device=dev).view(3, 1, 1)
        t = ((crop[0].float() * s + m) / 255.0 - im.to(dev)) / ist.to(dev)
    else:
        raise ValueError(f"unknown dino_input {mode!r}; choose 'cass' or 'exact'")
    h, w = t.shape[-2] - t.shape[-2] % patch, t.shape[-1] - t.shape[-1] % patch
    return t[None, :, :h, :w].to(dev)


@dataclass(frozen=True)
class CASSHead:
    """CASS's patch stage over all windows of an image (see the module docstring).

    vfm: DINO registry name (or a `proxyclip.register_vfm` name) of the graph model.
    k_eigen, rank, niter, scale, stretch, svd, pairing: `spectral.SpectralDistill`.
    text_weight (mean_vector_weight), prior_weight (global_semantics_weight), cluster_threshold
        (h_threshold), topk: `presence`.
    global_cls: "image" (the prior from the whole image's class token when sliding) or "window".
    dino_input, dino_half: see the module docstring. dino_side: the square side of the "cass" DINO
        input (0: the crop's shorter side; 518 with a DINOv2 `vfm`, as the reference's DINOv2
        option). seed: the low-rank SVD's generator seed per image (-1: leave the global
        generator alone).
    """

    vfm: str = "dino-vitb8"
    k_eigen: int = 20
    rank: int = 10
    niter: int = 2
    scale: float = 10.0
    stretch: bool = True
    svd: str = "lowrank"
    pairing: str = "cass"
    text_weight: float = 0.03
    prior_weight: float = 0.1
    cluster_threshold: float = 0.1
    topk: int = 2
    global_cls: str = "image"
    dino_input: str = "cass"
    dino_half: bool = True
    dino_side: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.global_cls not in ("image", "window"):
            raise ValueError(f"unknown global_cls {self.global_cls!r}; choose 'image' or 'window'")

    @property
    def distill(self) -> SpectralDistill:
        return SpectralDistill(self.k_eigen, self.rank, self.niter, self.scale, self.stretch, self.svd,
                               self.pairing)

    # ---- pieces (public so tests and other recipes can run them stage by stage) ------------
    def dino_keys(self, crop: torch.Tensor, protocol: Protocol, grid: tuple[int, int]) -> torch.Tensor:
        """DINO's last-block patch keys for one crop, on CLIP's grid: (heads, h*w, d_h) (fp16 with
        `dino_half`, else float32); `features` maps them into CLIP's key range."""
        from ..backbones.dino import dino_features

        vfm = get_vfm(self.vfm, crop.device)
        x = cass_dino_input(crop, protocol.mean, protocol.std, vfm.patch_size, self.dino_input, self.dino_side)
        # DINO v1's own attention arithmetic, so the fp16 cast below rounds as the reference's
        # (DINOv2's q * s @ k^T is what the fused kernel already gives bit for bit)
        order = "qk_s" if vfm.n_prefix == 1 and not vfm.cfg.layer_scale else None
        kd = dino_features(vfm, x.to(next(vfm.parameters()).dtype), kind="k", heads=True, order=order)[0]
        kd = kd.half() if self.dino_half else kd.float()
        nh, dh = kd.shape[:2]
        kd = F.interpolate(kd, size=grid, mode="bilinear", align_corners=False)
        return kd.reshape(nh, dh, grid[0] * grid[1]).permute(0, 2, 1)

    def features(self, visual, rule: AttentionRule, surgery: Surgery, tokens: torch.Tensor,
                 grid: tuple[int, int], dino_keys: torch.Tensor,
                 matching: HeadMatching | None = None) -> tuple[torch.Tensor, HeadMatching]:
        """Normalised patch features (h*w, C) of the distilled last block, and the head matching.
        `dino_keys` (heads, h*w, d) are rescaled into the range of CLIP's patch keys here."""
        block = visual.blocks[-1]
        _, k, _ = block.attn.qkv(block.ln_1(tokens))
        k = k[0, :, 1:].contiguous()  # (heads, h*w, d_h)
        if dino_keys.shape[0] != k.shape[0]:
            raise ValueError(f"CASS pairs DINO's attention heads with CLIP's: the DINO model has "
                             f"{dino_keys.shape[0]} heads, CLIP's last block {k.shape[0]} (ViT-B/16 CLIP and DINO "
                             "ViT-B/8 both have 12)")
        scale = k.shape[-1] ** -0.5
        clip_graphs = key_graphs(k, scale)
        dino_graphs = key_graphs(rescale_range(dino_keys, k), scale)
        graphs, weight, matching = self.distill.fuse(clip_graphs, dino_graphs, matching)
        mix = Mix(graphs.to(k.dtype)[None], "logits", weight=weight.to(k.dtype).view(1, -1, 1, 1))
        y = last_block(block, tokens, rule, surgery, grid, [mix], cls_token=False)
        return F.normalize(visual.project(y), dim=-1)[0], matching

    def window_logits(self, seg, crops: torch.Tensor, queries: torch.Tensor, clusters: np.ndarray,
                      prior: torch.Tensor | None) -> torch.Tensor:
        """Crops (B, 3, H, W) -> patch logits (B, Q, h, w)."""
        r, visual = seg.recipe, seg.visual
        out = []
        for crop in crops.split(1):
            tok = visual.forward_tokens(crop, pos_resize=r.pos_resize)
            dk = self.dino_keys(crop, r.protocol, tok.grid)
            feats, _ = self.features(visual, r.attention, r.surgery, tok.tokens, tok.grid, dk)
            g = prior if prior is not None else class_token_prior(visual, tok.tokens, queries)[0]
            lg = presence_logits(feats, queries, g, clusters, self.text_weight, self.prior_weight, self.topk)
            out.append(lg.T.reshape(1, -1, *tok.grid))
        return torch.cat(out)

    def joint_slide(self, seg, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised input, (Q, C) unit queries -> (Q, H, W) stitched logits."""
        p = seg.recipe.protocol
        clusters = ward_clusters(queries, self.cluster_threshold)
        prior = None
        if self.global_cls == "image" and len(window_boxes(x.shape[-2], x.shape[-1], p.crop, p.stride)) > 1:
            tok = seg.visual.forward_tokens(x, pos_resize=seg.recipe.pos_resize)
            prior = class_token_prior(seg.visual, tok.tokens, queries)[0]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=self.seed >= 0):
            if self.seed >= 0:
                torch.manual_seed(self.seed)
            return slide_logits(x, lambda crops: self.window_logits(seg, crops, queries, clusters, prior),
                                p, seg.visual.patch_size)


PLUGINS.register("cass", CASSHead)

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
    return Preset(overrides={k: v for k, (v, _) in values.items()},
                  sources={k: s for k, (_, s) in values.items()} | {"classes": _CFG.format(cfg, 5)},
                  classes="sclip/" + classes, background=name in _BACKGROUND)


register_method(MethodSpec(
    name="cass",
    recipe=Recipe(
        attention=AttentionRule(("kk",), prior="gaussian", prior_std=5.0),
        surgery=Surgery(residual=False, ffn=False),
        protocol=Protocol(short_side=336, long_cap=2048, crop=224, stride=112),
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
