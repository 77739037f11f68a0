"""`Segmenter`: a method recipe bound to loaded weights, callable on images and class lists.

The path of one image: `preprocess` (an `ImageState`: the network input and its size bookkeeping)
-> `stitched_logits` (the dense head over the protocol's windows, or a plug-in's joint readout)
-> `refine` (network-stage refiners) -> `resize.upsample` -> `refine` (full-size refiners)
-> `decide` (synonyms -> classes, softmax, thresholds, argmax) -> `Result`.
Every step is a public call, so a researcher can stop anywhere and compare with a paper's code.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

from ..backbones.factory import LoadedClip, create_clip
from ..heads.dense import patch_logits
from ..heads.plugin import check_plugins, providers
from ..text.bank import ClassSpec, TextBank, parse_classes
from ..text.tokenizer import Tokenizer
from .decision import class_probabilities, decide, reduce_queries
from .precision import autocast, dtype_name, resolve_dtype
from .protocol import preprocess, slide_logits, window_boxes
from .recipe import MethodSpec, Recipe, get_method
from .resize import upsample, upsample_rows
from .result import Result
from .state import ImageState
from .trace import active as trace_active
from .trace import names_of, record, refiner_output_name, tracing
from .tta import adapting

# Full-size (queries x H x W) logits are materialised only below this many elements (256 MB in
# float32); larger images are upsampled and decided in bands of rows, so memory stays bounded
# by the network-resolution logits plus one band.
FULL_SIZE_BUDGET = 1 << 26
# Elements of one band of upsampled logits (4 MB in float32): with its softmax and argmax
# temporaries it stays a few tens of MB, small next to the image and its label map.
BAND_ELEMENTS = 1 << 20


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = CUDA, then Apple MPS, then CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Decided(NamedTuple):
    """What `Segmenter.decide` returns: labels (H, W) int64 in the class list's indices (pixels
    under the threshold at class 0, as the references do), probs (C, h, w) float32, the mean
    probability per class, whether probs are at full size, and which pixels passed prob_thd."""

    labels: np.ndarray
    probs: np.ndarray
    mean_scores: list[float]
    full_size: bool
    assigned: np.ndarray


class Segmenter:
    """A method recipe with its weights loaded; call it on (image, classes).

    Keeps the model and the text bank (with its disk cache) across calls, so a class list is
    encoded once. It keeps no per-image state: every call makes its own `ImageState`.

    Args:
        method, preset, overrides: the recipe (`ovss methods`), its published settings, and
            dotted-path overrides ({"protocol.crop": 0, "plugins": "rcs+sfr", ...}).
        backbone, weights: the CLIP model by name (`ovss backbones`), file, folder or hub id.
        dino: the DINO model of methods that borrow one (ProxyCLIP, LPOSS, CASS; CLIP-DIY: FOUND's): a name
            (`ovss backbones dino`) or a file; it replaces only the model, not the preset's other
            head settings.
        bank: FreeDA's prototype bank (`ovss build-bank`'s folder or the released one); it
            replaces only the head's `bank`, not the preset's other settings.
        clip: an already loaded model (`Segmenter.clip` of another Segmenter) to share between
            methods without loading it twice.
        dtype: "float32" (default), "bfloat16", "float16" or "auto": the precision of the towers
            and the head (`core.precision`: softmaxes, cosine logits and everything after the head
            stay float32; the weights stay float32).
        max_pixels: refuse larger images (a file: from its header, before decoding); None: the
            default limit (`ovss.data.io.DEFAULT_MAX_PIXELS`, 100 megapixels), 0: no limit.
    """

    def __init__(self, method: str | MethodSpec = "maskclip", backbone: str = "clip-vit-b16",
                 weights: str | os.PathLike | None = None, preset: str | None = None,
                 device: str | torch.device = "auto", overrides: Mapping[str, Any] | None = None,
                 tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 text_cache_dir: str | os.PathLike | None = None, act: str | None = None,
                 clip: LoadedClip | None = None, dino: str | os.PathLike | None = None,
                 bank: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32",
                 max_pixels: int | None = None):
        self.max_pixels = max_pixels  # image pixel limit (ovss.data.io.read_image): None default, 0 none
        self.method = get_method(method) if isinstance(method, str) else method
        self.preset = preset
        self.recipe: Recipe = self.method.resolve(preset, overrides)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if clip is None:  # `clip` lets callers share one loaded model between recipes
            clip = create_clip(backbone, weights=weights, device=self.device, cache_dir=cache_dir,
                               act=act, pos_resize=self.recipe.pos_resize)
        else:
            clip.model.to(self.device)
        self.clip: LoadedClip = clip
        if clip.pretrained is not None and clip.pretrained.recipe_overrides:
            self.recipe = self.method.resolve(preset, overrides, base=dict(clip.pretrained.recipe_overrides))
        if dino is not None:
            self.recipe = with_dino(self.recipe, dino, self.method.name)
        if bank is not None:
            from ..heads.freeda import with_bank

            self.recipe = with_bank(self.recipe, bank, self.method.name)
        check_plugins(self.recipe.plugins)
        self.backbone = backbone
        self.tokenizer = self._tokenizer(tokenizer)
        self.text_bank = TextBank(self.clip.model, self.tokenizer, self.clip.weights_id,
                                  self.recipe.templates, cache_dir=text_cache_dir, dtype=self.dtype)

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
    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) on the 0-255 scale that the network input carries: the recipe's protocol's
        (each method sets its reference's constants), else the backbone's own statistics (its zoo
        entry; OpenAI's for a file the zoo does not know)."""
        p = self.recipe.protocol
        if p.mean is not None and p.std is not None:
            return tuple(p.mean), tuple(p.std)
        pre = self.clip.pretrained
        mean, std = (pre.mean, pre.std) if pre is not None else (_OPENAI_01_MEAN, _OPENAI_01_STD)
        return tuple(255 * v for v in mean), tuple(255 * v for v in std)

    @property
    def preset_classes(self) -> str | None:
        """Path of the preset's class-name file (shipped in ovss/data/classnames), or None."""
        rel = self.method.presets[self.preset].classes if self.preset is not None else None
        return None if rel is None else os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                                                     "classnames", rel)

    def preset_class_spec(self) -> ClassSpec | None:
        """The preset's classes exactly as the reference repo reads its file (a name may sit in
        two classes there, e.g. "bed" in SCLIP's COCO-Object background line; the first class
        wins the tie, as in the reference), with the preset's background flag."""
        path = self.preset_classes
        if path is None:
            return None
        return parse_classes(Path(path), background=self.method.presets[self.preset].background,
                             allow_duplicates=True)

    # ---- the lower-level calls, in the order of the data flow --------------------------------
    def preprocess(self, image: Any, size: tuple[int, int] | None = None, keep_image: bool = True) -> ImageState:
        """An image (path, PIL, uint8 or float array on the 0-255 scale, tensor) -> its `ImageState`:
        the normalised network input at the protocol's size and the output size. `size`: the
        original (H, W) when `image` was already resized (the label map comes back at `size`)."""
        from ..data.io import check_pixels, read_image

        if isinstance(image, ImageState):
            return image
        rgb = _as_float_image(image)
        if rgb is None:
            rgb = read_image(image, max_pixels=self.max_pixels)
        else:
            check_pixels(rgb.shape[1], rgb.shape[0], self.max_pixels, "float array")
        mean, std = self.normalization
        x = preprocess(rgb, self.recipe.protocol, self.device, mean, std)
        out_size = tuple(size) if size is not None else tuple(rgb.shape[:2])
        return ImageState(x=x, size=(int(out_size[0]), int(out_size[1])), mean=mean, std=std,
                          rgb=rgb if keep_image else None)

    def queries(self, classes: Any) -> tuple[ClassSpec, torch.Tensor]:
        """Class names in any form `parse_classes` takes -> (their `ClassSpec`, unit text queries (Q, C))."""
        spec = parse_classes(classes)
        return spec, self.text_bank.encode(spec).to(self.device)

    def _spec_and_queries(self, classes: Any, queries: torch.Tensor | None, background: bool | None = None):
        spec = parse_classes(classes, background)
        if queries is None:
            q = self.text_bank.encode(spec)
        else:  # precomputed embeddings: one row per query of the class list
            q = torch.as_tensor(queries)
            if q.ndim != 2 or q.shape[0] != len(spec.queries):
                raise ValueError(f"queries must be ({len(spec.queries)}, C): one row per query of the class "
                                 f"list ({spec.queries[:4]}...), got {tuple(q.shape)}")
            q = torch.nn.functional.normalize(q.float(), dim=-1)
        return spec, q.to(self.device)

    @torch.no_grad()
    def features(self, image: Any, normalize: bool = True, cls_token: bool = False) -> torch.Tensor:
        """The method's dense features of the whole network input, one pass, no windows:
        (h*w, C) patch embeddings in the text space ((1 + h*w, C) with `cls_token`, the class
        token first), L2-normalised unless `normalize=False`. With plug-ins that replace the
        readout or read every window jointly, this is refused (their features are not one pass)."""
        state = self.preprocess(image)
        r = self.recipe
        plugins = check_plugins(r.plugins)
        odd = providers(plugins, "joint_slide") + providers(plugins, "readout")
        if odd:
            raise ValueError(f"{self.method.name}'s head {odd[0]!r} has no single-pass features; use "
                             "seg.logits(image, classes) or seg.stitched_logits(state, queries)")
        from ..heads.dense import collect_mixes, pass_context

        with autocast(self.device, self.dtype):
            ctx = pass_context(self.visual, state.x, r.attention, r.surgery, r.pos_resize, plugins)
            feats = self.visual.project(ctx.run(collect_mixes(ctx, plugins)))[0].float()
        if normalize:
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats if cls_token else feats[1:]

    @torch.no_grad()
    def patch_logits(self, images: torch.Tensor, queries: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """Normalised crops (B, 3, H, W), unit queries (Q, C) -> cosine patch logits (B, Q, h, w)
        of the method's head on each crop. With `cache`, the refiners' backbone taps of this pass
        are left there. Heads that read every window of an image jointly (LPOSS, CASS) have no
        per-crop logits: use `stitched_logits(state, queries)`."""
        r = self.recipe
        joint = providers(check_plugins(r.plugins), "joint_slide")
        if joint:
            raise ValueError(f"{self.method.name}'s head {joint[0]!r} reads every window of an image at once; "
                             "its logits come from seg.stitched_logits(seg.preprocess(image), queries)")
        taps = {}
        if cache is not None:
            n = len(self.visual.blocks)
            for refiner in r.refiners:
                taps.update(refiner.taps(n) if hasattr(refiner, "taps") else {})
        with autocast(self.device, self.dtype):
            out = patch_logits(self.visual, images.to(self.device), queries.to(self.device),
                               r.attention, r.surgery, r.pos_resize, r.plugins, taps or None,
                               cache if taps else None)
        return out if self.dtype == torch.float32 else out.float()

    @torch.no_grad()
    def stitched_logits(self, state: ImageState, queries: torch.Tensor) -> torch.Tensor:
        """(Q, h, w) cosine logits at the network size: the head over the protocol's windows,
        stitched (or a joint head's readout of every window). When the image is one window, the
        refiners' backbone taps of this pass are left in `state.features`."""
        x = state.x
        queries = queries.to(self.device)
        p = self.recipe.protocol
        record("input", x)
        joint = providers(self.recipe.plugins, "joint_slide")
        if joint:  # a head that needs every window at once (LPOSS's one graph per image)
            with autocast(self.device, self.dtype):
                logits = joint[0].joint_slide(self, x, queries)
            logits = logits if self.dtype == torch.float32 else logits.float()
        else:
            mult = p.pad_multiple or self.visual.patch_size
            whole = len(window_boxes(x.shape[-2], x.shape[-1], p.crop, p.stride)) == 1 and not (
                p.pad_to_patch and (x.shape[-2] % mult or x.shape[-1] % mult))
            cache = state.features if whole else None
            logits = slide_logits(x, lambda crops: self.patch_logits(crops, queries, cache),
                                  p, self.visual.patch_size)
        record("stitched_logits", logits)
        return logits

    def refine(self, logits: torch.Tensor, state: ImageState, spec: ClassSpec | None = None,
               stage: str | None = "full") -> torch.Tensor:
        """Apply the recipe's pixel refiners to (Q, H, W) logits; the guide is the network input
        resized to (H, W), as SCLIP and NACLIP feed PAMR. Refiners that need context
        (`needs_context`) also get a `refine.RefineContext` (the class list's query map, the
        image's normalisation, the backbone's features of the whole input). `stage`: only the
        refiners of that stage ("network": before the resize to the original size; "full", the
        default: after it); None: all of them, network-stage ones first."""
        if stage is None:
            return self.refine(self.refine(logits, state, spec, "network"), state, spec, "full")
        refiners = [r for r in self.recipe.refiners if getattr(r, "stage", "full") == stage]
        if not refiners:
            return logits
        from ..refine.context import RefineContext

        x = state.x
        guide = upsample(x[0], tuple(logits.shape[-2:]))[None]
        out = logits[None]
        context = RefineContext(self.visual, x, spec.query_to_class if spec else None,
                                len(spec) if spec else None, state.features, self.recipe.pos_resize,
                                mean=state.mean, std=state.std)
        for refiner in refiners:
            if getattr(refiner, "needs_context", False):
                out = refiner(out, guide, context=context)
            else:
                out = refiner(out, guide)
            if trace_active():  # the name costs a registry look-up: only when a trace is open
                record(refiner_output_name(refiner), out[0])
        return out[0]

    @torch.no_grad()
    def logits(self, image: Any, classes: Any, refine: bool = True, queries: torch.Tensor | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
        """Per-pixel cosine logits (Q, H, W) at the original size, one row per query
        (`parse_classes(classes).queries`), after the recipe's pixel refiners (unless
        `refine=False`) and before logit scale, softmax and thresholds. `queries`: precomputed
        unit text embeddings (Q, C) instead of encoding `classes`; `size`: see `preprocess`.
        (A recipe with `decision.reduce="before_resize"`, LPOSS, reduces a class's queries at the
        network size in `decide`; these per-query logits are resized before any reduction.)"""
        spec, q = self._spec_and_queries(classes, queries)
        state = self.preprocess(image, size, keep_image=False)
        with adapting(self, state, q, spec):  # test-time adaptation (Recipe.tta), if any
            low = self.stitched_logits(state, q)
            if refine:
                low = self.refine(low, state, spec, "network")
            full = upsample(low, state.size)
            return self.refine(full, state, spec) if refine else full

    @contextmanager
    def trace(self):
        """`with seg.trace() as t: seg(image, classes)` -> t: {stage name: [tensors]} of every
        intermediate the pieces record during the block (any public call: `stitched_logits`,
        `decide`, the full call ...); the names are `seg.trace_names` (`ovss methods NAME`)."""
        with tracing() as found:
            yield found

    @property
    def trace_names(self) -> tuple[str, ...]:
        """What a traced call of this recipe records: `core.trace.CORE_NAMES`, then the names its
        head plug-ins and refiners declare (`trace_names`)."""
        return names_of(self.recipe)

    # ---- the full call ---------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image: Any, classes: Any, background: bool | None = None,
                 keep_image: bool = True, queries: torch.Tensor | None = None,
                 size: tuple[int, int] | None = None, trace: bool = False) -> Result:
        """Segment one image. `classes` in any form `text_bank.parse_classes` takes; `queries`:
        precomputed unit text embeddings, one row per query; `size`: the original size of a
        pre-resized `image`; `trace`: keep every stage's named tensors in `Result.trace`."""
        if trace:
            with tracing() as found:
                result = self(image, classes, background, keep_image, queries, size)
            result.trace = found
            return result
        spec, q = self._spec_and_queries(classes, queries, background)
        state = self.preprocess(image, size, keep_image)
        with adapting(self, state, q, spec):  # test-time adaptation (Recipe.tta), if any
            low = self.stitched_logits(state, q)
            labels, probs, mean_scores, full, assigned = self.decide(low, state, spec)
        names = spec.names
        d = self.recipe.decision
        added = False
        if d.prob_thd > 0 and not spec.background:
            # Under-threshold pixels need a class of their own: add one, as class 0.
            names = ["background", *names]
            labels = labels + 1
            labels[~assigned] = 0
            probs = np.concatenate([np.zeros_like(probs[:1]), probs])
            mean_scores = [float("nan"), *mean_scores]
            added = True
        from .viz import palette_for

        image = None
        if keep_image and state.rgb is not None:  # a float image is drawn clipped to uint8
            image = state.rgb if state.rgb.dtype == np.uint8 else np.clip(state.rgb, 0, 255).astype(np.uint8)
        return Result(
            labels=labels.astype(np.int32, copy=False),
            scores=probs,
            class_names=names,
            palette=palette_for(names),
            image=image,
            mean_scores=mean_scores,
            scores_full_size=full,
            settings=self.settings(),
            background_added=added,
        )

    def decide(self, low: torch.Tensor, state: ImageState, spec: ClassSpec) -> Decided:
        """Stitched (Q, h, w) logits -> the label map at `state.size`, through the refiners of
        both stages and the recipe's decision rule (labels in `spec`'s classes).

        Order: network-stage refiners -> (with `decision.reduce="before_resize"`: each class's
        max over its queries' logits, as LPOSS) -> resize to `state.size` -> full-stage refiners
        -> logit scale, softmax over the queries, (with "after_resize", the default: each class's
        max over its queries' probabilities) -> area rule, threshold, argmax. The two orders
        differ only for classes with several queries when the original size is not the
        network size."""
        d = self.recipe.decision
        # Without a background class, the threshold must not overwrite class 0: decide with
        # prob_thd=0 and remember which pixels passed it.
        thd_bg = spec.background or d.prob_thd <= 0
        dd = d if thd_bg else dataclasses.replace(d, prob_thd=0.0)
        h, w = size = state.size
        low = self.refine(low, state, spec, "network")
        if d.reduce == "before_resize":
            low = reduce_queries(low, spec.query_to_class, len(spec))
            # from here on one query per class (full-stage refiners see the class map they get)
            spec = dataclasses.replace(spec, synonyms=tuple(s[:1] for s in spec.synonyms))
        q2c, nc = spec.query_to_class, len(spec)
        if low.shape[0] * h * w <= FULL_SIZE_BUDGET:
            logits = self.refine(upsample(low, size), state, spec)
            record("logits", logits)
            probs = class_probabilities(logits, q2c, nc, d.logit_scale)
            labels, probs = decide(probs, dd)
            record("probs", probs)
            best = probs.amax(0)
            assigned = (best >= d.prob_thd).cpu().numpy()
            probs_np = probs.float().cpu().numpy()
            lab = labels.cpu().numpy()
            means = [float(probs_np[c][lab == c].mean()) if (lab == c).any() else float("nan")
                     for c in range(nc)]
            return Decided(lab, probs_np, means, True, assigned)
        # Over the budget, pixel refiners run at the network resolution instead (documented).
        return Decided(*self._decide_banded(self.refine(low, state, spec, "full"), size, spec, dd))

    def _decide_banded(self, low, size, spec, dd):
        d = self.recipe.decision
        q2c, nc = spec.query_to_class, len(spec)
        rows = max(1, min(FULL_SIZE_BUDGET // 4, BAND_ELEMENTS) // (low.shape[0] * size[1]))
        keep = None
        if dd.area_thd is not None:  # the area rule needs global counts: a first pass
            counts = torch.zeros(nc, device=low.device)
            for _, _, band in upsample_rows(low, size, rows):
                p = class_probabilities(band, q2c, nc, d.logit_scale)
                counts += torch.bincount(p.argmax(0).flatten(), minlength=nc)
            area = counts[1:]
            keep = (area > dd.area_thd * area.sum()).float()
        labels = np.zeros(size, dtype=np.int32)  # the result's dtype: no full-size int64 map, no copy later
        # without a threshold every pixel passes: a read-only view instead of a full-size mask
        assigned = np.zeros(size, dtype=bool) if d.prob_thd > 0 else np.broadcast_to(np.True_, size)
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
            if d.prob_thd > 0:
                assigned[r0:r1] = (best >= d.prob_thd).cpu().numpy()
            sel = p.gather(0, lab[None])[0]
            sums += torch.zeros(nc, dtype=torch.float64).index_add_(0, lab.flatten().cpu(), sel.flatten().double().cpu()).numpy()
            cnts += np.bincount(lab.flatten().cpu().numpy(), minlength=nc)
        record("logits", low)  # over the budget, the decision's logits stay at the network size
        probs_low = class_probabilities(low, q2c, nc, d.logit_scale)
        if keep is not None:
            probs_low[1:] *= keep.view(-1, 1, 1)
        record("probs", probs_low)
        means = [float(s / c) if c else float("nan") for s, c in zip(sums, cnts)]
        return labels, probs_low.float().cpu().numpy(), means, False, assigned

    def settings(self) -> dict[str, Any]:
        from .version import __version__

        return {
            "method": self.method.name,
            "preset": self.preset,
            "backbone": self.backbone,
            "weights_id": self.clip.weights_id,
            **({} if self.dtype == torch.float32 else {"dtype": dtype_name(self.dtype)}),
            "recipe": self.recipe.to_dict(),
            "ovss_version": __version__,
        }


_OPENAI_01_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_01_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_float_image(image: Any) -> np.ndarray | None:
    """A float HxWx3 array or (3, H, W)/(H, W, 3) tensor on the 0-255 scale, taken as given
    (never quantised to uint8); None for every other input (read by `read_image`)."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"a float image must be HxWx3 (RGB, 0-255 scale), got shape {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError("the float image has NaN or infinite values")
        if image.size and float(image.max()) <= 1.0:
            import warnings

            warnings.warn("every value of the float image is in [0, 1], but float images are taken on "
                          "the 0-255 scale (as given); multiply by 255 (or pass uint8)", stacklevel=4)
        return image.astype(np.float32, copy=False)
    return None


def with_dino(recipe: Recipe, dino: str | os.PathLike, method: str = "this method") -> Recipe:
    """The recipe with every head plug-in's DINO model (`vfm`) replaced by `dino` (a zoo name or
    a file); nothing else of the preset changes."""
    plugins, found = [], False
    for p in recipe.plugins:
        if dataclasses.is_dataclass(p) and "vfm" in {f.name for f in dataclasses.fields(p)}:
            p, found = dataclasses.replace(p, vfm=os.fspath(dino)), True
        plugins.append(p)
    if not found:
        raise ValueError(f"{method} uses no DINO model (dino= works with proxyclip, lposs, lposs+, cass and clipdiy: FOUND's tower)")
    return dataclasses.replace(recipe, plugins=tuple(plugins))
