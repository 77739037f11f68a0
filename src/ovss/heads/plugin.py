"""The head plug-in contract: what a plug-in may ask of the dense head's one pass.

A plug-in is a frozen dataclass (its settings) deriving from `HeadPlugin` and overriding the hooks
it provides; `hooks` lists them (set per class, so dispatch never guesses with `hasattr`):

    taps(n_blocks) -> {name: Tap}          what it needs from the backbone's pass
    mixes(ctx, mixes) -> [Mix, ...]        matrices added to the last block's attention rule,
                                           given those of the plug-ins before it
    readout(ctx, mixes) -> (B, h*w, C)     its own last-block readout (normalised features)
    adjust_logits(ctx, logits) -> logits   a change of the (B, Q, h, w) patch logits
    joint_slide(seg, x, queries) -> (Q, H, W)
                                           a readout of every window at once (one graph per
                                           image: LPOSS, CASS); replaces the per-window pass

`check_plugins` is the one place that decides whether a list of plug-ins can run together: two
readouts, two joint readouts, or a joint readout next to a plug-in whose pass hooks it would skip
are errors naming both plug-ins.

`trace_names` (per class) lists the intermediate tensors a plug-in records (`core.trace.record`)
when a trace is open (`Segmenter.trace`, `seg(image, classes, trace=True)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:
    import torch

    from ..backbones.vit import Tap
    from .attention import Mix
    from .dense import PassContext

HOOKS = ("taps", "mixes", "readout", "adjust_logits", "joint_slide")
_PASS_HOOKS = frozenset({"mixes", "readout", "adjust_logits"})


class HeadPlugin:
    """Base class of head plug-ins; subclasses override the hooks they provide."""

    hooks: ClassVar[frozenset[str]] = frozenset()
    trace_names: ClassVar[tuple[str, ...]] = ()  # what it records when a trace is open

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.hooks = frozenset(h for h in HOOKS if getattr(cls, h) is not getattr(HeadPlugin, h))

    def taps(self, n_blocks: int) -> dict[str, "Tap"]:
        return {}

    def mixes(self, ctx: "PassContext", mixes: tuple["Mix", ...]) -> list["Mix"]:
        return []

    def readout(self, ctx: "PassContext", mixes: tuple["Mix", ...]) -> "torch.Tensor":
        raise NotImplementedError

    def adjust_logits(self, ctx: "PassContext", logits: "torch.Tensor") -> "torch.Tensor":
        return logits

    def joint_slide(self, seg: Any, x: "torch.Tensor", queries: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError


def providers(plugins: Sequence[HeadPlugin], hook: str) -> list[HeadPlugin]:
    """The plug-ins that provide `hook`, in order."""
    return [p for p in plugins if hook in p.hooks]


def check_plugins(plugins: Sequence[Any]) -> tuple[HeadPlugin, ...]:
    """Plug-ins that can run together, as a tuple; else a ValueError naming the conflict."""
    plugins = tuple(plugins)
    for p in plugins:
        if not isinstance(p, HeadPlugin):
            raise TypeError(f"{p!r} is not a head plug-in (derive it from ovss.heads.HeadPlugin)")
    for hook in ("readout", "joint_slide"):
        found = providers(plugins, hook)
        if len(found) > 1:
            raise ValueError(f"head plug-ins {found[0]!r} and {found[1]!r} both replace the {hook}; keep one")
    joint = providers(plugins, "joint_slide")
    if joint:
        skipped = [p for p in plugins if p is not joint[0] and p.hooks & _PASS_HOOKS]
        if skipped:
            raise ValueError(f"head plug-in {joint[0]!r} reads every window itself, so {skipped[0]!r} "
                             f"({', '.join(sorted(skipped[0].hooks & _PASS_HOOKS))}) would never run")
    return plugins
