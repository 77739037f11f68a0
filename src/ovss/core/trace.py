"""Named intermediate tensors of one call, for comparing a method with its paper stage by stage.

Pieces call `record(name, tensor)` at the stages researchers compare (the stitched logits, SFR's
seed map, LOF's outliers, DBSCAN's labels, LPOSS's kNN graph, CASS's head assignment ...); it does
nothing unless a `tracing()` block is open in this thread or task, so the cost outside a trace is
one context-variable read (no copy, nothing computed). Inside a trace values are detached copies
on the CPU (sparse tensors stay sparse, arrays are copied), one list entry per call: per batch of
windows for a head plug-in's per-window stages (so `t["sfr.seed_labels"][0][0]` is the first
window's map), per image for the others.

Every head plug-in and refiner class declares the names it records (`trace_names`); a refiner's
output is recorded by `Segmenter.refine` as "<its registered name>.output". `names_of(recipe)`
lists what a recipe's call records: `CORE_NAMES` plus its plug-ins' and refiners' names
(`ovss methods NAME` prints them).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

_CURRENT: ContextVar[dict[str, list[Any]] | None] = ContextVar("ovss_trace", default=None)

# the stages every call records (in `core.segmenter`):
#   input            (1, 3, h, w) the normalised network input
#   stitched_logits  (Q, h, w) the head's logits at the network size, windows stitched
#   logits           (Q, H, W) what the decision reads at the original size, after the refiners
#                    ((C, H, W) with decision.reduce="before_resize"; at the network size when
#                    the image is over the full-size memory budget)
#   probs            (C, H, W) class probabilities after the area rule
CORE_NAMES = ("input", "stitched_logits", "logits", "probs")


def record(name: str, value: Any) -> None:
    """Keep a copy of `value` under `name` when a trace is open; nothing otherwise."""
    found = _CURRENT.get()
    if found is None:
        return
    if hasattr(value, "detach"):
        value = value.detach().to("cpu", copy=True)
    elif hasattr(value, "copy"):  # numpy arrays
        value = value.copy()
    found.setdefault(name, []).append(value)


def active() -> bool:
    """Whether a trace is open (a piece may skip work that only a trace needs)."""
    return _CURRENT.get() is not None


@contextmanager
def tracing() -> Iterator[dict[str, list[Any]]]:
    """Collect every `record` made inside the block into the yielded dict."""
    found: dict[str, list[Any]] = {}
    token = _CURRENT.set(found)
    try:
        yield found
    finally:
        _CURRENT.reset(token)


def refiner_output_name(refiner: Any) -> str:
    """The name `Segmenter.refine` records a refiner's output under: "<registered name>.output"
    (an unregistered refiner: its class name, lower case)."""
    from .registry import REFINERS

    name = REFINERS.name_of(refiner) or type(refiner).__name__.lower()
    return f"{name}.output"


def names_of(recipe: Any) -> tuple[str, ...]:
    """The trace names a call of `recipe` records: the core stages, then each plug-in's and each
    refiner's (in the recipe's order)."""
    names = list(CORE_NAMES)
    for piece in recipe.plugins:
        names += getattr(piece, "trace_names", ())
    for refiner in recipe.refiners:
        names += [refiner_output_name(refiner), *getattr(refiner, "trace_names", ())]
    return tuple(dict.fromkeys(names))
