"""The synthetic world: determinism, exact masks, captions that name every present class."""

import re

import numpy as np
import pytest

from ovss.data.folder import FolderDataset
from ovss.data.synthetic import (
    CLASSES,
    MIN_AREA,
    SEED_BASE,
    STUFF,
    THINGS,
    SyntheticScenes,
    make_scene,
    write_split,
)

SEEDS = range(40)


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(s, 64) for s in SEEDS]


def test_class_lists():
    assert CLASSES == STUFF + THINGS and len(set(CLASSES)) == len(CLASSES) < 255


def test_deterministic():
    a, b = make_scene(123), make_scene(123)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.caption == b.caption and a.present == b.present
    c = make_scene(124)
    assert a.image.tobytes() != c.image.tobytes()


def test_dtype_shape():
    s = make_scene(5, 80)
    assert s.image.dtype == np.uint8 and s.image.shape == (80, 80, 3)
    assert s.mask.dtype == np.uint8 and s.mask.shape == (80, 80)


def test_masks_present_and_areas(scenes):
    for s in scenes:
        assert s.mask.max() < len(CLASSES)
        counts = np.bincount(s.mask.ravel(), minlength=len(CLASSES))
        assert s.present == [c for c, n in zip(CLASSES, counts) if n > 0]
        assert all(counts[CLASSES.index(c)] >= MIN_AREA * s.mask.size for c in s.present)
        assert any(c in STUFF for c in s.present)


def test_caption_names_exactly_the_present_classes(scenes):
    for s in scenes:
        named = {c for c in CLASSES if re.search(rf"\b{c}s?\b", s.caption)}
        assert named == set(s.present), (s.caption, s.present)


def test_variety(scenes):
    assert len({s.caption for s in scenes}) == len(scenes)
    assert {c for s in scenes for c in s.present} == set(CLASSES)
    assert len({len(s.present) for s in scenes}) >= 3


def test_splits_disjoint():
    train, val = SyntheticScenes("train", size=32, length=10), SyntheticScenes("val", size=32)
    assert len(val) == 200 and train.seed(len(train) - 1) < SEED_BASE["val"] == val.seed(0)
    assert val[0].caption == make_scene(SEED_BASE["val"], 32).caption
    assert val[-1].caption == make_scene(SEED_BASE["val"] + 199, 32).caption
    with pytest.raises(IndexError):
        train[10]
    with pytest.raises(ValueError):
        SyntheticScenes("train", length=SEED_BASE["val"] + 1)


def test_write_split_roundtrip_and_skip(tmp_path):
    root = write_split(tmp_path / "val", split="val", n=3, size=32, progress=False)
    ds = FolderDataset(root)
    assert ds.class_names == CLASSES and len(ds) == 3
    for i in range(3):
        scene = make_scene(SEED_BASE["val"] + i, 32)
        name, img_path, mask_path = ds[i]
        assert img_path.parent.name == "images" and mask_path.parent.name == "masks"
        assert name == f"{SEED_BASE['val'] + i:08d}"
        assert np.array_equal(ds.load_image(i), scene.image)
        assert np.array_equal(ds.load_mask(i), scene.mask)
    # Existing files are kept as they are (even if they differ); only missing ones are written.
    first = ds[0][1]
    first.write_bytes(b"sentinel")
    ds[1][2].unlink()
    write_split(root, split="val", n=4, size=32, progress=False)
    assert first.read_bytes() == b"sentinel"
    ds = FolderDataset(root)
    assert len(ds) == 4 and np.array_equal(ds.load_mask(1), make_scene(SEED_BASE["val"] + 1, 32).mask)
    assert not list(root.rglob("*.tmp"))


class _Killed(BaseException):
    """Stands in for Ctrl-C / kill in the middle of writing a split."""


def _interrupt_after(monkeypatch, k):
    import ovss.data.synthetic as syn

    real, made = syn.make_scene, []

    def make(seed, size=96):
        if len(made) == k:
            raise _Killed
        made.append(seed)
        return real(seed, size)

    monkeypatch.setattr(syn, "make_scene", make)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "split.json"}


def test_interrupted_split_is_partial_then_finished(tmp_path, monkeypatch):
    from ovss.data import create_dataset, ensure_synthetic
    from ovss.data.synthetic import split_state

    whole = ensure_synthetic(tmp_path / "whole", n=6, size=32)
    part = tmp_path / "part"
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(_Killed):
            ensure_synthetic(part, n=6, size=32)
    assert (part / "classes.txt").exists() and len(list((part / "images").iterdir())) == 3
    assert split_state(part) == "partial" and not (part / "split.json").exists()
    with pytest.raises(ValueError, match="incomplete"):
        create_dataset("synthetic-scenes", part)
    ensure_synthetic(part, n=6, size=32)  # the next run finishes it
    assert split_state(part) == "complete" and not (part / ".writing").exists()
    assert _files(part) == _files(whole)
    assert len(create_dataset("synthetic-scenes", part)) == 6


def test_split_of_another_size_is_rebuilt_not_mixed(tmp_path):
    from PIL import Image

    from ovss.data import ensure_synthetic

    root = ensure_synthetic(tmp_path / "s", n=3, size=32)
    ensure_synthetic(root, n=4, size=40)
    sizes = {Image.open(p).size for p in (root / "images").iterdir()}
    assert sizes == {(40, 40)} and len(list((root / "images").iterdir())) == 4
