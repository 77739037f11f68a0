"""Registered methods, one file per paper. Importing this package registers them all."""

from ..core.recipe import MethodSpec, Preset, Recipe, get_method, list_methods, register_method
from ..core.registry import METHODS
from . import (  # noqa: F401  (registration side effects)
    cass,
    clearclip,
    clipdiy,
    cliptrase,
    dense_clip,
    freeda,
    lposs,
    maskclip,
    mlmp,
    naclip,
    proxyclip,
    resclip,
    scclip,
    sclip,
)

__all__ = ["METHODS", "MethodSpec", "Preset", "Recipe", "get_method", "list_methods", "register_method"]
