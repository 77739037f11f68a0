"""CLIP-DIY's head (Wysoczanska et al., WACV 2024): no dense CLIP features at all; CLIP's image
embedding of every crop of a multi-scale grid, crop-text cosines regrouped into per-scale maps,
averaged over scales, then fused with a saliency map (FOUND by default). The reference and the
settings' sources are in the method's file, `methods/clipdiy.py`.

The pieces are public functions (`crop_boxes`, `group_crops`, `average_scales`,
`fuse_saliency`, `crop_inputs`) so each can be compared with the reference in isolation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..core.registry import PLUGINS
from ..core.trace import record
from .plugin import HeadPlugin
from .vfm import IMAGENET_MEAN, IMAGENET_STD, get_vfm

# CLIPImageProcessor's statistics (the HF repo's preprocessor_config.json: OpenAI's), 0-1 scale
OPENAI_MEAN01 = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD01 = (0.26862954, 0.26130258, 0.27577711)


def crop_boxes(size: int, scale: int, stride: int) -> list[tuple[int, int, int, int]]:
    """`Tensor.unfold(scale, scale // stride)` on both axes of a size x size image, in raster
    order (clip_conv.py:146-153): (y1, y2, x1, x2) of each crop."""
    step = int(scale // stride)
    starts = range(0, size - scale + 1, step)
    return [(y, y + scale, x, x + scale) for y in starts for x in starts]


def group_crops(sims: torch.Tensor, size: tuple[int, int], interpolate: bool = True,
                align_corners: bool = False) -> torch.Tensor:
    """(n, Q) crop-text cosines of an n = g x g raster grid -> (Q, H, W): the grid as an image,
    bilinear (or nearest) to the image size (clip_conv.py:155-172 `_group_patches`)."""
    n, q = sims.shape
    g = int(n ** 0.5)
    grid = sims.reshape(1, g, g, q).permute(0, 3, 1, 2)
    if interpolate:
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=align_corners)[0]
    return F.interpolate(grid, size=size, mode="nearest")[0]


def average_scales(maps: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """mean(stack(maps) * weights) over the scales: the weighted sum divided by the NUMBER of
    maps, not the weights' sum (clip_conv.py:107; equal with the presets' weights 1, 1, 1)."""
    w = torch.tensor(list(weights), dtype=maps[0].dtype, device=maps[0].device)
    if len(w) != len(maps):
        raise ValueError(f"{len(maps)} scale maps but {len(w)} weights")
    return torch.mean(torch.stack(list(maps), 0) * w.view((-1,) + maps[0].dim() * (1,)), dim=0)


def fuse_saliency(logits: torch.Tensor, saliency: torch.Tensor, n_background: int = 1) -> torch.Tensor:
    """(Q, H, W) scores, (H, W) foreground probability -> the first `n_background` queries times
    (1 - s), every other query times s (eval_clipconv.py:49-60; the softmax after it is the
    decision's)."""
    s = saliency.to(logits.dtype)[None]
    mask = torch.cat([(1 - s).expand(n_background, -1, -1), s.expand(logits.shape[0] - n_background, -1, -1)])
    return logits * mask


def crop_inputs(crops: torch.Tensor, side: int = 224, resample: str = "pil",
                mean: Sequence[float] = OPENAI_MEAN01, std: Sequence[float] = OPENAI_STD01) -> torch.Tensor:
    """uint8-valued crops (n, 3, s, s) -> CLIP's input (n, 3, side, side) as `CLIPImageProcessor`
    makes it from the PIL crop (clip_conv.py:151-153, 134): bicubic resize of the shortest side to
    `side` (PIL, uint8 result), centre crop (a no-op on square crops), x/255 in float64 then
    float32, (x - mean) / std in float32. resample "torch": the same bicubic (a = -0.5, antialias)
    on the device in float, rounded to uint8 (PIL's fixed-point weights may differ by one level)."""
    if resample == "pil":
        from PIL import Image

        arr = crops.to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
        out = np.stack([np.asarray(Image.fromarray(a).resize((side, side), Image.BICUBIC)) for a in arr])
        u8 = torch.from_numpy(out).permute(0, 3, 1, 2).to(crops.device)
    elif resample == "torch":
        u8 = crops.float()
        if u8.shape[-1] != side:
            u8 = F.interpolate(u8, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        u8 = u8.round().clamp(0, 255)
    else:
        raise ValueError(f"unknown resample {resample!r}; expected 'pil' or 'torch'")
    x = (u8.double() / 255).float()
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _cv2_taps(n_in: int, n_out: int, clamp: bool, device) -> tuple[torch.Tensor, ...]:
    # cv2::resize INTER_LINEAR's source indices and 11-bit weights: the coordinate in float32,
    # weights rounded to 1/2048; columns clamp index and weight at the borders, rows clamp only
    # the index (their weights stay those of the unclamped coordinate).
    f = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).float()
    s = f.floor()
    f = f - s
    s = s.long()
    if clamp:
        f = torch.where(s < 0, torch.zeros_like(f), f)
        s = s.clamp(min=0)
        f = torch.where(s >= n_in - 1, torch.zeros_like(f), f)
        s = s.clamp(max=n_in - 1)
    w1 = torch.round(f * 2048).long()
    w0 = torch.round((1 - f) * 2048).long()
    return (s.clamp(0, n_in - 1).to(device), (s + 1).clamp(0, n_in - 1).to(device), w0.to(device), w1.to(device))


def resize_uint8(image: torch.Tensor, size: tuple[int, int], mode: str = "cv2") -> torch.Tensor:
    """(B, 3, H, W) uint8-valued -> `size`, what albumentations' `Resize(interpolation=1)` does
    (load_dataset.py:26): cv2 INTER_LINEAR on uint8 in fixed point (11-bit weights, a horizontal
    pass in int32, the vertical pass as cv2's SIMD code rounds it:
    ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2). Equal to opencv-python 5.1
    (x86) on every test image (tests/golden/clipdiy_cv2_resize.safetensors). mode "torch": a
    float bilinear resize rounded to uint8 (one grey level off on ~12% of values)."""
    H, W = image.shape[-2:]
    if (H, W) == tuple(size):
        return image
    if mode == "torch":
        return F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    if mode != "cv2":
        raise ValueError(f"unknown resize {mode!r}; expected 'cv2' or 'torch'")
    x0, x1, a0, a1 = _cv2_taps(W, size[1], True, image.device)
    y0, y1, b0, b1 = _cv2_taps(H, size[0], False, image.device)
    src = image.round().long()
    hor = src[..., x0] * a0 + src[..., x1] * a1  # (B, 3, H, w)
    s0, s1 = hor[..., y0, :], hor[..., y1, :]
    b0, b1 = b0.view(-1, 1), b1.view(-1, 1)
    out = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2
    return out.clamp(0, 255).to(image.dtype if image.is_floating_point() else torch.float32)


def resize_saliency(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) probability -> `size`, bilinear, half-pixel centres, no antialias: albumentations'
    `Resize(interpolation=1)` (cv2 INTER_LINEAR) on the float32 map (load_dataset.py:26, pascal_voc.py:172-174)."""
    s = saliency.float()
    if tuple(s.shape) == tuple(size):
        return s
    return F.interpolate(s[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


_FOUND: dict[tuple[str, str], torch.nn.Module] = {}


def _found(vfm: str, decoder: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """FOUND's DINO (the shared tower cache, `get_vfm`) and its decoder, loaded once per name."""
    from ..backbones.found import make_decoder, read_decoder

    key = (vfm, decoder)
    if key not in _FOUND:
        _FOUND[key] = make_decoder(read_decoder(decoder)[0])
    return get_vfm(vfm, device), _FOUND[key].to(device)


def register_found_decoder(name: str, decoder: torch.nn.Module, vfm: str = "dino-vits8",
                           device: torch.device | str = "cpu") -> None:
    """Use `decoder` (a 1x1 conv) whenever a recipe names decoder `name` on tower `vfm` (tests,
    models in memory); it moves to the image's device when used."""
    _FOUND[(vfm, name)] = decoder.eval().to(device)


@PLUGINS.register("clipdiy")
@dataclass(frozen=True)
class CLIPDIYHead(HeadPlugin):
    """CLIP-DIY's crop classification and saliency fusion over the whole image (module docstring).

    size: the square the image is resized to (aspect not kept); scales: crop sides; strides:
    crop step = scale // stride; weights: one per (scale, stride) map; side, resample: CLIP's
    crop input (`crop_inputs`); interpolate, align_corners: the crop grid's resize to `size`;
    batch: crops per CLIP forward (a memory bound; numbers do not depend on it); resize: the
    image's resize to `size` ("cv2": cv2's fixed-point INTER_LINEAR, exact; "torch": float
    bilinear rounded, `resize_uint8`).
    saliency: "found" (FOUND: `vfm` + `decoder`), "none" (no fusion), a path to an (H, W) .npy
    probability map, an array / tensor, or a callable rgb uint8 (H, W, 3) array -> (H, W) map in
    [0, 1]; the map is resized to `size` like the image. n_background: leading queries scaled
    by (1 - s) (the reference: column 0, the class "background").
    """

    size: int = 256
    scales: tuple[int, ...] = (256, 128, 64)
    strides: tuple[int, ...] = (2,)
    weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    side: int = 224
    resample: str = "pil"
    interpolate: bool = True
    align_corners: bool = False
    batch: int = 64
    saliency: Any = "found"
    vfm: str = "dino-vits8"
    decoder: str = "found-duts-tr"
    n_background: int = 1
    resize: str = "cv2"

    # clipdiy.scales (S, Q, size, size): each (scale, stride) map; clipdiy.scores (Q, size, size):
    # their average; clipdiy.saliency (size, size): the foreground probability fused (absent
    # without fusion); clipdiy.fused (Q, size, size): the scores after fusion
    trace_names: ClassVar[tuple[str, ...]] = ("clipdiy.scales", "clipdiy.scores", "clipdiy.saliency",
                                              "clipdiy.fused")

    def __post_init__(self) -> None:
        for f in ("scales", "strides", "weights"):
            v = getattr(self, f)
            if not isinstance(v, tuple):
                object.__setattr__(self, f, tuple(v) if isinstance(v, (list, tuple)) else (v,))

    def crop_scores(self, visual: torch.nn.Module, image: torch.Tensor, queries: torch.Tensor) -> list[torch.Tensor]:
        """(1, 3, size, size) uint8-valued image -> one (Q, size, size) map per (scale, stride)."""
        size = tuple(image.shape[-2:])
        maps = []
        for scale in self.scales:
            for stride in self.strides:
                boxes = crop_boxes(size[0], scale, stride)
                sims = []
                for s in range(0, len(boxes), max(self.batch, 1)):
                    crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes[s:s + self.batch]])
                    emb = visual(crop_inputs(crops, self.side, self.resample))
                    emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
                    sims.append(emb @ queries.to(emb.dtype).T)  # cosine, no logit scale (clip_conv.py:141)
                maps.append(group_crops(torch.cat(sims), size, self.interpolate, self.align_corners))
        return maps

    def saliency_map(self, rgb: torch.Tensor) -> torch.Tensor | None:
        """(1, 3, H, W) uint8-valued image at its own size -> (H, W) foreground probability, or None."""
        s = self.saliency
        if s is None or (isinstance(s, str) and s.lower() in ("none", "")):
            return None
        if isinstance(s, str) and s == "found":
            from ..backbones.found import found_saliency

            dino, decoder = _found(self.vfm, self.decoder, rgb.device)
            m = torch.tensor(IMAGENET_MEAN, device=rgb.device).view(1, 3, 1, 1)
            sd = torch.tensor(IMAGENET_STD, device=rgb.device).view(1, 3, 1, 1)
            x = (rgb / 255.0 - m) / sd  # ToTensor + Normalize (extract_saliency.py:259-260)
            return found_saliency(dino, decoder, x)[0, 0]
        if isinstance(s, (str, os.PathLike)):
            s = np.load(os.fspath(s))
        elif callable(s):
            s = s(rgb[0].permute(1, 2, 0).to("cpu", torch.uint8).numpy())
        t = torch.as_tensor(np.asarray(s) if not isinstance(s, torch.Tensor) else s).float().squeeze()
        if t.ndim != 2:
            raise ValueError(f"a saliency map must be (H, W), got shape {tuple(t.shape)}")
        return t.to(rgb.device)

    def joint_slide(self, seg: Any, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) normalised input at the image's own size, (Q, C) unit queries -> (Q, H, W)
        fused scores: computed at size x size, then nearest to (H, W) (the reference resizes its
        256 x 256 label map with cv2 INTER_NEAREST, semseg/evaluate.py:55-56)."""
        H, W = x.shape[-2:]
        mean, std = seg.normalization
        m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
        sd = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
        rgb = (x * sd + m).round().clamp(0, 255)  # the uint8 image the network input came from
        small = resize_uint8(rgb, (self.size, self.size), self.resize)  # A.Resize (load_dataset.py:26)
        maps = self.crop_scores(seg.visual, small, queries.to(x.device))
        record("clipdiy.scales", torch.stack(maps))
        scores = average_scales(maps, self.weights)
        record("clipdiy.scores", scores)
        sal = self.saliency_map(rgb)
        if sal is not None:
            sal = resize_saliency(sal, (self.size, self.size))
            record("clipdiy.saliency", sal)
            scores = fuse_saliency(scores, sal, self.n_background)
        record("clipdiy.fused", scores)
        if (H, W) != tuple(scores.shape[-2:]):
            scores = F.interpolate(scores[None], size=(H, W), mode="nearest")[0]
        return scores
