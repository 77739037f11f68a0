"""Registered methods, one file per paper. Importing this package registers them all."""

from . import cass, clearclip, cliptrase, dense_clip, lposs, maskclip, naclip, proxyclip, resclip, scclip, sclip  # noqa: F401  (registration side effects)
from .base import METHODS, MethodSpec, Preset, Recipe, get_method, list_methods, register_method

__all__ = ["METHODS", "MethodSpec", "Preset", "Recipe", "get_method", "list_methods", "register_method"]
