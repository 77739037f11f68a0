"""Datasets: the standard benchmarks in their prepared layouts, the procedural synthetic world and the
plain folder layout that `ovss eval` reads, behind one `SegDataset` interface and a registry."""

from .benchmarks import (
    DATASETS,
    IGNORE_INDEX,
    Sample,
    SegDataset,
    create_dataset,
    ensure_synthetic,
    list_datasets,
    load_meta,
    read_label,
)
from .folder import FolderDataset
from .synthetic import CLASSES, STUFF, THINGS, Scene, SyntheticScenes, make_scene, write_split

__all__ = [
    "CLASSES",
    "DATASETS",
    "IGNORE_INDEX",
    "STUFF",
    "THINGS",
    "FolderDataset",
    "Sample",
    "Scene",
    "SegDataset",
    "SyntheticScenes",
    "create_dataset",
    "ensure_synthetic",
    "list_datasets",
    "load_meta",
    "make_scene",
    "read_label",
    "write_split",
]
