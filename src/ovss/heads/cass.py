"""CASS's head (Kim et al., CVPR 2025): spectral DINO key graphs distilled into CLIP's last
attention per head, and object-presence text refinement, over every window of an image. The
reference, its quirks and the settings' sources are in the method's file, `methods/cass.py`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..core.protocol import slide_logits, window_boxes
from ..core.registry import PLUGINS
from ..core.trace import record
from ..ops.hierarchy import ward_clusters
from ..ops.spectral import HeadMatching, SpectralDistill, key_graphs, rescale_range
from .attention import AttentionRule, Mix
from .dense import Surgery, last_block
from .plugin import HeadPlugin
from .presence import class_token_prior, presence_logits
from .vfm import IMAGENET_MEAN, IMAGENET_STD, get_vfm, to_dino_input

# cass_segmentor.py:75-78: the inverse of ImageNet normalisation, with 0.255 for the blue std
_CASS_INV_MEAN = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255)
_CASS_INV_STD = (1 / 0.229, 1 / 0.224, 1 / 0.255)


def cass_dino_input(crop: torch.Tensor, mean, std, patch: int, mode: str = "cass", side: int = 0) -> torch.Tensor:
    """One CLIP-normalised crop (1, 3, H, W) -> DINO's normalised input (1, 3, h, w).

    side: "cass" mode's square size: 0 = the crop's shorter side with PIL's bicubic filter (the
    DINO ViT-B/8 path), > 0 = that size with PIL's bilinear filter (the DINOv2 path's
    `transforms.Resize((518, 518))`, dinov2/dino_attention.py:36-40)."""
    dev = crop.device
    im = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    ist = torch.tensor(IMAGENET_STD).view(3, 1, 1)
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
        t = to_dino_input(crop.float(), mean, std)[0]
    else:
        raise ValueError(f"unknown dino_input {mode!r}; choose 'cass' or 'exact'")
    h, w = t.shape[-2] - t.shape[-2] % patch, t.shape[-1] - t.shape[-1] % patch
    return t[None, :, :h, :w].to(dev)


@PLUGINS.register("cass")
@dataclass(frozen=True)
class CASSHead(HeadPlugin):
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
    # SpectralDistill's settings, flat (so `--set plugins=cass:rank=...` reaches them), its defaults
    k_eigen: int = SpectralDistill.k_eigen
    rank: int = SpectralDistill.rank
    niter: int = SpectralDistill.niter
    scale: float = SpectralDistill.scale
    stretch: bool = SpectralDistill.stretch
    svd: str = SpectralDistill.svd
    pairing: str = SpectralDistill.pairing
    text_weight: float = 0.03
    prior_weight: float = 0.1
    cluster_threshold: float = 0.1
    topk: int = 2
    global_cls: str = "image"
    dino_input: str = "cass"
    dino_half: bool = True
    dino_side: int = 0
    seed: int = 0

    # per window (`ops.spectral.SpectralDistill.fuse`): cass.dino_spectra, cass.clip_spectra
    # (heads, k_eigen) the key graphs' top eigenvalues; cass.distances (heads, heads); cass.cost
    # and cass.assignment (the DINO head paired with each CLIP head, the reference's `cols`);
    # cass.low_rank_graphs (heads, h*w, h*w) float64 the low-rank DINO graphs in CLIP's range.
    # cass.clusters (Q,) the queries' Ward clusters (per image); cass.prior (Q,) the class-token
    # prior each window's logits are blended with
    trace_names: ClassVar[tuple[str, ...]] = ("cass.dino_spectra", "cass.clip_spectra", "cass.distances",
                                              "cass.cost", "cass.assignment", "cass.low_rank_graphs",
                                              "cass.clusters", "cass.prior")

    def __post_init__(self):
        if self.global_cls not in ("image", "window"):
            raise ValueError(f"unknown global_cls {self.global_cls!r}; choose 'image' or 'window'")

    @property
    def distill(self) -> SpectralDistill:
        return SpectralDistill(**{f.name: getattr(self, f.name) for f in fields(SpectralDistill)})

    # ---- pieces (public so tests and other recipes can run them stage by stage) ------------
    def dino_keys(self, crop: torch.Tensor, normalization, grid: tuple[int, int]) -> torch.Tensor:
        """DINO's last-block patch keys for one crop, on CLIP's grid: (heads, h*w, d_h) (fp16 with
        `dino_half`, else float32); `features` maps them into CLIP's key range."""
        from ..backbones.dino import dino_features

        vfm = get_vfm(self.vfm, crop.device)
        mean, std = normalization  # what the crop carries (0-255 scale): `Segmenter.normalization`
        x = cass_dino_input(crop, mean, std, vfm.patch_size, self.dino_input, self.dino_side)
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
            dk = self.dino_keys(crop, seg.normalization, tok.grid)
            feats, _ = self.features(visual, r.attention, r.surgery, tok.tokens, tok.grid, dk)
            g = prior if prior is not None else class_token_prior(visual, tok.tokens, queries)[0]
            record("cass.prior", g)
            lg = presence_logits(feats, queries, g, clusters, self.text_weight, self.prior_weight, self.topk)
            out.append(lg.T.reshape(1, -1, *tok.grid))
        return torch.cat(out)

    def joint_slide(self, seg, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised input, (Q, C) unit queries -> (Q, H, W) stitched logits."""
        p = seg.recipe.protocol
        clusters = ward_clusters(queries, self.cluster_threshold)
        record("cass.clusters", clusters)
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
