"""FreeDA's head (Barsellotti, Amoroso, Cornia, Baraldi, Cucchiara, CVPR 2024): DINOv2 patch
features compared with class prototypes retrieved from a bank, pooled in Felzenszwalb
superpixels, ensembled with CLIP's global image-text similarity. The reference and the settings'
sources are in the method's file, `methods/freeda.py`; the bank in `data/bank.py`.

It reads every window itself (`joint_slide`): the scores are not CLIP patch logits, and each
window needs its own superpixels, DINO pass and CLIP image embedding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..core.protocol import window_boxes
from ..core.registry import PLUGINS
from ..core.trace import record
from .plugin import HeadPlugin
from .vfm import IMAGENET_MEAN, IMAGENET_STD, get_vfm

# OpenAI's 0-1 statistics: open_clip's ViT-L-14 "openai" preprocess Normalize (freeda.py:116-121)
OPENAI_01_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_01_STD = (0.26862954, 0.26130258, 0.27577711)

_PROTOS: dict[tuple, torch.Tensor] = {}  # (loaded bank, k, knn, efSearch, queries digest) -> (Q, 1, Dv)


def _norm(t: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    """`us.normalize` (F.normalize with eps 1e-6), what the reference's patch path uses."""
    return F.normalize(t, dim=dim, eps=eps)


def patch_scores(feats: torch.Tensor, protos: torch.Tensor, max_mean: float = 1.0) -> torch.Tensor:
    """(B, C, h, w) features, (Q, K, C) prototypes -> (B, Q, h, w) sigmoid of the cosine,
    max_mean * max_K + (1 - max_mean) * mean_K (`masker.py:249-300`)."""
    sim = torch.einsum("bchw,nkc->bnkhw", _norm(feats, 1), _norm(protos, -1))
    sim = max_mean * sim.max(dim=2).values + (1 - max_mean) * sim.mean(dim=2)
    return torch.sigmoid(sim)


def region_scores(feats: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor,
                  max_mean: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) features of one crop, (H, W) superpixel labels 0..M-1, (Q, K, C) prototypes ->
    ((M, Q) sigmoid region scores, (M,) valid). Each superpixel's mask, bilinearly resized to the
    feature grid (align_corners=True), weights the mean of the features (`R = Pi F`, Pi
    row-normalised); cosine with the prototypes (`freeda.py:475-533`). A region whose weights
    vanish on the grid has no direction (NaN there): invalid, its pixels keep the patch score."""
    m = int(labels.max()) + 1
    h, w = feats.shape[-2:]
    rows = []
    for s in range(0, m, 64):  # chunks of masks: (64, H, W) at a time, not (M, H, W)
        onehot = (labels[None] == torch.arange(s, min(s + 64, m), device=labels.device)[:, None, None]).float()
        rows.append(F.interpolate(onehot[:, None], (h, w), mode="bilinear", align_corners=True)[:, 0])
    pi = torch.cat(rows)  # (M, h, w)
    # the reference's broadcast product and sum, in chunks of masks: (M, C, h, w) at once is
    # gigabytes for ViT-L (600 superpixels x 1024 x 37 x 37); per row the same reduction
    sums = torch.cat([(pi[s:s + 16, None] * feats[None]).sum(dim=(2, 3)) for s in range(0, m, 16)])
    pooled = sums / (pi.sum(dim=(1, 2))[:, None] + torch.finfo(torch.float32).eps)
    pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    valid = ~pooled.isnan().any(-1)
    sim = torch.einsum("bc,nkc->bnk", pooled, protos / protos.norm(dim=-1, keepdim=True))
    sim = max_mean * sim.max(dim=-1).values + (1 - max_mean) * sim.mean(dim=-1)
    return torch.sigmoid(sim), valid


def crop_scores(rgb: torch.Tensor, dino: torch.nn.Module, protos: torch.Tensor, labels: torch.Tensor,
                clip_sim: torch.Tensor | None, dino_size: int, ensemble: float, max_mean: float = 1.0,
                ) -> dict[str, torch.Tensor]:
    """One crop: (1, 3, H, W) RGB on 0-255, DINO tower, (Q, K, Dv) prototypes, (H, W) superpixel
    labels, (Q,) CLIP global similarity (or None with ensemble 1) -> the reference's tensors:
    "patch" (Q, H, W) upsampled patch scores, "region" (M, Q), "dino" (Q, H, W) after the
    region replacement, "scores" (Q, H, W) = ensemble * dino + (1 - ensemble) * clip
    (`freeda.py:694-726`)."""
    from ..backbones.dino import dino_features

    _, _, H, W = rgb.shape
    dev = rgb.device
    x = F.interpolate(rgb, (dino_size, dino_size), mode="bilinear", align_corners=False) / 255
    x = (x - torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    feats = dino_features(dino, x, kind="tokens")  # final norm, prefix tokens dropped (forward_features)
    patch = F.interpolate(patch_scores(feats, protos, max_mean), (H, W), mode="bilinear", align_corners=True)[0]
    region, valid = region_scores(feats[0], labels, protos, max_mean)
    painted = region.T[:, labels]  # (Q, H, W)
    covered = valid[labels]
    dino_map = torch.where(covered[None], painted, patch)
    out = {"patch": patch, "region": region, "dino": dino_map}
    if ensemble != 1.0 and clip_sim is not None:
        out["scores"] = ensemble * dino_map + (1 - ensemble) * clip_sim[:, None, None]
    else:
        out["scores"] = dino_map
    return out


def clip_global(visual: torch.nn.Module, rgb: torch.Tensor, queries: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(B, 3, H, W) RGB on 0-255 -> (B, Q) cosine of CLIP's image embedding of the crop resized
    to size x size (bicubic, no antialias), /255, OpenAI-normalised (`freeda.py:116-122, 678-681`)."""
    dev = rgb.device
    x = F.interpolate(rgb, (size, size), mode="bicubic", align_corners=False) / 255
    x = (x - torch.tensor(OPENAI_01_MEAN, device=dev).view(1, 3, 1, 1)) / torch.tensor(OPENAI_01_STD, device=dev).view(1, 3, 1, 1)
    emb = visual(x).float()
    emb = emb / emb.norm(dim=-1, keepdim=True)
    return emb @ queries.to(emb.dtype).T


def superpixel_labels(rgb: torch.Tensor, scale: float, sigma: float, min_size: int, backend: str = "auto") -> torch.Tensor:
    """(1, 3, H, W) RGB on 0-255 -> (H, W) Felzenszwalb labels of the crop / 255 (float32, as
    `superpixel.py:78`)."""
    from ..ops.superpixels import felzenszwalb

    img = rgb[0].permute(1, 2, 0).detach().cpu().float().numpy() / np.float32(255)
    return torch.from_numpy(felzenszwalb(img, scale, sigma, min_size, backend)).to(rgb.device)


@PLUGINS.register("freeda")
@dataclass(frozen=True)
class FreeDAHead(HeadPlugin):
    """FreeDA's scores over the windows of an image (see the module docstring).

    bank: the prototype bank (`data.bank.load_bank`: ovss's layout or the released one); empty:
    the OVSS_FREEDA_BANK environment variable (so `ovss eval --preset ...` keeps the preset);
    vfm: DINO model (zoo name, file or `register_vfm` name); dino_size: its square input;
    k_search: prototypes retrieved per class (their mean is the class prototype); scale, sigma,
    min_size: Felzenszwalb; ensemble: weight of the DINO scores against CLIP's global term;
    clip_size: CLIP's square input; superpixels: "auto" | "skimage" | "numpy"; knn: "auto" |
    "faiss" | "torch"; ef_search: HNSW's efSearch.
    """

    bank: str = ""
    vfm: str = "dinov2-vitl14"
    dino_size: int = 518
    k_search: int = 350
    scale: float = 100.0
    sigma: float = 1.0
    min_size: int = 20
    ensemble: float = 0.8
    clip_size: int = 224
    superpixels: str = "auto"
    knn: str = "auto"
    ef_search: int = 50000

    # freeda.prototypes (Q, 1, Dv) the retrieved class prototypes; per window, in order:
    # freeda.superpixels (H, W) labels, freeda.region (M, Q) region scores, freeda.clip (Q,)
    # CLIP's global similarity, freeda.scores (Q, H, W) the window's ensembled scores
    trace_names: ClassVar[tuple[str, ...]] = ("freeda.prototypes", "freeda.superpixels", "freeda.region",
                                              "freeda.clip", "freeda.scores")

    def prototypes(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, Dk) unit text embeddings -> (Q, 1, Dv) class prototypes from the bank (cached per
        bank and vocabulary, as the reference builds them once per dataset)."""
        from ..data.bank import load_bank

        path = self.bank or os.environ.get("OVSS_FREEDA_BANK", "")
        if not path:
            raise ValueError("freeda needs a prototype bank: Segmenter('freeda', bank=PATH), --set "
                             "plugins=freeda:bank=PATH or OVSS_FREEDA_BANK=PATH (keeps the preset's other "
                             "settings); make one with `ovss build-bank`")
        q = queries.detach().float().cpu().contiguous()
        bank = load_bank(path)  # cached per path and modification time
        key = (id(bank), self.k_search, self.knn, self.ef_search, hashlib.sha1(q.numpy().tobytes()).hexdigest())
        if key not in _PROTOS:
            if bank.keys is not None and bank.keys.shape[1] != q.shape[1]:
                raise ValueError(f"the bank's keys are {bank.keys.shape[1]}-d but the text embeddings "
                                 f"{q.shape[1]}-d: build the bank with this CLIP")
            _PROTOS[key] = bank.class_prototypes(q, self.k_search, self.knn, self.ef_search)
        return _PROTOS[key]

    @torch.no_grad()
    def joint_slide(self, seg, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised input, (Q, C) unit queries -> (Q, H, W) scores, the windows'
        scores averaged where they overlap (mmseg slide inference)."""
        p = seg.recipe.protocol
        _, _, H, W = x.shape
        protos = self.prototypes(queries).to(x.device)
        record("freeda.prototypes", protos)
        vfm = get_vfm(self.vfm, x.device)
        norm_mean, norm_std = seg.normalization
        mean = torch.tensor(norm_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(norm_std, device=x.device).view(1, 3, 1, 1)
        canvas = torch.zeros(queries.shape[0], H, W, device=x.device)
        count = torch.zeros(1, H, W, device=x.device)
        for y1, y2, x1, x2 in window_boxes(H, W, p.crop, p.stride):
            # the crop as the reference sees it: the resized uint8 image as float, RGB
            rgb = (x[:, :, y1:y2, x1:x2] * std + mean).round().clamp(0, 255)
            labels = superpixel_labels(rgb, self.scale, self.sigma, self.min_size, self.superpixels)
            record("freeda.superpixels", labels)
            clip_sim = clip_global(seg.visual, rgb, queries, self.clip_size)[0] if self.ensemble != 1.0 else None
            if clip_sim is not None:
                record("freeda.clip", clip_sim)
            out = crop_scores(rgb, vfm, protos, labels, clip_sim, self.dino_size, self.ensemble)
            record("freeda.region", out["region"])
            record("freeda.scores", out["scores"])
            canvas[:, y1:y2, x1:x2] += out["scores"]
            count[:, y1:y2, x1:x2] += 1
        return canvas / count


def with_bank(recipe, bank: str | os.PathLike, method: str = "this method"):
    """The recipe with every FreeDA head's `bank` replaced by `bank` (`Segmenter(bank=...)`)."""
    plugins, found = [], False
    for p in recipe.plugins:
        if isinstance(p, FreeDAHead):
            p, found = dataclasses.replace(p, bank=os.fspath(bank)), True
        plugins.append(p)
    if not found:
        raise ValueError(f"{method} uses no prototype bank (bank= works with freeda)")
    return dataclasses.replace(recipe, plugins=tuple(plugins))
