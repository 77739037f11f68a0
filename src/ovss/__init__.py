"""ovss: training-free open-vocabulary semantic segmentation.

    import ovss
    seg = ovss.load("maskclip", backbone="clip-vit-b16")
    result = seg("photo.jpg", ["cat", "sofa", "wooden floor"])
    result.labels, result.scores, result.overlay()

Nothing heavy happens at import: no device selection, no weights, no network.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .core.recipe import get_method, list_methods
from .core.result import Result
from .core.state import ImageState
from .core.version import __version__
from .text.bank import parse_classes

if TYPE_CHECKING:
    from .core.segmenter import Segmenter

__all__ = ["ImageState", "Result", "Segmenter", "__version__", "get_method", "list_backbones", "list_methods",
           "load", "parse_classes", "segment"]


def load(method: str = "maskclip", backbone: str = "clip-vit-b16", weights: Any = None,
         preset: str | None = None, device: str = "auto", **kwargs: Any) -> "Segmenter":
    """Load a method with its backbone weights once; the returned `Segmenter` is reusable.

    Args:
        method: a registered method name (`ovss.list_methods()`).
        backbone: a registered backbone name (`ovss.list_backbones()`), a local file or folder,
            or `hf-hub:org/repo`.
        weights: overrides where the backbone's weights are read from (any supported format).
        preset: a method preset (published per-benchmark settings), e.g. "voc21".
        device: "auto" (CUDA, then MPS, then CPU), or any torch device string.
        **kwargs: `overrides={"protocol.crop": 0, ...}`, `tokenizer=path`, `cache_dir=...`,
            `text_cache_dir=...`, `act="gelu"`, `dtype="bfloat16"` (or "float16", "auto"; float32
            by default), `max_pixels=N` (image pixel limit, default 100 megapixels, 0 for none);
            see `Segmenter`.
    """
    from .core.segmenter import Segmenter

    return Segmenter(method, backbone=backbone, weights=weights, preset=preset, device=device, **kwargs)


@lru_cache(maxsize=4)
def _cached(method: str, backbone: str, weights: Any, preset: str | None, device: str) -> "Segmenter":
    return load(method, backbone, weights, preset, device)


def segment(image: Any, classes: Any, method: str = "maskclip", backbone: str = "clip-vit-b16",
            weights: Any = None, preset: str | None = None, device: str = "auto") -> Result:
    """One call: segment `image` into `classes`. Loaded models are kept for the next call."""
    return _cached(method, backbone, None if weights is None else str(weights), preset, device)(image, classes)


def list_backbones(pattern: str = "*") -> list[str]:
    from .backbones.zoo import list_backbones as _list

    return _list(pattern)


def __getattr__(name: str) -> Any:
    if name == "Segmenter":
        from .core.segmenter import Segmenter

        return Segmenter
    raise AttributeError(name)
