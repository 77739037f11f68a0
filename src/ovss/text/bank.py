"""The text side: class lists, prompt templates and the cached query embeddings.

A class may have several synonyms; each synonym is its own query, and the decision rule takes
the max over a class's queries (as SCLIP/NACLIP do). A query's embedding is the mean of its
L2-normalised template embeddings, normalised again (CLIP's prompt ensembling).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

# The 80 prompt templates of CLIP's ImageNet zero-shot notebook (openai/CLIP), used by SCLIP,
# ClearCLIP, NACLIP and most later repos (their prompts/imagenet_template.py).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# MaskCLIP's prompt_engineering.py adds five scene templates to the 80.
MASKCLIP_SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

# The 7 templates of MLMP's prompts.yaml (CLIP's notebook's best seven); MLMP scores each on its own
# in its adaptation loss and their ensemble at readout.
MLMP_TEMPLATES: tuple[str, ...] = (
    "itap of a {}",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet80": IMAGENET_TEMPLATES,
    "maskclip85": IMAGENET_TEMPLATES + MASKCLIP_SCENE_TEMPLATES,
    "mlmp7": MLMP_TEMPLATES,
    "single": ("a photo of a {}.",),
    "plain": ("{}",),
}


def get_templates(name_or_list: str | Sequence[str]) -> tuple[str, ...]:
    """A named template set, or a user's own list (each must contain one '{}')."""
    if isinstance(name_or_list, str):
        if name_or_list not in TEMPLATE_SETS:
            raise KeyError(f"unknown template set {name_or_list!r}; choose from {sorted(TEMPLATE_SETS)}")
        return TEMPLATE_SETS[name_or_list]
    templates = tuple(name_or_list)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"templates must each contain exactly one '{{}}'; bad: {bad or '(empty list)'}")
    return templates


@dataclass(frozen=True)
class ClassSpec:
    """Classes, each with one or more synonym queries.

    names: display name per class (its first synonym).
    synonyms: the queries of each class.
    background: True when class 0 is a background class (it receives pixels under the
        probability threshold, as in the research repos' VOC21/Context60/COCO-Object files).
    """

    synonyms: tuple[tuple[str, ...], ...]
    background: bool = False

    @property
    def names(self) -> list[str]:
        return [s[0] for s in self.synonyms]

    @property
    def queries(self) -> list[str]:
        return [q for syn in self.synonyms for q in syn]

    @property
    def query_to_class(self) -> list[int]:
        return [c for c, syn in enumerate(self.synonyms) for _ in syn]

    def __len__(self) -> int:
        return len(self.synonyms)


def split_class_string(text: str) -> list[list[str]]:
    """One string -> synonym lists: classes separated by commas or new lines, synonyms by "|"."""
    items = [x for line in text.splitlines() for x in line.split(",")]
    return [[s.strip() for s in item.split("|")] for item in items if item.strip()]


def read_class_file(path: str | os.PathLike) -> list[list[str]]:
    """A research-repo class file: one class per line, synonyms separated by commas. UTF-8 (a BOM is
    dropped); a file in another encoding is a ValueError that names it."""
    from ..data.io import read_text

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class-name file not found: {p}")
    lines = [ln for ln in read_text(p, "class-name file").splitlines() if ln.strip()]
    return [[s.strip() for s in ln.split(",") if s.strip()] for ln in lines]


def parse_classes(classes: "str | os.PathLike | Sequence[str | Sequence[str]] | Mapping[str, Sequence[str]] | ClassSpec",
                  background: bool | None = None, allow_duplicates: bool = False) -> ClassSpec:
    """Accept classes in every form users have.

    - a list: items are class names; an item may itself be a list of synonyms, or a string with
      synonyms separated by "|";
    - a string: classes separated by commas (or new lines), synonyms by "|", e.g. "cat, sofa|couch";
    - a `pathlib.Path` to a class file (research-repo format: a line per class, synonyms after
      commas); a plain string is always a class list, never read as a path (a server passing
      user text through must not open files);
    - a dict: class name -> list of queries (the class name is the display name).
    `background=True` marks class 0 as background (pixels under the probability threshold go there).
    A name in two classes is an error unless `allow_duplicates` (reproducing a reference class file
    that has one; the earlier class then wins ties).
    """
    if isinstance(classes, ClassSpec):
        return classes if background is None else ClassSpec(classes.synonyms, background)
    if isinstance(classes, os.PathLike):
        groups = read_class_file(classes)
    elif isinstance(classes, str):
        groups = split_class_string(classes)
    elif isinstance(classes, Mapping):
        groups = [[str(k), *[q for q in v if q != k]] for k, v in classes.items()]
    else:
        groups = []
        for item in classes:
            if isinstance(item, str):
                groups.append([s.strip() for s in item.split("|")])
            else:
                groups.append([str(s).strip() for s in item])
    if not groups:
        raise ValueError("the class list is empty: give at least one class name")
    empty = [i for i, g in enumerate(groups) if not g or any(not s for s in g)]
    if empty:
        raise ValueError(f"empty class name at position(s) {empty}: check for stray commas or '|'")
    seen: dict[str, int] = {}
    dups = []
    for c, g in enumerate(groups):
        for s in g:
            key = s.lower()
            if key in seen and seen[key] != c:
                dups.append(s)
            seen.setdefault(key, c)
    if dups and not allow_duplicates:
        raise ValueError(f"duplicate class names {sorted(set(dups))}: each name may belong to one class only")
    return ClassSpec(tuple(tuple(dict.fromkeys(g)) for g in groups), bool(background))


# Bounds of the embedding caches: a server takes class names from anyone, and every unique name
# used to be kept forever. Memory: this many queries per bank, least recently used dropped first
# (~2-4 KiB each). Disk: this many MiB per (weights, templates) folder, least recently used files
# deleted first. Evicted queries are simply encoded again.
DEFAULT_MEMORY_ITEMS = 4096
DEFAULT_DISK_MB = 256.0


def _default_cache_dir() -> Path:
    root = os.environ.get("OVSS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(Path.home(), ".cache")), "ovss")
    return Path(root) / "text"


class TextBank:
    """Query embeddings for a CLIP model, cached on disk per (weights, templates, query).

    The cache key is the weights identity, the exact template list and the query string, so a
    query is encoded once per model and template set whatever class list it appears in. Both
    caches are bounded (`memory_items` queries, `disk_mb` MiB; None = unbounded disk), evicting
    the least recently used.
    """

    def __init__(self, model, tokenizer, weights_id: str, templates: str | Sequence[str] = "imagenet80",
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 256,
                 use_cache: bool = True, crop_context: bool = True,
                 memory_items: int = DEFAULT_MEMORY_ITEMS, disk_mb: float | None = DEFAULT_DISK_MB,
                 dtype: torch.dtype = torch.float32):
        self.model = model
        self.crop_context = crop_context  # run the text tower only up to the longest prompt
        self.tokenizer = tokenizer
        self.templates = get_templates(templates)
        self.weights_id = weights_id
        self.batch_size = batch_size
        tkey = hashlib.sha256(json.dumps(self.templates).encode()).hexdigest()[:16]
        # the text tower's precision (core.precision); a reduced one has its own cache folder, so
        # float32 and bf16 embeddings never mix (float32 keeps the folder it always had)
        self.dtype = dtype
        if dtype != torch.float32:
            tkey += "-" + str(dtype).removeprefix("torch.")
        base = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.cache_dir = base / weights_id / tkey if use_cache else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # LRU order, newest last
        self.memory_items = memory_items
        self.disk_bytes = None if disk_mb is None else int(disk_mb * 2**20)
        self._disk_used: int | None = None  # bytes under cache_dir, counted on the first store
        # Called between text batches; raising there abandons the call (a server frees a worker
        # whose request already timed out instead of encoding a huge class list to the end).
        self.interrupt: Callable[[], None] | None = None

    def _path(self, query: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(query.encode("utf-8")).hexdigest()[:32] + ".pt")

    def _remember(self, query: str, emb: torch.Tensor) -> None:
        self._memory[query] = emb
        self._memory.move_to_end(query)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _load(self, query: str) -> torch.Tensor | None:
        if query in self._memory:
            self._memory.move_to_end(query)
            return self._memory[query]
        p = self._path(query)
        if p is not None and p.is_file():
            try:
                blob = torch.load(p, map_location="cpu", weights_only=True)
                if blob.get("query") == query:
                    self._remember(query, blob["embedding"])
                    os.utime(p)  # recently used: the disk bound evicts by modification time
                    return blob["embedding"]
            except Exception:  # a damaged cache entry is recomputed, never fatal
                pass
        return None

    def _store(self, query: str, emb: torch.Tensor) -> None:
        self._remember(query, emb)
        p = self._path(query)
        if p is None:
            return
        from ..data.io import atomic_write

        existed = p.is_file()
        atomic_write(p, lambda f: torch.save({"query": query, "embedding": emb}, f))
        if self.disk_bytes is None:
            return
        if self._disk_used is None:
            self._disk_used = sum(e.stat().st_size for e in os.scandir(p.parent) if e.name.endswith(".pt"))
        elif not existed:
            self._disk_used += p.stat().st_size
        if self._disk_used > self.disk_bytes:
            self._prune_disk()

    def _prune_disk(self) -> None:
        """Delete the least recently used files until the folder is under 90 % of its bound."""
        assert self.cache_dir is not None and self.disk_bytes is not None
        files = []
        for e in os.scandir(self.cache_dir):
            if e.name.endswith(".pt"):
                with contextlib.suppress(OSError):
                    st = e.stat()
                    files.append((st.st_mtime_ns, st.st_size, e.path))
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= 0.9 * self.disk_bytes:
                break
            with contextlib.suppress(OSError):  # another process may have removed it already
                os.unlink(path)
            total -= size
        self._disk_used = total

    @torch.no_grad()
    def encode_queries(self, queries: Iterable[str]) -> torch.Tensor:
        """Queries -> (Q, C) float32 L2-normalised embeddings on CPU."""
        queries = list(queries)
        found: dict[str, torch.Tensor] = {}  # not read back from the bounded cache: it may evict
        todo = []
        for q in dict.fromkeys(queries):
            emb = self._load(q)
            if emb is None:
                todo.append(q)
            else:
                found[q] = emb
        if todo:
            found.update(self._encode(todo))
        return torch.stack([found[q] for q in queries])

    def _encode(self, queries: list[str]) -> dict[str, torch.Tensor]:
        """Encode in batches of prompts; each query is stored as soon as all its templates are
        encoded, so an interrupted call (see `interrupt`) keeps what it finished for a retry."""
        prompts = [t.format(q) for q in queries for t in self.templates]
        device = next(self.model.parameters()).device
        n_templates = len(self.templates)
        out: dict[str, torch.Tensor] = {}
        rows = torch.empty(0)  # template features of the queries not finished yet
        for i in range(0, len(prompts), self.batch_size):
            if self.interrupt is not None:
                self.interrupt()
            tokens = self.tokenizer(prompts[i : i + self.batch_size]).to(device)
            if self.dtype == torch.float32:
                feats = self.model.encode_text(tokens, crop=self.crop_context)
            else:
                with torch.autocast(device_type=device.type, dtype=self.dtype):
                    feats = self.model.encode_text(tokens, crop=self.crop_context)
            feats = F.normalize(feats.float(), dim=-1).cpu()
            rows = torch.cat([rows, feats]) if rows.numel() else feats
            n = rows.shape[0] // n_templates
            if n:
                emb = F.normalize(rows[: n * n_templates].view(n, n_templates, -1).mean(dim=1), dim=-1)
                for q, e in zip(queries[len(out) : len(out) + n], emb):
                    out[q] = e.clone()
                    self._store(q, out[q])
                rows = rows[n * n_templates :]
        return out

    def encode(self, spec: ClassSpec) -> torch.Tensor:
        """(Q, C) embeddings of every query of a class spec, in `spec.queries` order."""
        return self.encode_queries(spec.queries)
