"""The model cache the apps share (`ovss serve`, `ovss demo`): one loaded CLIP under every method,
a `Segmenter` per (method, preset) on top of it, and what each method still lacks on this machine.

A method that borrows a DINO model (proxyclip, lposs, lposs+, cass) loads it on its first image;
`ModelCache.missing` says beforehand whether those weights are here (registered in memory, a
local file, or in the Hugging Face cache), so a server answers "not ready, run `ovss download
...`" at once instead of failing, or downloading hundreds of megabytes, in the middle of a request.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ModelCache", "RequestExpired", "WeightsMissing", "methods_info"]


class RequestExpired(TimeoutError):
    """A job whose request already timed out (and was answered) stops here."""


class WeightsMissing(FileNotFoundError):
    """Weights a method needs are not on this machine; the message says how to get them."""


class _Entry:
    __slots__ = ("lock", "segmenter")

    def __init__(self, segmenter):
        self.segmenter = segmenter
        # A Segmenter keeps per-call state (the decision's assigned-pixel mask), so one entry
        # serves one call at a time; different (method, preset) entries run in parallel.
        self.lock = threading.Lock()


def dino_models(recipe) -> list[str]:
    """The DINO models (`vfm` of its head plug-ins) a recipe loads on its first image."""
    out = []
    for p in recipe.plugins:
        if dataclasses.is_dataclass(p) and "vfm" in {f.name for f in dataclasses.fields(p)}:
            out.append(str(p.vfm))
    return list(dict.fromkeys(out))


def dino_missing(name: str) -> str | None:
    """None when DINO model `name` can be loaded without network (registered in memory, a local
    file or folder, or its weights in the Hugging Face cache); else why not and how to get it."""
    from ..backbones.dino_pretrained import DINO_PRETRAINED, resolve_dino_name
    from ..backbones.hub import _how_to_get, hub_cache_dir
    from ..heads.vfm import _VFMS

    if name in _VFMS or Path(name).expanduser().exists():
        return None
    cache = hub_cache_dir(None)  # where `heads.vfm.get_vfm` looks
    key = resolve_dino_name(name.removeprefix("timm:"))
    if key is not None:
        pre = DINO_PRETRAINED[key]
        repo = pre.timm_hub_id if name.startswith("timm:") else pre.hf_hub_id
        files, label = tuple(pre.weights), (f"timm:{key}" if name.startswith("timm:") else key)
    elif name.startswith("hf-hub:"):
        repo, files, label = name[len("hf-hub:"):].strip("/"), ("model.safetensors", "pytorch_model.bin"), None
    else:
        return (f"DINO model {name!r} is neither a file here nor a known DINO name "
                f"(`ovss backbones dino` lists them)")
    from huggingface_hub import try_to_load_from_cache

    for f in files:
        try:
            found = try_to_load_from_cache(repo, f, cache_dir=str(cache))
        except (OSError, ValueError):  # an odd cache layout: missing, with the hint
            found = None
        if isinstance(found, str) and os.path.exists(found):
            return None
    return _how_to_get(repo, files, label, cache, "they are not in the local cache (this server does not "
                                                  "download weights while answering requests)")


class ModelCache:
    """One loaded CLIP shared by every method, and a `Segmenter` per (method, preset) over it.

    Thread-safe. Shared by the HTTP API and the web demo. `methods` restricts which methods may be
    asked for (default: all registered, maskclip first). At most `max_segmenters` recipes are kept
    (the least recently used is dropped; the CLIP weights stay).
    """

    def __init__(self, backbone: str = "clip-vit-b16", weights: str | os.PathLike | None = None,
                 device: str = "auto", methods: Sequence[str] | None = None,
                 tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 max_segmenters: int = 32):
        from ..core.segmenter import resolve_device
        from ..methods import get_method, list_methods

        self.backbone = os.fspath(backbone)
        self.weights = None if weights is None else os.fspath(weights)
        self.device = resolve_device(device)
        if methods:
            self.methods = list(dict.fromkeys(m.strip() for m in methods))
            for m in self.methods:
                get_method(m)  # KeyError with the valid names for a typo
        else:  # all registered methods, MaskCLIP (the common baseline) first: the default
            names = list_methods()
            self.methods = sorted(names, key=lambda n: n != "maskclip")
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self.max_segmenters = max_segmenters
        self._clip = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str | None], _Entry] = OrderedDict()

    # -- validation (raises ValueError with a message fit for a user) --
    def check(self, method: str | None, preset: str | None) -> tuple[str, str | None]:
        """Normalise and validate a (method, preset) request; None/"" method = the default (the
        first of `methods`). Raises ValueError naming what is valid."""
        from ..methods import get_method

        method = (method or "").strip() or self.methods[0]
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; this server runs: {', '.join(self.methods)}")
        preset = (preset or "").strip() or None
        if preset is not None and preset.lower() == "none":
            preset = None
        spec = get_method(method)
        if preset is not None and preset not in spec.presets:
            raise ValueError(f"method {method!r} has no preset {preset!r}; presets: "
                             f"{', '.join(sorted(spec.presets)) or 'none'}")
        return method, preset

    def missing(self, method: str, preset: str | None = None) -> str | None:
        """None when (method, preset) can run here now; else what is missing and how to get it."""
        from ..methods import get_method

        method, preset = self.check(method, preset)
        why = [w for w in map(dino_missing, dino_models(get_method(method).resolve(preset, None))) if w]
        return f"{method} is not ready on this server: " + " ".join(why) if why else None

    def clip(self):
        """The shared CLIP, loaded on first use."""
        with self._lock:
            return self._load_clip()

    def _load_clip(self):
        if self._clip is None:
            from ..backbones.factory import create_clip

            self._clip = create_clip(self.backbone, weights=self.weights, device=self.device,
                                     cache_dir=self.cache_dir)
        return self._clip

    @property
    def pretrained(self):
        """The loaded backbone's zoo entry (`PretrainedCfg`), None for a file the zoo does not know."""
        return self.clip().pretrained

    def has(self, method: str, preset: str | None = None) -> bool:
        """Whether (method, preset) is built already (its first use will not load anything)."""
        with self._lock:
            return (method, preset) in self._entries

    def entry(self, method: str, preset: str | None = None) -> _Entry:
        method, preset = self.check(method, preset)
        key = (method, preset)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            from ..core.segmenter import Segmenter

            seg = Segmenter(method, backbone=self.backbone, weights=self.weights, preset=preset,
                            device=self.device, tokenizer=self.tokenizer, clip=self._load_clip())
            self._entries[key] = e = _Entry(seg)
            while len(self._entries) > self.max_segmenters:
                self._entries.popitem(last=False)
            return e

    def segmenter(self, method: str, preset: str | None = None):
        return self.entry(method, preset).segmenter

    def encode(self, classes: Any, method: str, preset: str | None = None, background: bool | None = None):
        """Encode a class list's text queries for (method, preset) ahead of `segment` (which then
        finds them in the text bank's memory cache); returns its `ClassSpec`."""
        from ..text.bank import parse_classes

        e = self.entry(method, preset)
        spec = parse_classes(classes, background)
        with e.lock:
            e.segmenter.text_bank.encode(spec)
        return spec

    def segment(self, image: Any, classes: Any, method: str, preset: str | None = None,
                background: bool | None = None, keep_image: bool = True, deadline: float | None = None):
        """Run one (method, preset) on an image; one call at a time per cached Segmenter.

        Past `deadline` (time.monotonic()) the call raises RequestExpired, checked on entry and
        between text batches: a request that timed out while a huge class list was being encoded
        gives its worker back within one batch (the names finished stay cached for a retry).
        Weights that turn out missing on the way (a DINO model) raise `WeightsMissing`."""
        from ..backbones.hub import WeightsNotFoundError

        e = self.entry(method, preset)
        with e.lock:
            bank = e.segmenter.text_bank
            if deadline is not None:
                def check() -> None:
                    if time.monotonic() > deadline:
                        raise RequestExpired("the request's time ran out; its job was abandoned")

                check()
                bank.interrupt = check
            try:
                return e.segmenter(image, classes, background=background, keep_image=keep_image)
            except WeightsNotFoundError as err:
                raise WeightsMissing(f"{method} is not ready on this server: {err}") from err
            finally:
                bank.interrupt = None

    def loaded(self) -> list[str]:
        with self._lock:
            return [m + (f":{p}" if p else "") for m, p in self._entries]


def methods_info(names: Sequence[str], models: ModelCache | None = None) -> dict[str, Any]:
    """Per method: summary, paper, code, presets, and (given `models`) whether it can run here now
    (`ready`, and `missing`: what it lacks and how to get it), per preset too."""
    from ..methods import get_method

    out = {}
    for n in names:
        m = get_method(n)
        info: dict[str, Any] = {"summary": m.summary, "paper": m.paper, "code": m.code}
        presets = {k: {"classes": p.classes, "background": p.background, "note": p.note}
                   for k, p in m.presets.items()}
        if models is not None:
            why = models.missing(n)
            info.update(ready=why is None, missing=why)
            for k, p in presets.items():
                w = models.missing(n, k)
                p.update(ready=w is None, missing=w)
        info["presets"] = presets
        out[n] = info
    return out
