"""Training data: the pool of synthetic scenes, their captions and augmentations, batches."""

from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovss.core.protocol import CLIP_MEAN, CLIP_STD
from ovss.data.io import atomic_write
from ovss.data.synthetic import CLASSES, COLOURS, STUFF, THINGS, make_scene
from ovss.text.tokenizer import Tokenizer

from .options import CONTEXT, IMAGE_SIZE


def _scenes(seeds: range) -> tuple[np.ndarray, np.ndarray, list[str]]:
    imgs = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    masks = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    caps = []
    for i, s in enumerate(seeds):
        sc = make_scene(s, IMAGE_SIZE)
        imgs[i], masks[i] = sc.image, sc.mask
        caps.append(sc.caption)
    return imgs, masks, caps


def make_pool(n: int, base: int, workers: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scenes base..base+n-1 at 96 px: images (n, 96, 96, 3), masks (n, 96, 96), captions."""
    path = None
    if cache and str(cache):
        path = Path(cache) / f"pool_{base}_{n}_{IMAGE_SIZE}.npz"
        if path.is_file():
            try:
                z = np.load(path, allow_pickle=False)
                return z["images"], z["masks"], [str(c) for c in z["captions"]]
            except (OSError, ValueError, KeyError) as e:  # a damaged cache is regenerated
                print(f"pool cache {path} unreadable ({e}); regenerating", flush=True)
    chunks = [range(base + a, base + min(a + 1000, n)) for a in range(0, n, 1000)]
    if workers > 1 and n > 2000:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_scenes, chunks))
    else:
        parts = [_scenes(c) for c in chunks]
    imgs = np.concatenate([p[0] for p in parts])
    masks = np.concatenate([p[1] for p in parts])
    caps = [c for p in parts for c in p[2]]
    if path is not None:
        atomic_write(path, lambda f: np.savez(f, images=imgs, masks=masks, captions=np.array(caps)))
    return imgs, masks, caps


def normalise(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 with CLIP's mean/std on the 0-255 scale
    (exactly what `ovss.core.protocol.preprocess` does at test time)."""
    x = torch.as_tensor(images_uint8).permute(0, 3, 1, 2).float()
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


_ARTICLE = {"sky": "the sky", "brick wall": "a brick wall", "road": "a road"}  # as the generator words them
CROP_MIN_AREA = 0.02  # a class is named in a crop's caption if it covers this share of the crop


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def crop_caption(rng: np.random.Generator, present: list[str]) -> str:
    """A caption in the generator's wordings naming exactly `present` (things without colour)."""
    stuff = [present[i] for i in rng.permutation(len(present)) if present[i] in STUFF]
    things = [_a(present[i]) for i in rng.permutation(len(present)) if present[i] in THINGS]
    art = [_ARTICLE.get(x, x) for x in stuff]
    if not things or not stuff:
        named = art or things
        bare = stuff or things
        return [f"a photo of {_join(named)}", _join(bare), f"a picture of {_join(named)}",
                f"a scene with {_join(named)}"][int(rng.integers(4))]
    return [f"a photo of {_join(things)} on {_join(art)}", f"{_join(things)} on {_join(art)}",
            _join(stuff + things), f"a picture of {_join(art)} with {_join(things)}",
            f"{_join(things)} in front of {_join(art)}", f"a scene with {_join(art + things)}",
            ][int(rng.integers(6))]


def random_crops(images: torch.Tensor, masks: np.ndarray, rng: np.random.Generator, prob: float,
                 min_side: float) -> tuple[torch.Tensor, dict[int, str]]:
    """Replace each sample with probability `prob` by a random square crop resized (bilinear) back
    to 96 px; returns the float images and {row: caption} for the cropped rows."""
    x = images.float()
    caps: dict[int, str] = {}
    for i in np.nonzero(rng.random(len(images)) < prob)[0]:
        side = round(IMAGE_SIZE * rng.uniform(min_side, 1.0))
        y0, x0 = (int(v) for v in rng.integers(0, IMAGE_SIZE - side + 1, size=2))
        m = masks[i, y0 : y0 + side, x0 : x0 + side]
        counts = np.bincount(m.ravel(), minlength=len(CLASSES))
        present = [c for c, n in zip(CLASSES, counts) if n >= CROP_MIN_AREA * side * side]
        crop = x[i : i + 1, y0 : y0 + side, x0 : x0 + side].permute(0, 3, 1, 2)
        crop = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        x[i] = crop[0].permute(1, 2, 0).round().clamp(0, 255)
        caps[int(i)] = crop_caption(rng, present)
    return x, caps


_THING_PHRASE = re.compile(rf"\b(?:a|an) (?:{'|'.join(COLOURS)}) ({'|'.join(THINGS)})\b")


def drop_colours(caption: str, rng: np.random.Generator, prob: float) -> str:
    """Remove each thing's colour word with probability `prob` (the generator itself names a
    lone shape without colour 25% of the time, so these captions stay in its language)."""
    return _THING_PHRASE.sub(lambda m: f"a {m.group(1)}" if rng.random() < prob else m.group(0), caption)


def stuff_groups(masks: np.ndarray) -> list[np.ndarray]:
    """Pool indices grouped by the set of stuff classes in each scene's mask."""
    stuff_ids = np.arange(len(STUFF))
    keys: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(masks):
        present = np.zeros(256, bool)
        present[np.unique(m)] = True
        keys.setdefault(tuple(stuff_ids[present[: len(STUFF)]]), []).append(i)
    return [np.asarray(v) for _, v in sorted(keys.items())]


def sample_batch(rng: np.random.Generator, n: int, batch: int, group: int,
                 groups: list[np.ndarray] | None, group_of: np.ndarray | None) -> np.ndarray:
    """Pool indices of one batch: uniform without replacement, or `batch // group` anchors drawn
    uniformly, each with `group - 1` other scenes of the same stuff set."""
    if group <= 1 or groups is None:
        return rng.choice(n, batch, replace=False)
    out: list[int] = []
    used: set[int] = set()
    while len(out) < batch:
        a = int(rng.integers(n))
        if a in used:
            continue
        members = groups[group_of[a]]
        cand = [int(i) for i in rng.permutation(members)[: 4 * group] if int(i) not in used and i != a]
        take = [a, *cand[: min(group, batch - len(out)) - 1]]
        out.extend(take)
        used.update(take)
    return np.asarray(out)


def tokenize_all(tok: Tokenizer, captions: list[str]) -> torch.Tensor:
    """Every caption -> CLIP ids (N, 77); the tokenizer caches words, so this is quick."""
    return tok(captions, context_length=CONTEXT, truncate=False)

