"""The plain folder dataset: layout, sorting, palette masks read as indices, exact error messages."""

import re

import numpy as np
import pytest
from PIL import Image

from ovss.data.folder import FolderDataset
from ovss.data.synthetic import save_mask_png


def make_root(tmp_path, names=("b", "a"), classes="cat, kitty\ndog\n\n"):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(classes)
    for k, n in enumerate(names):
        Image.fromarray(np.full((4, 5, 3), k * 40, np.uint8)).save(root / "images" / f"{n}.png")
        Image.fromarray(np.full((4, 5), k, np.uint8)).save(root / "masks" / f"{n}.png")
    return root


def test_reads_sorted_with_synonyms(tmp_path):
    root = make_root(tmp_path)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(root / "images" / "c.jpg")
    Image.fromarray(np.full((4, 5), 255, np.uint8)).save(root / "masks" / "c.png")
    (root / "images" / "notes.txt").write_text("not an image")
    ds = FolderDataset(root)
    assert ds.classes == [["cat", "kitty"], ["dog"]] and ds.class_names == ["cat", "dog"]
    assert [ds[i][0] for i in range(len(ds))] == ["a", "b", "c"]
    name, img, mask = ds[2]
    assert name == "c" and img == root / "images" / "c.jpg" and mask == root / "masks" / "c.png"
    assert ds.load_mask(0).tolist() == np.ones((4, 5)).tolist() and ds.load_mask(2).max() == 255
    assert ds.load_image(1).shape == (4, 5, 3)


def test_palette_mask_read_as_indices(tmp_path):
    root = make_root(tmp_path, names=("a",))
    m = np.array([[0, 1, 2], [10, 255, 3]], np.uint8)
    save_mask_png(m, root / "masks" / "a.png")
    with Image.open(root / "masks" / "a.png") as im:
        assert im.mode == "P"
    got = FolderDataset(root).load_mask(0)
    assert got.dtype == np.uint8 and np.array_equal(got, m)


def test_16bit_mask(tmp_path):
    root = make_root(tmp_path, names=("a",))
    m = np.array([[0, 300], [1000, 255]], np.uint16)
    Image.fromarray(m).save(root / "masks" / "a.png")
    assert np.array_equal(FolderDataset(root).load_mask(0), m)


def test_rgb_mask_rejected(tmp_path):
    root = make_root(tmp_path, names=("a",))
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(ValueError, match="single-channel"):
        FolderDataset(root).load_mask(0)


@pytest.mark.parametrize("missing", ["", "classes.txt", "images", "masks"])
def test_missing_paths_named(tmp_path, missing):
    root = make_root(tmp_path)
    target = root / missing if missing else tmp_path / "nope"
    if missing == "classes.txt":
        target.unlink()
    elif missing:
        for p in target.iterdir():
            p.unlink()
        target.rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(target))):
        FolderDataset(target if not missing else root)


def test_missing_mask_named(tmp_path):
    root = make_root(tmp_path)
    (root / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        FolderDataset(root)
    assert str(root / "masks" / "b.png") in str(e.value) and str(root / "images" / "b.png") in str(e.value)


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"])
def test_empty_classes(tmp_path, text):
    with pytest.raises(ValueError, match="empty"):
        FolderDataset(make_root(tmp_path, classes=text))


def test_blank_inner_class_line(tmp_path):
    with pytest.raises(ValueError, match="blank"):
        FolderDataset(make_root(tmp_path, classes="cat\n\ndog\n"))
