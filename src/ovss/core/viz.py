"""Colours, overlays and legends for label maps.

Free-text vocabularies have no fixed colour table, so a class's colour comes from its **name**
(`palette_for`): the same class keeps its colour across methods, runs and class lists, and a
"background" class (given, or added by a method's probability threshold) is always black without
moving anyone else's colour. The PASCAL VOC colour map by index stays available (`base="voc"`).
Text uses PIL's built-in default font only, so rendering never depends on system fonts.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.io import read_image

__all__ = ["BACKGROUND_COLOUR", "NAME_COLOURS", "VOC_PALETTE", "colour_key", "legend", "named_palette", "overlay",
           "overlay_with_legend", "palette_for"]

_GOLDEN = 0.618033988749895
BOUNDARY_COLOUR = (245, 245, 245)
BACKGROUND_COLOUR = (0, 0, 0)  # a class named "background": black, as in PASCAL VOC

# 64 well-separated colours for classes by name: picked greedily farthest-apart in CIELAB (each
# new colour the farthest from all earlier ones and from black, grey and the boundary white) from
# an RGB grid of step 15, lightness 30-90, chroma >= 20. Any two are at least 22.9 Delta-E apart.
# Kept as numbers (not recomputed) so they never change between machines or numpy versions.
NAME_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 30, 180), (255, 210, 0), (0, 105, 225), (15, 120, 0),
    (0, 255, 210), (150, 30, 45), (135, 105, 0), (240, 165, 240), (0, 195, 255), (195, 225, 135),
    (225, 0, 255), (120, 30, 120), (255, 165, 135), (255, 135, 0), (165, 225, 15), (0, 225, 105),
    (255, 0, 105), (15, 150, 120), (0, 75, 120), (90, 30, 195), (210, 105, 240), (120, 225, 225),
    (195, 105, 135), (75, 90, 45), (180, 60, 0), (135, 150, 225), (150, 165, 15), (240, 195, 105),
    (105, 60, 30), (180, 0, 105), (0, 90, 90), (255, 105, 105), (105, 60, 90), (180, 165, 120),
    (75, 195, 120), (240, 180, 195), (180, 210, 255), (75, 180, 15), (255, 105, 180), (150, 0, 165),
    (90, 75, 150), (60, 135, 165), (120, 150, 75), (225, 0, 45), (210, 150, 0), (0, 90, 255),
    (180, 105, 60), (120, 75, 195), (150, 210, 165), (150, 45, 255), (150, 240, 120), (0, 90, 30),
    (180, 135, 240), (195, 90, 180), (225, 225, 75), (225, 30, 210), (240, 150, 75), (255, 210, 180),
    (105, 240, 60), (150, 120, 165), (255, 90, 45),
)


def _voc_colormap(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map: the bits of the index are interleaved into R, G, B from
    the most significant bit down (index 1 -> (128, 0, 0), 15 'person' -> (192, 128, 128))."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_PALETTE: np.ndarray = _voc_colormap()
VOC_PALETTE.flags.writeable = False  # shared module constant: callers get copies to edit


def named_palette(name: str) -> np.ndarray:
    """A raw named colour map as a (256, 3) uint8 copy; only ``'voc'`` (index 0 = black background)."""
    if name.lower() == "voc":
        return VOC_PALETTE.copy()
    raise ValueError(f"unknown palette {name!r}; available: 'voc'")


def _golden_colours(n: int, used: set[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``n`` colours by golden-ratio hue stepping (consecutive colours far apart in hue), cycling
    saturation and value so more than ~1500 colours stay distinct; colours in ``used`` are skipped."""
    out: list[tuple[int, int, int]] = []
    k = 0
    while len(out) < n:
        h = (k * _GOLDEN) % 1.0
        s = (0.85, 0.6, 1.0)[k % 3]
        v = (0.9, 0.65, 0.45, 1.0)[(k // 3) % 4]
        rgb = tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(h, s, v))
        k += 1
        if rgb not in used:
            used.add(rgb)  # type: ignore[arg-type]
            out.append(rgb)  # type: ignore[arg-type]
    return out


def colour_key(name: str) -> str:
    """What a class's colour depends on: its name, case and spacing ignored."""
    return " ".join(str(name).lower().split())


def _name_slot(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % len(NAME_COLOURS)


def _palette_by_name(class_names: Sequence[str]) -> np.ndarray:
    n = len(class_names)
    out = np.zeros((n, 3), np.uint8)
    taken: set[int] = set()
    overflow: list[int] = []
    for i, name in enumerate(class_names):
        key = colour_key(name)
        if key == "background":
            out[i] = BACKGROUND_COLOUR
            continue
        slot = _name_slot(key)
        if len(taken) >= len(NAME_COLOURS):
            overflow.append(i)
            continue
        while slot in taken:  # two names of one list on one colour: the later takes the next free one
            slot = (slot + 1) % len(NAME_COLOURS)
        taken.add(slot)
        out[i] = NAME_COLOURS[slot]
    if overflow:  # more than 64 named classes: the rest get golden-ratio colours unlike all of these
        used = {tuple(c) for c in NAME_COLOURS} | {BACKGROUND_COLOUR, BOUNDARY_COLOUR}
        out[overflow] = np.array(_golden_colours(len(overflow), used), np.uint8).reshape(-1, 3)
    return out


def palette_for(class_names: Sequence[str], base: str = "name") -> np.ndarray:
    """A deterministic (C, 3) uint8 palette for ``class_names``.

    ``base='name'`` (the default): a class's colour comes from its name (`colour_key`, hashed to
    one of the 64 `NAME_COLOURS`), so "water" has one colour in every method's result, whatever its
    position in the list and whether a method added a "background" class in front of it. A class
    named "background" is black (`BACKGROUND_COLOUR`) and takes no name colour. When two names of
    one list hash to the same colour the later one takes the next free colour, and classes beyond
    64 get golden-ratio colours distinct from all of these, so colours within a list never repeat.
    ``base='voc'``: by index, class ``i`` gets ``VOC_PALETTE[i + 1]`` (shifted by one: VOC index 0 is
    black), continued by golden-ratio HSV colours past the 255 usable VOC colours.
    ``base='hsv'``: golden-ratio HSV colours by index for every class.
    """
    n = len(class_names)
    base = base.lower()
    if base == "name":
        return _palette_by_name(class_names)
    if base == "voc":
        head = VOC_PALETTE[1 : 1 + min(n, 255)]
    elif base == "hsv":
        head = VOC_PALETTE[:0]
    else:
        raise ValueError(f"unknown palette base {base!r}; available: 'name', 'voc', 'hsv'")
    used = {tuple(int(v) for v in c) for c in head} | {(0, 0, 0)}
    tail = np.array(_golden_colours(n - len(head), used), np.uint8).reshape(-1, 3)
    return np.concatenate([np.array(head, np.uint8), tail]).reshape(n, 3)


def _as_palette(palette: Any) -> np.ndarray:
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"palette must have shape (C, 3), got {pal.shape}")
    return pal.astype(np.uint8)


def _as_labels(labels: Any, shape: tuple[int, int]) -> np.ndarray:
    """The label map as an integer array of the image's shape (no copy: bands are widened one at a
    time where needed)."""
    lab = np.asarray(labels)
    if lab.shape != shape:
        raise ValueError(f"labels shape {lab.shape} does not match image size {shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    return lab


# Rows blended at a time: the blend works in float32 and int64 per pixel (a dozen full-size
# temporaries for an 8000x6000 image, 2.5 GB); a band keeps that to a few MB, same values.
_BAND_PIXELS = 1 << 18


def overlay(
    image: Any,
    labels: Any,
    palette: Any,
    alpha: float = 0.5,
    ignore_index: int | None = None,
    boundaries: bool = True,
) -> np.ndarray:
    """Blend class colours over ``image``: ``out = (1 - alpha) * image + alpha * palette[label]``.

    Pixels equal to ``ignore_index`` keep the original image so "no prediction" is visibly different
    from any class. With ``boundaries`` a 1-pixel near-white line marks every change of label, which
    keeps adjacent regions of similar colour apart. ``image`` is anything ``read_image`` accepts.
    Returns an HxWx3 uint8 array. Computed in bands of rows, so memory beyond the output stays small.
    """
    img, bands = _overlay_bands(image, labels, palette, alpha, ignore_index, boundaries)
    out = np.empty_like(img)
    for r0, band in bands:
        out[r0 : r0 + len(band)] = band
    return out


def _overlay_bands(image: Any, labels: Any, palette: Any, alpha: float, ignore_index: int | None,
                   boundaries: bool) -> tuple[np.ndarray, Iterator[tuple[int, np.ndarray]]]:
    """The image as RGB uint8 and an iterator of (first row, overlay band): `overlay` in bands."""
    is_rgb8 = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2:] == (3,)
    img = image if is_rgb8 and image.ndim == 3 else read_image(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    labels = _as_labels(labels, img.shape[:2])
    pal = _as_palette(palette)
    h, w = labels.shape
    step = max(1, _BAND_PIXELS // max(1, w))

    def bands() -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            lab = labels[r0 : min(h, r1 + 1)].astype(np.int64)  # one row more: the boundary below
            valid = np.ones(lab.shape, bool) if ignore_index is None else lab != ignore_index
            bad = valid & ((lab < 0) | (lab >= len(pal)))
            if bad.any():
                raise ValueError(
                    f"labels {sorted(set(np.unique(lab[bad]).tolist()))[:5]} are outside the palette "
                    f"(0..{len(pal) - 1}) and not ignore_index={ignore_index}"
                )
            n = r1 - r0
            im = img[r0:r1]
            colour = pal[np.where(valid[:n], lab[:n], 0)].astype(np.float32)
            blended = np.round((1.0 - alpha) * im.astype(np.float32) + alpha * colour).astype(np.uint8)
            band = np.where(valid[:n, :, None], blended, im)
            if boundaries:
                edge = np.zeros(lab.shape, bool)
                edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
                edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
                band[(edge & valid)[:n]] = BOUNDARY_COLOUR
            yield r0, band

    return img, bands()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font (scalable since Pillow 10.1 when FreeType is present, else the
    fixed bitmap font): never a system font, so output does not depend on the machine."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _printable(text: str, font: Any, max_chars: int = 40) -> str:
    text = " ".join(str(text).split())  # newlines/tabs would break the row layout
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    if not isinstance(font, ImageFont.FreeTypeFont):  # the bitmap font only encodes Latin-1
        text = text.encode("latin-1", "replace").decode("latin-1")
    return text


def _percent(a: float) -> str:
    p = 100.0 * a
    return "<0.1%" if 0 < p < 0.1 else f"{p:.1f}%"


def legend(
    class_names: Sequence[str],
    palette: Any,
    areas: Sequence[float] | None = None,
    present_only: bool = True,
    font_size: int = 14,
) -> Image.Image:
    """A legend image: one row per class with its colour swatch, name and, given ``areas`` (the
    fraction of the image in [0, 1] per class), the area percentage.

    With ``present_only`` and ``areas`` only classes with area > 0 are listed, so a 150-class
    vocabulary does not produce a 150-row legend for an image showing 4 of them. Rows keep class order.
    """
    pal = _as_palette(palette)
    n = len(class_names)
    if len(pal) < n:
        raise ValueError(f"palette has {len(pal)} colours for {n} classes")
    if areas is not None and len(areas) != n:
        raise ValueError(f"got {len(areas)} areas for {n} classes")
    idx = [i for i in range(n) if not (present_only and areas is not None and areas[i] <= 0)]
    font = _font(font_size)
    texts = [
        _printable(class_names[i], font) + ("" if areas is None else f"  {_percent(float(areas[i]))}")
        for i in idx
    ] or ["(no classes)"]

    probe = Image.new("RGB", (1, 1))
    draw = ImageDraw.Draw(probe)
    asc = draw.textbbox((0, 0), "Ag", font=font)
    text_h = asc[3] - asc[1]
    sw = max(text_h + 2, 8)  # swatch side
    pad, gap = max(4, sw // 3), max(3, sw // 4)
    row_h = sw + gap
    text_w = max(draw.textbbox((0, 0), t, font=font)[2] for t in texts)
    width = pad + sw + gap * 2 + text_w + pad
    height = pad * 2 + row_h * len(texts) - gap

    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    for r, text in enumerate(texts):
        y = pad + r * row_h
        if idx:
            colour = tuple(int(v) for v in pal[idx[r]])
            draw.rectangle([pad, y, pad + sw - 1, y + sw - 1], fill=colour, outline=(64, 64, 64))
        draw.text((pad + sw + gap * 2, y + (sw - text_h) // 2 - asc[1]), text, font=font, fill=(0, 0, 0))
    return im


def overlay_with_legend(
    image: Any,
    labels: Any,
    class_names: Sequence[str],
    palette: Any | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = None,
    boundaries: bool = True,
    present_only: bool = True,
) -> Image.Image:
    """The overlay with a legend of the classes present (and their area share) to its right.

    The result keeps the overlay's height: a legend taller than the image is scaled down to fit, a
    shorter one is top-aligned on white. The font grows with the image so large outputs stay readable.
    """
    pal = palette_for(class_names) if palette is None else _as_palette(palette)
    img, bands = _overlay_bands(image, labels, pal, alpha, ignore_index, boundaries)
    h, w = img.shape[:2]
    labels = np.asarray(labels)
    step = max(1, _BAND_PIXELS // max(1, w))
    counts = np.zeros(len(class_names), np.int64)
    for r0 in range(0, h, step):  # in bands: no full-size int64 copy of the label map
        lab = labels[r0 : r0 + step].astype(np.int64)
        valid = (lab >= 0) & (lab < len(class_names))
        if ignore_index is not None:
            valid &= lab != ignore_index
        counts += np.bincount(lab[valid].ravel(), minlength=len(class_names))
    areas = (counts / labels.size).tolist()
    leg = legend(class_names, pal, areas, present_only=present_only, font_size=int(np.clip(h // 32, 12, 32)))
    if leg.height > h:
        leg = leg.resize((max(1, round(leg.width * h / leg.height)), h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (w + leg.width, h), "white")
    for r0, band in bands:  # each band pasted as it is made: no full-size overlay array besides the canvas
        canvas.paste(Image.fromarray(band), (0, r0))
    canvas.paste(leg, (w, 0))
    return canvas
