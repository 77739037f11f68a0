"""`Segmenter`: a method recipe bound to loaded weights, callable on images and class lists."""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .backbones.factory import LoadedClip, create_clip
from .backbones.tokenizer import Tokenizer
from .dense import patch_logits
from .inference import (
    class_probabilities,
    decide,
    preprocess,
    slide_logits,
    upsample,
    upsample_rows,
    window_boxes,
)
from .methods import MethodSpec, Recipe, get_method
from .result import Result
from .text_bank import ClassSpec, TextBank, parse_classes

# Full-size (queries x H x W) logits are materialised only below this many elements (256 MB in
# float32); larger images are upsampled and decided in bands of rows, so memory stays bounded
# by the network-resolution logits plus one band.
FULL_SIZE_BUDGET = 1 << 26


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = CUDA, then Apple MPS, then CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class _TensorKeyed:
    """{tensor: value} holding its keys weakly (an entry goes when its tensor is freed); keys
    compare by identity (weakref.WeakKeyDictionary would compare tensors with ==)."""

    def __init__(self):
        self._items: dict[int, tuple[weakref.ref, Any]] = {}

    def __setitem__(self, key: torch.Tensor, value: Any) -> None:
        items, k = self._items, id(key)
        items[k] = (weakref.ref(key, lambda _, k=k: items.pop(k, None)), value)

    def __getitem__(self, key: torch.Tensor) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError("no features for this tensor")
        return value

    def get(self, key: torch.Tensor, default: Any = None) -> Any:
        ref, value = self._items.get(id(key), (None, default))
        return value if ref is not None and ref() is key else default

    def __len__(self) -> int:
        return len(self._items)


class Segmenter:
    """A method recipe with its weights loaded; call it on (image, classes).

    Keeps the model and the text bank (with its disk cache) across calls, so a class list is
    encoded once.
    """

    def __init__(self, method: str | MethodSpec = "maskclip", backbone: str = "clip-vit-b16",
                 weights: str | os.PathLike | None = None, preset: str | None = None,
                 device: str | torch.device = "auto", overrides: Mapping[str, Any] | None = None,
                 tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 text_cache_dir: str | os.PathLike | None = None, act: str | None = None,
                 clip: LoadedClip | None = None):
        self.method = get_method(method) if isinstance(method, str) else method
        self.preset = preset
        self.recipe: Recipe = self.method.resolve(preset, overrides)
        self.device = resolve_device(device)
        if clip is None:  # `clip` lets callers share one loaded model between recipes
            clip = create_clip(backbone, weights=weights, device=self.device, cache_dir=cache_dir,
                               act=act, pos_resize=self.recipe.pos_resize)
        else:
            clip.model.to(self.device)
        self.clip: LoadedClip = clip
        # network input -> features its readout left for refiners (see stitched_logits)
        self._features = _TensorKeyed()
        if clip.pretrained is not None and clip.pretrained.recipe_overrides:
            self.recipe = self.method.resolve(preset, overrides, base=dict(clip.pretrained.recipe_overrides))
        self.backbone = backbone
        self.tokenizer = self._tokenizer(tokenizer)
        self.text_bank = TextBank(self.clip.model, self.tokenizer, self.clip.weights_id,
                                  self.recipe.templates, cache_dir=text_cache_dir)

    def _tokenizer(self, path: str | os.PathLike | None) -> Tokenizer:
        if path is not None:
            p = os.fspath(path)
            return Tokenizer.from_dir(p) if os.path.isdir(p) else Tokenizer.from_file(p)
        if self.clip.tokenizer_dir is None:
            raise FileNotFoundError(
                f"no tokenizer vocabulary found next to the weights of {self.backbone!r}; pass "
                "tokenizer=/path/to/bpe_simple_vocab_16e6.txt.gz (or a folder with vocab.json and "
                "merges.txt, as Hugging Face CLIP repos carry)"
            )
        return Tokenizer.from_dir(self.clip.tokenizer_dir)

    @property
    def visual(self):
        return self.clip.model.visual

    @property
    def preset_classes(self) -> str | None:
        """Path of the preset's class-name file (shipped in ovss/data/classnames), or None."""
        rel = self.method.presets[self.preset].classes if self.preset is not None else None
        return None if rel is None else os.path.join(os.path.dirname(__file__), "data", "classnames", rel)

    def preset_class_spec(self) -> ClassSpec | None:
        """The preset's classes exactly as the reference repo reads its file (a name may sit in
        two classes there, e.g. "bed" in SCLIP's COCO-Object background line; the first class
        wins the tie, as in the reference), with the preset's background flag."""
        path = self.preset_classes
        if path is None:
            return None
        return parse_classes(Path(path), background=self.method.presets[self.preset].background,
                             allow_duplicates=True)

    # ---- the lower-level calls -------------------------------------------------------------
    @torch.no_grad()
    def patch_logits(self, images: torch.Tensor, queries: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """Normalised images (B, 3, H, W), normalised queries (Q, C) -> cosine (B, Q, h, w).
        With `cache`, the refiners' backbone taps of this pass are left there."""
        r = self.recipe
        taps = {}
        if cache is not None:
            for refiner in r.refiners:
                taps.update(refiner.taps() if hasattr(refiner, "taps") else {})
        return patch_logits(self.visual, images.to(self.device), queries.to(self.device),
                            r.attention, r.surgery, r.pos_resize, r.plugins, taps or None,
                            cache if taps else None)

    @torch.no_grad()
    def stitched_logits(self, image: Any, spec: ClassSpec) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """An image -> (Q, h, w) cosine logits at the protocol's resized size, the RGB input and
        the normalised network input (1, 3, h, w)."""
        from .io import read_image

        rgb = read_image(image)
        x = preprocess(rgb, self.recipe.protocol, self.device)
        queries = self.text_bank.encode(spec).to(self.device)
        p = self.recipe.protocol
        mult = p.pad_multiple or self.visual.patch_size
        whole = len(window_boxes(x.shape[-2], x.shape[-1], p.crop, p.stride)) == 1 and not (
            p.pad_to_patch and (x.shape[-2] % mult or x.shape[-1] % mult))
        cache: dict = {}
        joint = [pl for pl in self.recipe.plugins if hasattr(pl, "joint_slide")]
        if joint:  # a head that needs every window at once (LPOSS's one graph per image)
            with torch.no_grad():
                logits = joint[0].joint_slide(self, x, queries)
            self._features[x] = cache
            return logits, rgb, x
        logits = slide_logits(x, lambda crops: self.patch_logits(crops, queries, cache if whole else None),
                              p, self.visual.patch_size)
        # the readout's features of the whole image, for refiners; keyed by this call's own input
        # tensor (weakly: dropped with it), so calls share nothing
        self._features[x] = cache
        return logits, rgb, x

    def refine(self, logits: torch.Tensor, x: torch.Tensor, spec: ClassSpec | None = None,
               stage: str | None = "full") -> torch.Tensor:
        """Apply the recipe's pixel refiners to (Q, H, W) logits; the guide is the network
        input resized to (H, W), as SCLIP and NACLIP feed PAMR. Refiners that need context
        (`needs_context`) also get a `refine.RefineContext` (the class list's query map, the
        backbone's features of the whole input `x`). `stage`: only the refiners of that stage
        ("network": before the resize to the original size; "full", the default: after it);
        None: all of them, network-stage ones first."""
        if stage is None:
            return self.refine(self.refine(logits, x, spec, "network"), x, spec, "full")
        refiners = [r for r in self.recipe.refiners if getattr(r, "stage", "full") == stage]
        if not refiners:
            return logits
        guide = upsample(x[0], tuple(logits.shape[-2:]))[None]
        out = logits[None]
        context = None
        for refiner in refiners:
            if getattr(refiner, "needs_context", False):
                if context is None:
                    from .refine import RefineContext

                    cache = self._features.get(x)
                    if cache is None:  # x did not come from stitched_logits: the refiner computes
                        cache = {}
                    context = RefineContext(self.visual, x, spec.query_to_class if spec else None,
                                            len(spec) if spec else None, cache, self.recipe.pos_resize)
                out = refiner(out, guide, context=context)
            else:
                out = refiner(out, guide)
        return out[0]

    @torch.no_grad()
    def logits(self, image: Any, classes: Any, refine: bool = True) -> torch.Tensor:
        """Per-pixel cosine logits (Q, H, W) at the original size, one row per query
        (`parse_classes(classes).queries`), after the recipe's pixel refiners (unless
        `refine=False`) and before logit scale, softmax and thresholds."""
        spec = parse_classes(classes)
        low, rgb, x = self.stitched_logits(image, spec)
        if refine:
            low = self.refine(low, x, spec, "network")
        full = upsample(low, rgb.shape[:2])
        return self.refine(full, x, spec) if refine else full

    # ---- the full call ---------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: Any, classes: Any, background: bool | None = None,
                 keep_image: bool = True) -> Result:
        """Segment one image. `classes` in any form `text_bank.parse_classes` takes."""
        spec = parse_classes(classes, background)
        low, rgb, x = self.stitched_logits(image, spec)
        labels, probs, mean_scores, full, assigned = self._decide(low, x, rgb.shape[:2], spec)
        names = spec.names
        d = self.recipe.decision
        if d.prob_thd > 0 and not spec.background:
            # Under-threshold pixels need a class of their own: add one, as class 0.
            names = ["background", *names]
            labels = labels + 1
            labels[~assigned] = 0
            probs = np.concatenate([np.zeros_like(probs[:1]), probs])
            mean_scores = [float("nan"), *mean_scores]
        from .viz import palette_for

        return Result(
            labels=labels.astype(np.int32),
            scores=probs,
            class_names=names,
            palette=palette_for(names),
            image=rgb if keep_image else None,
            mean_scores=mean_scores,
            scores_full_size=full,
            settings=self.settings(),
        )

    def _decide(self, low: torch.Tensor, x: torch.Tensor, size: tuple[int, int], spec: ClassSpec):
        d = self.recipe.decision
        q2c, nc = spec.query_to_class, len(spec)
        # Without a background class, the threshold must not overwrite class 0: decide with
        # prob_thd=0 and remember which pixels passed it.
        thd_bg = spec.background or d.prob_thd <= 0
        dd = d if thd_bg else type(d)(d.logit_scale, 0.0, d.area_thd)
        h, w = size
        low = self.refine(low, x, spec, "network")
        if low.shape[0] * h * w <= FULL_SIZE_BUDGET:
            logits = self.refine(upsample(low, size), x, spec)
            probs = class_probabilities(logits, q2c, nc, d.logit_scale)
            labels, probs = decide(probs, dd)
            best = probs.amax(0)
            assigned = (best >= d.prob_thd).cpu().numpy()
            probs_np = probs.float().cpu().numpy()
            lab = labels.cpu().numpy()
            means = [float(probs_np[c][lab == c].mean()) if (lab == c).any() else float("nan")
                     for c in range(nc)]
            return lab, probs_np, means, True, assigned
        # Over the budget, pixel refiners run at the network resolution instead (documented).
        return self._decide_banded(self.refine(low, x, spec, "full"), size, spec, dd)

    def _decide_banded(self, low, size, spec, dd):
        d = self.recipe.decision
        q2c, nc = spec.query_to_class, len(spec)
        rows = max(1, FULL_SIZE_BUDGET // (low.shape[0] * size[1] * 4))
        keep = None
        if dd.area_thd is not None:  # the area rule needs global counts: a first pass
            counts = torch.zeros(nc, device=low.device)
            for _, _, band in upsample_rows(low, size, rows):
                p = class_probabilities(band, q2c, nc, d.logit_scale)
                counts += torch.bincount(p.argmax(0).flatten(), minlength=nc)
            area = counts[1:]
            keep = (area > dd.area_thd * area.sum()).float()
        labels = np.zeros(size, dtype=np.int64)
        assigned = np.zeros(size, dtype=bool)
        sums = np.zeros(nc)
        cnts = np.zeros(nc)
        for r0, r1, band in upsample_rows(low, size, rows):
            p = class_probabilities(band, q2c, nc, d.logit_scale)
            if keep is not None:
                p[1:] *= keep.view(-1, 1, 1)
            lab = p.argmax(0)
            best = p.amax(0)
            lab[best < dd.prob_thd] = 0
            labels[r0:r1] = lab.cpu().numpy()
            assigned[r0:r1] = (best >= d.prob_thd).cpu().numpy()
            sel = p.gather(0, lab[None])[0]
            sums += torch.zeros(nc, dtype=torch.float64).index_add_(0, lab.flatten().cpu(), sel.flatten().double().cpu()).numpy()
            cnts += np.bincount(lab.flatten().cpu().numpy(), minlength=nc)
        probs_low = class_probabilities(low, q2c, nc, d.logit_scale)
        if keep is not None:
            probs_low[1:] *= keep.view(-1, 1, 1)
        means = [float(s / c) if c else float("nan") for s, c in zip(sums, cnts)]
        return labels, probs_low.float().cpu().numpy(), means, False, assigned

    def settings(self) -> dict[str, Any]:
        from . import __version__

        return {
            "method": self.method.name,
            "preset": self.preset,
            "backbone": self.backbone,
            "weights_id": self.clip.weights_id,
            "recipe": self.recipe.to_dict(),
            "ovss_version": __version__,
        }
