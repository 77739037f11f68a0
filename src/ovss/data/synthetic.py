"""A small procedural world of scenes with exact masks and captions.

Offline there is no pretrained CLIP, so the project trains a tiny one on (image, caption) pairs from
this generator and evaluates dense segmentation on its validation split. Two things matter for that:

* every region's class must be learnable from the caption alone, so the caption names every class
  present (and nothing absent), and each present class covers at least `MIN_AREA` of the pixels;
* the class must be readable from appearance, not position: stuff classes are textures assigned to
  randomly shaped regions in random order, things are shapes whose colour is an attribute.

Everything is a pure function of the seed (numpy `Generator(PCG64(seed))`, no global RNG), and all
random layout parameters are in image-relative units, so a seed gives the same scene at any size.
Masks are rasterized by the same pixel-centre inside tests that choose which pixels are painted, so
image and mask agree exactly (no antialiasing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

STUFF: list[str] = ["sky", "grass", "water", "sand", "brick wall", "snow", "road"]
THINGS: list[str] = ["circle", "square", "triangle", "star"]
CLASSES: list[str] = STUFF + THINGS

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "orange": (0.96, 0.52, 0.08),
    "yellow": (0.96, 0.88, 0.14),
    "green": (0.18, 0.72, 0.22),
    "blue": (0.14, 0.28, 0.88),
    "purple": (0.56, 0.20, 0.72),
    "pink": (0.97, 0.50, 0.72),
}

MIN_AREA = 0.02  # every present class (and every named thing instance) covers at least this share
MIN_STUFF_AREA = 0.08  # stuff regions start larger, so things placed on top rarely wipe them out
IGNORE_INDEX = 255
SEED_BASE: dict[str, int] = {"train": 0, "val": 1_000_000}
DEFAULT_LENGTH: dict[str, int] = {"train": 100_000, "val": 200}

# Mask palette for viewing (index -> RGB); IGNORE_INDEX is white.
PALETTE: list[tuple[int, int, int]] = [
    (70, 130, 220), (60, 170, 60), (20, 200, 200), (230, 200, 130), (160, 60, 40), (235, 235, 245),
    (80, 80, 90), (230, 30, 30), (250, 150, 0), (250, 240, 40), (160, 40, 200),
]


@dataclass
class Scene:
    """One generated sample: RGB image, class-index mask, caption and the classes in it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8, index into CLASSES
    caption: str
    present: list[str]  # class names in the mask, in CLASSES order


# ---------------------------------------------------------------- noise and textures

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], as (Y, X) broadcastable arrays."""
    u = (np.arange(size, dtype=np.float64) + 0.5) / size
    return u[:, None], u[None, :]


def _noise(rng: np.random.Generator, size: int, cells_y: float, cells_x: float) -> np.ndarray:
    """Smooth value noise in [0, 1]: random lattice, smoothstep-interpolated (cells per image side)."""
    ny, nx = max(1, round(cells_y)), max(1, round(cells_x))
    lattice = rng.random((ny + 1, nx + 1))
    ys = (np.arange(size) + 0.5) / size * ny
    xs = (np.arange(size) + 0.5) / size * nx
    y0, x0 = np.minimum(ys.astype(int), ny - 1), np.minimum(xs.astype(int), nx - 1)
    fy, fx = ys - y0, xs - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    a, b = lattice[y0][:, x0], lattice[y0][:, x0 + 1]
    c, d = lattice[y0 + 1][:, x0], lattice[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _fractal(
    rng: np.random.Generator, size: int, cells: float, octaves: int = 3, aspect: float = 1.0
) -> np.ndarray:
    """Sum of noise octaves, normalised to [0, 1]; aspect > 1 stretches features horizontally."""
    out, total, amp = np.zeros((size, size)), 0.0, 1.0
    for o in range(octaves):
        c = cells * 2**o
        out += amp * _noise(rng, size, c, c / aspect)
        total += amp
        amp *= 0.5
    return out / total


def _rgb(*c: float) -> np.ndarray:
    return np.asarray(c, dtype=np.float64)


def _sky(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Vertical blue gradient (over the region's own rows) with soft cloud blobs."""
    Y, _ = _grid(size)
    rows = np.nonzero(region.any(1))[0]
    t = np.clip((Y - rows[0] / size) / max((rows[-1] + 1 - rows[0]) / size, 1e-6), 0, 1)[..., None]
    top, bottom = _rgb(0.16, 0.38, 0.82), _rgb(0.58, 0.78, 0.97)
    img = top * (1 - t) + bottom * t + np.zeros((size, size, 1))
    clouds = _fractal(rng, size, 2.5, octaves=3, aspect=2.0)
    lo = rng.uniform(0.45, 0.62)
    c = np.clip((clouds - lo) / 0.15, 0, 1)[..., None] * rng.uniform(0.6, 0.95)
    return img * (1 - c) + _rgb(0.97, 0.97, 1.0) * c


def _grass(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Green with vertical blade streaks and fine per-pixel noise."""
    blades = 0.6 * _noise(rng, size, 6, 40) + 0.4 * _noise(rng, size, 12, 90)  # vertical streaks
    fine = rng.random((size, size))
    tint = _fractal(rng, size, 2, octaves=2)[..., None]
    base = _rgb(0.22, 0.52, 0.12) * (1 - tint) + _rgb(0.40, 0.62, 0.14) * tint
    shade = (0.62 + 0.5 * blades + 0.16 * (fine - 0.5))[..., None]
    return base * shade


def _water(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Blue-cyan with horizontal wave stripes (light crests, dark troughs)."""
    Y, _ = _grid(size)
    period = rng.uniform(4.5, 7.5) / 96
    wobble = _noise(rng, size, 3, 4) * 2 * np.pi * 0.8
    s = np.sin(2 * np.pi * Y / period + wobble)
    tint = _fractal(rng, size, 2, octaves=2)[..., None]
    base = _rgb(0.06, 0.36, 0.66) * (1 - tint) + _rgb(0.12, 0.62, 0.74) * tint
    crest = np.clip((s - 0.55) / 0.45, 0, 1)[..., None]
    img = base * (0.85 + 0.15 * s[..., None])
    return img * (1 - 0.6 * crest) + _rgb(0.75, 0.92, 0.98) * 0.6 * crest


def _sand(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Beige with dark and light speckles over a soft low-frequency variation."""
    var = _fractal(rng, size, 3, octaves=2)[..., None]
    img = _rgb(0.84, 0.73, 0.50) * (0.9 + 0.2 * var)
    r = rng.random((size, size))
    img[r < 0.07] *= 0.72
    img[r > 0.95] = img[r > 0.95] * 0.6 + 0.4
    return img


def _brick(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Red-brown bricks in offset rows with light mortar lines; each brick its own shade."""
    bh = max(4, round(size * rng.uniform(0.075, 0.11)))
    bw = 2 * bh + 1
    mortar = max(1, bh // 6)
    oy, ox = rng.integers(0, bh), rng.integers(0, bw)
    yy = np.arange(size)[:, None] + oy
    row = yy // bh
    xx = np.arange(size)[None, :] + ox + (row % 2) * (bw // 2)
    col = xx // bw
    is_mortar = ((yy % bh) < mortar) | ((xx % bw) < mortar)
    brick_id = (row * 1009 + col) % 4096
    shade = rng.uniform(0.8, 1.15, size=4096)[brick_id][..., None]
    hue = rng.uniform(0.0, 1.0, size=4096)[brick_id][..., None]
    colour = (_rgb(0.62, 0.22, 0.14) * (1 - hue) + _rgb(0.68, 0.33, 0.20) * hue) * shade
    colour = colour * (0.92 + 0.16 * rng.random((size, size, 1)))
    return np.where(is_mortar[..., None], _rgb(0.76, 0.74, 0.70), colour)


def _snow(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Near-white with faint blue shading drifts and sparse sparkle."""
    drift = _fractal(rng, size, 2.5, octaves=3, aspect=1.5)[..., None]
    img = _rgb(0.97, 0.98, 1.0) - drift * _rgb(0.22, 0.15, 0.03)
    sparkle = rng.random((size, size)) > 0.985
    img[sparkle] = 1.0
    return img


def _road(rng: np.random.Generator, size: int, region: np.ndarray) -> np.ndarray:
    """Dark grey asphalt grain with a dashed lane mark along the region's long axis."""
    grain = rng.random((size, size))[..., None]
    var = _fractal(rng, size, 3, octaves=2)[..., None]
    img = _rgb(0.25, 0.25, 0.27) * (0.85 + 0.3 * var) + 0.08 * (grain - 0.5)
    ys, xs = np.nonzero(region)
    horizontal = (xs.max() - xs.min()) >= (ys.max() - ys.min())
    centre = int(np.median(ys if horizontal else xs))
    thick = max(2, round(size * 0.03))
    dash = max(4, round(size * rng.uniform(0.09, 0.14)))
    phase = int(rng.integers(0, 2 * dash))
    lane = _rgb(0.95, 0.95, 0.92) if rng.random() < 0.6 else _rgb(0.95, 0.80, 0.15)
    along = (np.arange(size) + phase) % (2 * dash) < dash
    lo = centre - thick // 2
    if horizontal:
        img[lo : lo + thick, along] = lane
    else:
        img[along, lo : lo + thick] = lane
    return img


_TEXTURES: dict[str, Callable[[np.random.Generator, int, np.ndarray], np.ndarray]] = {
    "sky": _sky, "grass": _grass, "water": _water, "sand": _sand,
    "brick wall": _brick, "snow": _snow, "road": _road,
}


# ---------------------------------------------------------------- layout

def _split(rng: np.random.Generator, size: int) -> np.ndarray:
    """One random region: below/above a wavy slanted horizon, left/right of a wavy line, or a blob."""
    Y, X = _grid(size)
    kind = rng.choice(3, p=[0.45, 0.3, 0.25])
    if kind < 2:
        a, b = (X, Y) if kind == 0 else (Y, X)  # boundary b = f(a)
        edge = rng.uniform(0.22, 0.78) + rng.uniform(-0.6, 0.6) * (a - 0.5)  # level and slant
        for amp, freq in ((0.07, (0.5, 2.0)), (0.02, (3.0, 7.0))):  # a slow and a fast wave
            amp_, f = rng.uniform(0, amp), rng.uniform(*freq)
            edge = edge + amp_ * np.sin(2 * np.pi * f * a + rng.uniform(0, 2 * np.pi))
        side = b > edge
        return side if rng.random() < 0.5 else ~side
    cy, cx = rng.uniform(0.15, 0.85, size=2)
    r = rng.uniform(0.18, 0.4)
    theta = np.arctan2(Y - cy, X - cx)
    wobble = sum(rng.uniform(0, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    rr = r * (1 + wobble)
    return (Y - cy) ** 2 + (X - cx) ** 2 < rr**2


def _stuff_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """Region id per pixel for 1-3 stuff regions, each at least MIN_STUFF_AREA (fewer if it can't)."""
    n = int(rng.choice([1, 2, 3], p=[0.2, 0.45, 0.35]))
    while n > 1:
        for _ in range(20):
            lab = np.zeros((size, size), np.int8)
            for k in range(1, n):
                lab[_split(rng, size)] = k
            if np.bincount(lab.ravel(), minlength=n).min() >= MIN_STUFF_AREA * size * size:
                return lab
        n -= 1
    return np.zeros((size, size), np.int8)


def _polygon(Y: np.ndarray, X: np.ndarray, vy: np.ndarray, vx: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test at every (Y, X) pixel centre."""
    inside = np.zeros(np.broadcast_shapes(Y.shape, X.shape), bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(vy)):
            y1, x1, y2, x2 = vy[i - 1], vx[i - 1], vy[i], vx[i]
            inside ^= ((y1 > Y) != (y2 > Y)) & (X < (x2 - x1) * (Y - y1) / (y2 - y1) + x1)
    return inside


def _shape(kind: str, size: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Boolean pixel mask of one thing; `r` is a nominal radius, scaled so shapes have similar area."""
    Y, X = _grid(size)
    if kind == "circle":
        return (Y - cy) ** 2 + (X - cx) ** 2 <= r * r
    n, radii = {"square": (4, [1.25 * r]), "triangle": (3, [1.6 * r]), "star": (10, [1.55 * r, 0.68 * r])}[
        kind
    ]
    t = angle + np.arange(n) * 2 * np.pi / n
    rad = np.resize(np.asarray(radii), n)
    return _polygon(Y, X, cy + rad * np.sin(t), cx + rad * np.cos(t))


def _paint_thing(rng: np.random.Generator, img: np.ndarray, m: np.ndarray, colour: np.ndarray,
                 cy: float, cx: float, r: float) -> None:
    """Paint a shape with a directional shading ramp and a darker rim, exactly on mask `m`."""
    size = m.shape[0]
    Y, X = _grid(size)
    ly, lx = np.sin(a := rng.uniform(-2.6, -0.6)), np.cos(a)  # light from above, random side
    g = np.clip(((Y - cy) * ly + (X - cx) * lx) / r, -1.3, 1.3)
    shade = 1.0 + 0.2 * g
    p = np.pad(m, 1, mode="edge")  # the image border is not a rim
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    shade = np.where(m & ~interior, 0.7 * shade, shade)
    jitter = colour * rng.uniform(0.92, 1.06, size=3)
    img[m] = np.clip(jitter * shade[..., None], 0, 1)[m]


# ---------------------------------------------------------------- captions

def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


_STUFF_ARTICLE = {"sky": "the sky", "brick wall": "a brick wall", "road": "a road"}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _caption(rng: np.random.Generator, stuff: list[str], things: list[tuple[str, str]]) -> str:
    """Caption naming every stuff class and every thing instance, in shuffled order and varied wording."""
    stuff = [stuff[i] for i in rng.permutation(len(stuff))]
    things = [things[i] for i in rng.permutation(len(things))]
    with_art = [_STUFF_ARTICLE.get(s, s) for s in stuff]
    kinds = [k for _, k in things]  # a repeated shape always keeps its colour, so phrases stay distinct
    tp = [_a(f"{c} {k}") if rng.random() < 0.75 or kinds.count(k) > 1 else _a(k) for c, k in things]
    if not tp:
        t = int(rng.integers(4))
        return [f"a photo of {_join(with_art)}", _join(stuff), f"a picture of {_join(with_art)}",
                f"a scene with {_join(with_art)}"][t]
    t = int(rng.integers(6))
    return [
        f"a photo of {_join(tp)} on {_join(with_art)}",
        f"{_join(tp)} on {_join(with_art)}",
        _join(stuff + tp),
        f"a picture of {_join(with_art)} with {_join(tp)}",
        f"{_join(tp)} in front of {_join(with_art)}",
        f"a scene with {_join(with_art + tp)}",
    ][t]


# ---------------------------------------------------------------- scene

def make_scene(seed: int, size: int = 96) -> Scene:
    """Generate the scene for `seed` (deterministic), `size` x `size` pixels."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n_px, min_px = size * size, MIN_AREA * size * size
    regions = _stuff_layout(rng, size)
    n_reg = int(regions.max()) + 1
    stuff_ids = rng.choice(len(STUFF), n_reg, replace=False)
    img = np.zeros((size, size, 3))
    for k, s in enumerate(stuff_ids):
        reg = regions == k
        img[reg] = _TEXTURES[STUFF[s]](rng, size, reg)[reg]

    inst = np.full((size, size), -1, np.int16)  # thing instance per pixel; -1 = stuff
    things: list[tuple[str, str]] = []
    colours = rng.permutation(list(COLOURS))  # no two things share a colour
    for t in range(int(rng.choice(4, p=[0.15, 0.35, 0.3, 0.2]))):
        for _ in range(10):
            kind = THINGS[int(rng.integers(len(THINGS)))]
            r = rng.uniform(0.1, 0.24)
            cy, cx = rng.uniform(-0.05, 1.05, size=2)
            m = _shape(kind, size, cy, cx, r, rng.uniform(0, 2 * np.pi))
            trial = inst.copy()
            trial[m] = t
            vis = np.bincount(trial.ravel() + 1, minlength=t + 2)[1:]  # pixels per instance
            stuff_vis = np.bincount(regions[trial < 0], minlength=n_reg)
            if vis.min() >= min_px and stuff_vis.min() >= min_px:
                inst = trial
                things.append((str(colours[t]), kind))
                _paint_thing(rng, img, m, _rgb(*COLOURS[str(colours[t])]), cy, cx, r)
                break

    mask = stuff_ids.astype(np.uint8)[regions]
    for t, (_, kind) in enumerate(things):
        mask[inst == t] = CLASSES.index(kind)
    counts = np.bincount(mask.ravel(), minlength=len(CLASSES))
    present = [c for c, n in zip(CLASSES, counts) if n > 0]
    assert all(counts[CLASSES.index(c)] >= min_px for c in present) and n_px == counts.sum()
    caption = _caption(rng, [STUFF[s] for s in stuff_ids], things)
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return Scene(image=image, mask=mask, caption=caption, present=present)


class SyntheticScenes:
    """Indexable split of generated scenes; scene i of a split is `make_scene(SEED_BASE[split] + i)`.

    Train and val are disjoint by seed range (train seeds < 1_000_000 <= val seeds).
    """

    def __init__(self, split: str = "train", size: int = 96, length: int | None = None) -> None:
        if split not in SEED_BASE:
            raise ValueError(f"split must be one of {sorted(SEED_BASE)}, got {split!r}")
        self.split, self.size = split, size
        self.length = DEFAULT_LENGTH[split] if length is None else int(length)
        if split == "train" and self.length > SEED_BASE["val"]:
            raise ValueError(f"train length {self.length} would reach the val seed range")

    def seed(self, i: int) -> int:
        return SEED_BASE[self.split] + i

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Scene:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} scenes")
        return make_scene(self.seed(i), self.size)


def mask_image(mask: np.ndarray) -> Image.Image:
    """An index mask as a palette ("P") image: values stay class indices, the palette makes it viewable."""
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    flat = [v for c in PALETTE for v in c]
    flat += [0, 0, 0] * (256 - len(PALETTE))
    flat[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = [255, 255, 255]
    im.putpalette(flat)
    return im


def save_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """Save an index mask as a palette PNG (see `mask_image`)."""
    mask_image(mask).save(path, format="PNG")


def _atomic_save(im: Image.Image, path: Path) -> None:
    """An interrupted run never leaves a half file that a re-run would skip."""
    from .io import atomic_write

    atomic_write(path, lambda f: im.save(f, format="PNG"))


# A generated split is complete once `split.json` is there: it is written (atomically) after the
# last image and mask. `.writing` (the plan of a run in progress) is written before the first file
# and removed after the marker, so a run killed at any point leaves a folder known to be partial.
COMPLETE_MARKER = "split.json"
IN_PROGRESS_MARKER = ".writing"


def split_state(root: str | Path) -> str:
    """"complete", "partial" (a generation was interrupted) or "missing" (no classes.txt).

    A folder with classes.txt but neither marker was written by an earlier ovss (or by hand) and
    counts as complete, as it did then."""
    root = Path(root)
    if (root / IN_PROGRESS_MARKER).exists():
        return "partial"
    if (root / COMPLETE_MARKER).is_file() or (root / "classes.txt").is_file():
        return "complete"
    return "missing"


def read_marker(root: str | Path, name: str = COMPLETE_MARKER) -> dict | None:
    """The JSON of a marker file, or None when it is missing or unreadable."""
    import json

    try:
        return json.loads((Path(root) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_split(root: str | Path, split: str = "val", n: int = 200, size: int = 96,
                seed_offset: int | None = None, progress: bool = True) -> Path:
    """Write `n` scenes in the folder layout (classes.txt, images/, masks/); skips scenes already written.

    Names are the 8-digit seed, so reruns with other `n` extend the folder consistently. The split is
    marked complete (`split.json`) only after its last file; until then `.writing` marks it partial.
    An interrupted run is finished by the next one with the same split and size; a folder written
    with another split, size or seed offset has its generated scenes removed first (rebuilt), so
    scenes of two sizes never mix.
    """
    from tqdm import tqdm

    from .io import write_json

    root = Path(root)
    base = SEED_BASE[split] if seed_offset is None else seed_offset
    plan = {"split": split, "size": size, "seed_base": base}
    before = read_marker(root, IN_PROGRESS_MARKER) or read_marker(root, COMPLETE_MARKER)
    (root / COMPLETE_MARKER).unlink(missing_ok=True)  # from here on the folder is not complete
    root.mkdir(parents=True, exist_ok=True)
    write_json({**plan, "n": n}, root / IN_PROGRESS_MARKER)
    if before is not None and any(before.get(k) != v for k, v in plan.items()):
        _remove_scenes(root)  # another split, size or offset: rebuild rather than mix
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    classes_txt = "\n".join(CLASSES) + "\n"
    cpath = root / "classes.txt"
    if not cpath.exists() or cpath.read_text() != classes_txt:
        from .io import atomic_write

        atomic_write(cpath, lambda f: f.write(classes_txt.encode()))
    for i in tqdm(range(n), desc=f"writing {split}", disable=not progress):
        name = f"{base + i:08d}"
        ipath, mpath = root / "images" / f"{name}.png", root / "masks" / f"{name}.png"
        if ipath.exists() and mpath.exists():
            continue
        scene = make_scene(base + i, size)
        _atomic_save(Image.fromarray(scene.image), ipath)
        _atomic_save(mask_image(scene.mask), mpath)
    scenes = len(list((root / "images").glob("[0-9]" * 8 + ".png")))
    write_json({**plan, "n": n, "scenes": scenes, "complete": True}, root / COMPLETE_MARKER)
    (root / IN_PROGRESS_MARKER).unlink(missing_ok=True)
    return root


def _remove_scenes(root: Path) -> None:
    """Delete the generated scenes (8-digit names) of a split folder, nothing else."""
    for sub in ("images", "masks"):
        for p in (root / sub).glob("[0-9]" * 8 + ".png") if (root / sub).is_dir() else ():
            p.unlink()
