"""Test-time adaptation around one `Segmenter` call (`Recipe.tta`), with no state kept.

A recipe's `tta` is a tuple of adapters (registered in `core.registry.ADAPTERS`; MLMP's is
`heads.mlmp.MLMP`, written "mlmp:steps=10,lr=0.001" on the command line). An adapter has

    adapt(seg, visual, state, queries, spec) -> dict   update `visual`'s LayerNorm parameters in
                                                        place for the image of `state`

`adapting(seg, state, queries, spec)` wraps the readout and the decision of one call:

1. takes the Segmenter's lock (`segmenter_lock`), so adaptation and readout of one call never
   interleave with another call on the same Segmenter (the HTTP server shares one Segmenter per
   (method, preset) across requests and threads);
2. makes a private copy of the image tower whose LayerNorm weights and biases are its own and
   every other tensor is shared with the loaded model (`private_layernorms`: no weight is copied
   or written, so other Segmenters sharing the model, e.g. the server's other methods running in
   parallel, never see adapted weights);
3. runs the adapters on it, then points the Segmenter at it (`Segmenter.clip` is swapped for a view
   of the same model with this tower) for the body of the `with`: the readout, the refiners and
   the decision all see the adapted tower;
4. on exit, normal or by an exception, puts the Segmenter's own model back and drops the copy;
   the next image starts again from the loaded weights (episodic, as MLMP resets before every
   batch).

Gradients exist only inside an adapter's loss (`torch.enable_grad()` there, `autograd.grad` with
respect to the private LayerNorm parameters only: no `.grad` is ever written to shared weights);
the rest of the call stays under `torch.no_grad`. A recipe without `tta` passes straight through.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .trace import record

_GUARD = threading.Lock()


def segmenter_lock(seg: Any) -> threading.RLock:
    """The Segmenter's own re-entrant lock (made on first use)."""
    with _GUARD:
        lock = seg.__dict__.get("_tta_lock")
        if lock is None:
            lock = seg.__dict__["_tta_lock"] = threading.RLock()
    return lock


def layernorm_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The affine weight and bias of every LayerNorm in `module`, in module order."""
    out = []
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            out += [p for n, p in m.named_parameters(recurse=False) if n in ("weight", "bias")]
    return out


def private_layernorms(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` that shares every parameter and buffer with it except the LayerNorm
    affine parameters, which are fresh copies (requiring grad): adapting the copy leaves the
    original untouched, at the memory of the LayerNorms only."""
    own = {id(p) for p in layernorm_params(module)}
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers()) if id(t) not in own}
    clone = copy.deepcopy(module, memo)
    for p in layernorm_params(clone):
        p.requires_grad_(True)
    return clone


def _with_visual(model: torch.nn.Module, visual: torch.nn.Module) -> torch.nn.Module:
    """A shallow view of a CLIP model with another image tower (the model itself unchanged)."""
    view = copy.copy(model)
    object.__setattr__(view, "_modules", {**model._modules, "visual": visual})
    return view


@contextmanager
def adapting(seg: Any, state: Any, queries: torch.Tensor, spec: Any) -> Iterator[torch.nn.Module | None]:
    """Adapt for one image, point `seg` at the adapted tower for the body, restore (see above).
    Yields the adapted tower (None when the recipe has no `tta`)."""
    adapters = tuple(getattr(seg.recipe, "tta", ()) or ())
    if not adapters:
        yield None
        return
    with segmenter_lock(seg):
        original = seg.clip
        visual = private_layernorms(original.model.visual)
        for a in adapters:
            info = a.adapt(seg, visual, state, queries, spec) or {}
            for k, v in info.items():
                record(f"tta.{type(a).__name__.lower()}.{k}", torch.as_tensor(v))
        seg.clip = dataclasses.replace(original, model=_with_visual(original.model, visual))
        try:
            yield visual
        finally:
            seg.clip = original
