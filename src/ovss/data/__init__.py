"""Datasets: the procedural synthetic world and the plain folder layout that `ovss eval` reads."""

from .folder import FolderDataset
from .synthetic import CLASSES, STUFF, THINGS, Scene, SyntheticScenes, make_scene, write_split

__all__ = [
    "CLASSES", "STUFF", "THINGS", "FolderDataset", "Scene", "SyntheticScenes", "make_scene", "write_split",
]
