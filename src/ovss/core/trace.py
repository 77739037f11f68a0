"""Named intermediate tensors of one call, for comparing a method with its paper stage by stage.

Pieces call `record(name, tensor)` at the stages researchers compare (the stitched logits, SFR's
seed map, LOF's outliers, DBSCAN's labels, LPOSS's kNN graph, CASS's head assignment ...); it does
nothing unless a `tracing()` block is open in this thread or task, so the cost outside a trace is
one context-variable read. Values are detached copies on the CPU, one list entry per call (a
window, an image).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

_CURRENT: ContextVar[dict[str, list[Any]] | None] = ContextVar("ovss_trace", default=None)

# the stages every method records (in `core.segmenter`); plug-ins and refiners add their own
# (their `trace_names`)
CORE_NAMES = ("input", "stitched_logits", "logits", "probs")


def record(name: str, value: Any) -> None:
    """Keep `value` under `name` when a trace is open."""
    found = _CURRENT.get()
    if found is None:
        return
    if hasattr(value, "detach"):
        value = value.detach().to("cpu", copy=True)
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
