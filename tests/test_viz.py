import numpy as np
import pytest
from PIL import Image

from ovss.core.viz import VOC_PALETTE, legend, named_palette, overlay, overlay_with_legend, palette_for


def test_voc_palette_known_entries():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[0].tolist() == [0, 0, 0]
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]  # person
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # void
    raw = named_palette("voc")
    assert np.array_equal(raw, VOC_PALETTE)
    raw[0] = 1  # a copy: the module constant is untouched
    assert VOC_PALETTE[0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        named_palette("nope")


@pytest.mark.parametrize("n", [1, 21, 64, 65, 255, 300, 2000])
def test_palette_deterministic_and_distinct(n):
    names = [f"class {i}" for i in range(n)]
    pal = palette_for(names)
    assert pal.shape == (n, 3) and pal.dtype == np.uint8
    assert np.array_equal(pal, palette_for(list(names)))
    assert len({tuple(c) for c in pal.tolist()}) == n
    assert [0, 0, 0] not in pal.tolist()  # black is the background's
    voc = palette_for(names, base="voc")  # the VOC colour map by index, as before
    assert np.array_equal(voc[: min(n, 255)], VOC_PALETTE[1 : 1 + min(n, 255)])
    assert len({tuple(c) for c in voc.tolist()}) == n


def test_palette_follows_names_not_positions():
    """A class keeps its colour whatever its position, its spelling's case, and whether a method
    put a "background" class in front of it; the background is black."""
    names = ["sky", "grass", "water", "brick wall", "snow"]
    pal = palette_for(names)
    with_bg = palette_for(["background", *names])
    assert with_bg[0].tolist() == [0, 0, 0]
    assert np.array_equal(with_bg[1:], pal)
    assert np.array_equal(palette_for(["Background", *names])[1:], pal)
    alone = {n: palette_for([n])[0].tolist() for n in names}
    assert len({tuple(c) for c in alone.values()}) == len(names)  # these five hash to five colours
    assert dict(zip(names, pal.tolist())) == alone
    assert dict(zip(names[::-1], palette_for(names[::-1]).tolist())) == alone
    assert palette_for(["  Brick   WALL "])[0].tolist() == alone["brick wall"]


def test_palette_hsv_base():
    pal = palette_for(["a", "b", "c"], base="hsv")
    assert len({tuple(c) for c in pal.tolist()}) == 3
    with pytest.raises(ValueError, match="'name', 'voc', 'hsv'"):
        palette_for(["a"], base="nope")


def _scene():
    img = np.full((20, 30, 3), 100, np.uint8)
    lab = np.zeros((20, 30), np.int64)
    lab[5:15, 10:20] = 2
    return img, lab


def test_overlay_alpha_math_and_ignore():
    img, lab = _scene()
    lab[0:3, 0:3] = 255
    pal = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
    out = overlay(img, lab, pal, alpha=0.25, ignore_index=255)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[10, 14].tolist() == [75, 75, 125]  # 0.75 * 100 + 0.25 * (0, 0, 200)
    assert out[18, 25].tolist() == [125, 75, 75]
    assert out[1, 1].tolist() == [100, 100, 100]  # ignored: left as-is
    assert out[4, 12].tolist() == [245, 245, 245]  # 1-px boundary just above the square
    plain = overlay(img, lab, pal, alpha=0.25, ignore_index=255, boundaries=False)
    assert plain[4, 12].tolist() == [125, 75, 75]


def test_overlay_rejects_bad_labels():
    img, lab = _scene()
    pal = palette_for(["a", "b"])  # label 2 is outside
    with pytest.raises(ValueError, match="outside the palette"):
        overlay(img, lab, pal)
    with pytest.raises(ValueError, match="shape"):
        overlay(img, lab[:10], palette_for(["a", "b", "c"]))


def _colours(im: Image.Image) -> set:
    return {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3).tolist()}


def test_legend_lists_only_present_classes():
    names = ["sky", "person", "car", "dog"]
    pal = palette_for(names)
    leg = legend(names, pal, areas=[0.5, 0.0, 0.25, 0.0])
    assert isinstance(leg, Image.Image) and leg.width > 20
    cols = _colours(leg)
    assert tuple(pal[0].tolist()) in cols and tuple(pal[2].tolist()) in cols
    assert tuple(pal[1].tolist()) not in cols and tuple(pal[3].tolist()) not in cols
    full = legend(names, pal, areas=[0.5, 0.0, 0.25, 0.0], present_only=False)
    assert full.height > leg.height
    assert legend(names, pal).height == full.height  # no areas: every class listed
    assert np.asarray(leg).min() < 50  # some dark text was drawn


def test_legend_odd_names():
    names = ["猫 cat", "a\nvery long name " * 10]
    leg = legend(names, palette_for(names), areas=[0.0004, 0.3])
    assert leg.height > 0


def test_overlay_with_legend_layout():
    img, lab = _scene()
    img = np.repeat(np.repeat(img, 10, 0), 10, 1)  # 200 x 300
    lab = np.repeat(np.repeat(lab, 10, 0), 10, 1)
    names = ["background", "unused", "square"]
    out = overlay_with_legend(img, lab, names)
    assert out.mode == "RGB" and out.height == 200 and out.width > 300
    assert np.array_equal(np.asarray(out)[:, :300], overlay(img, lab, palette_for(names)))

    many = [f"class number {i}" for i in range(60)]
    lab2 = np.arange(60).repeat(1000)[: 200 * 300].reshape(200, 300) % 60
    out2 = overlay_with_legend(img, lab2, many)
    assert out2.height == 200  # a tall legend is scaled to fit
