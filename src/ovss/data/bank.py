"""FreeDA's prototype bank: text-space keys, visual prototypes and the nearest-neighbour search.

FreeDA (Barsellotti et al., CVPR 2024) segments with a bank of (key, prototype) pairs made
offline: the paper generates images from COCO captions with Stable Diffusion, binarises the
cross-attention map of each noun, pools DINOv2 features in that mask (the prototype) and keys it
by a CLIP text embedding of the noun in its caption. That generation code is not released
(aimagelab/freeda has only the evaluation code and the finished bank: `faiss_index/knn.index` and
`prototype_embeddings/*.npy`, Google-Drive links in its README). ovss reads that released bank
as it is, and `ovss build-bank` makes one in its own format from any folder of images with masks
(real photos or generated ones: the recipe's data source is up to the user; ovss does not fake
the diffusion stage).

Two layouts are read:

* ovss's (`build-bank`): a folder with `bank.json` (format, metric, models, counts) and
  `bank.safetensors` (`keys` (N, Dk) float32, `prototypes` (N, Dv) float32), optionally
  `knn.index` (a FAISS index over the keys, written when faiss-cpu is installed);
* the released one: a folder with `faiss_index/knn.index` and `prototype_embeddings/` (one
  `.npy` prototype per entry, entry i = the i-th file name in sorted order, as
  `models/freeda/freeda.py:222` lists them), or the `knn.index` file itself with
  `prototype_embeddings/` next to it or one level up.

Search (`PrototypeBank.search`): the FAISS index when there is one and faiss-cpu is installed
(HNSW's efSearch set to `ef_search`, as `freeda.py:294-297`), else the exact torch search
(`ops.knn`), which returns the same neighbours as a flat index. The released bank has its keys
only inside the FAISS index, so it needs faiss-cpu.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ops.knn import knn_search

__all__ = ["BANK_FORMAT", "PrototypeBank", "build_bank", "load_bank", "save_bank"]

BANK_FORMAT = "ovss-freeda-bank"


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@dataclass
class PrototypeBank:
    """keys (N, Dk) or None (released bank: inside `index`); prototypes (N, Dv) tensor, or the
    sorted `.npy` paths they are read from on demand; index: a FAISS index or None."""

    keys: torch.Tensor | None
    prototypes: torch.Tensor | list[Path]
    metric: str = "ip"
    index: Any = None
    meta: dict = field(default_factory=dict)
    path: str = ""

    def __len__(self) -> int:
        return len(self.prototypes)

    def search(self, queries: torch.Tensor, k: int, backend: str = "auto",
               ef_search: int = 50000) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, Dk) queries -> (scores, indices) of the k nearest keys, best first.
        backend: "auto" (FAISS if the bank has an index and faiss is installed, else torch),
        "faiss" or "torch"."""
        faiss = _faiss() if backend != "torch" else None
        if backend == "faiss" and (faiss is None or self.index is None):
            raise ImportError("backend='faiss' needs faiss-cpu (pip install 'ovss[freeda]') and a bank with knn.index")
        if faiss is not None and self.index is not None:
            if "HNSW" in type(self.index).__name__:
                faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", ef_search)
            s, i = self.index.search(np.ascontiguousarray(queries.detach().cpu().float().numpy()), k)
            return torch.from_numpy(s), torch.from_numpy(i).long()
        if self.keys is None:
            raise ImportError(f"the bank at {self.path} keeps its keys only in a FAISS index: "
                              "pip install faiss-cpu (or 'ovss[freeda]')")
        s, i = knn_search(queries.cpu(), self.keys, k, self.metric)
        return s, i

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """Prototypes of the given entries, (n, Dv) float32 numpy."""
        if isinstance(self.prototypes, torch.Tensor):
            return self.prototypes[torch.as_tensor(list(indices), dtype=torch.long)].numpy()
        return np.stack([np.load(self.prototypes[j]) for j in indices])

    def class_prototypes(self, queries: torch.Tensor, k: int, backend: str = "auto",
                         ef_search: int = 50000) -> torch.Tensor:
        """(C, Dk) text embeddings -> (C, 1, Dv) prototypes: the mean of each class's k retrieved
        prototypes (`freeda.py:299-331` with `prototype_mean: true`): a -1 index ends the list,
        non-finite prototypes are dropped, the mean is numpy's float32 mean over the rest."""
        _, idx = self.search(queries, k, backend, ef_search)
        out = []
        for row in idx.tolist():
            keep = []
            for j in row:
                if j == -1:
                    break
                keep.append(j)
            protos = self.rows(keep) if keep else np.zeros((0, self.dim), np.float32)
            protos = protos[np.isfinite(protos).reshape(len(protos), -1).all(1)]
            if not len(protos):
                raise ValueError("a class retrieved no finite prototype from the bank")
            out.append(protos.mean(axis=0)[None])
        return torch.from_numpy(np.stack(out))

    @property
    def dim(self) -> int:
        if isinstance(self.prototypes, torch.Tensor):
            return self.prototypes.shape[1]
        return int(np.load(self.prototypes[0]).shape[-1])


def save_bank(path: str | os.PathLike, keys: torch.Tensor, prototypes: torch.Tensor,
              meta: dict | None = None, metric: str = "ip", write_index: bool = True) -> Path:
    """Write the ovss layout (see the module docstring); with faiss installed also `knn.index`
    (a flat index of the metric)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    keys = keys.float().contiguous()
    prototypes = prototypes.float().contiguous()
    if keys.shape[0] != prototypes.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys but {prototypes.shape[0]} prototypes")
    tmp = path / "bank.safetensors.tmp"
    save_file({"keys": keys, "prototypes": prototypes}, str(tmp))
    os.replace(tmp, path / "bank.safetensors")
    info = {"format": BANK_FORMAT, "version": 1, "metric": metric, "count": int(keys.shape[0]),
            "key_dim": int(keys.shape[1]), "proto_dim": int(prototypes.shape[1])} | (meta or {})
    (path / "bank.json").write_text(json.dumps(info, indent=1) + "\n")
    faiss = _faiss()
    if write_index and faiss is not None:
        index = faiss.IndexFlatIP(keys.shape[1]) if metric == "ip" else faiss.IndexFlatL2(keys.shape[1])
        index.add(keys.numpy())
        faiss.write_index(index, str(path / "knn.index"))
    return path


_BANKS: dict[tuple[str, int], PrototypeBank] = {}


def load_bank(path: str | os.PathLike, cache: bool = True) -> PrototypeBank:
    """Read a bank in either layout (see the module docstring); loaded once per path and
    modification time (a bank rebuilt in place is read again)."""
    p = Path(path)
    stamp = max((f.stat().st_mtime_ns for f in (p / "bank.safetensors", p / "knn.index", p / "faiss_index" / "knn.index", p)
                 if f.exists()), default=0)
    key = (os.path.abspath(os.fspath(path)), stamp)
    if cache and key in _BANKS:
        return _BANKS[key]
    if not p.exists():
        raise FileNotFoundError(f"no prototype bank at {p} (make one with `ovss build-bank`)")
    faiss = _faiss()
    if (p / "bank.safetensors").exists():
        from safetensors.torch import load_file

        t = load_file(str(p / "bank.safetensors"))
        meta = json.loads((p / "bank.json").read_text()) if (p / "bank.json").exists() else {}
        index = faiss.read_index(str(p / "knn.index")) if faiss is not None and (p / "knn.index").exists() else None
        bank = PrototypeBank(t["keys"], t["prototypes"], meta.get("metric", "ip"), index, meta, str(p))
    else:
        index_file = p if p.is_file() else p / "faiss_index" / "knn.index"
        protos = None
        for d in (index_file.parent / "prototype_embeddings", index_file.parent.parent / "prototype_embeddings",
                  p / "prototype_embeddings"):
            if d.is_dir():
                protos = d
                break
        if protos is None or not index_file.exists():
            raise FileNotFoundError(f"{p} is neither an ovss bank (bank.safetensors) nor the released FreeDA "
                                    "layout (faiss_index/knn.index + prototype_embeddings/)")
        if faiss is None:
            raise ImportError("the released FreeDA bank keeps its keys in a FAISS index: pip install faiss-cpu")
        index = faiss.read_index(str(index_file))
        metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        files = [protos / n for n in sorted(os.listdir(protos))]
        bank = PrototypeBank(None, files, metric, index, {"format": "freeda-release"}, str(p))
    if cache:
        _BANKS[key] = bank
    return bank


# ---------------------------------------------------------------------------------------------
# Building


def mask_pool(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(C, h, w) features, (H, W) bool mask -> (C,) the mean of the features weighted by the mask
    bilinearly downsampled to (h, w) (align_corners=True): the pooling FreeDA's region step uses
    (`freeda.py:482-487`), so bank prototypes and test-time regions are pooled alike."""
    w = torch.nn.functional.interpolate(mask[None, None].float(), feats.shape[-2:], mode="bilinear",
                                        align_corners=True)[0, 0]
    return (w[None] * feats).sum((1, 2)) / (w.sum() + torch.finfo(torch.float32).eps)


def build_bank(folder: str | os.PathLike, out: str | os.PathLike, text_keys: Callable[[list[str]], torch.Tensor],
               dino_features: Callable[[np.ndarray], torch.Tensor], meta: dict | None = None,
               min_pixels: int = 16, progress: bool = True) -> Path:
    """Make a bank from a folder of images with index masks (`data.folder` layout: classes.txt,
    images/, masks/): one entry per (image, class present in its mask); the prototype is the
    image's dense features (`dino_features`: HxWx3 uint8 -> (C, h, w)) pooled in the class's mask
    (`mask_pool`), the key the class's text embedding (`text_keys`: names -> (n, Dk) unit rows; a
    class's first name). Resumable: each image's entries go to `out/parts/<name>.safetensors` as
    it is done, and a re-run with the same settings skips images with a part (other settings are
    an error), then joins all parts into the bank."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from .folder import FolderDataset

    ds = FolderDataset(folder)
    out = Path(out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    names = [c[0] for c in ds.classes]
    # parts from another run's settings must not be mixed in: the settings are kept beside them
    settings = json.dumps({"classes": names, "min_pixels": min_pixels} | (meta or {}), sort_keys=True)
    sfile = parts / "settings.json"
    if sfile.exists() and sfile.read_text() != settings:
        raise ValueError(f"{out} holds parts built with other settings ({sfile}); use a new --out "
                         "or delete that folder")
    sfile.write_text(settings)
    keys_all = text_keys(names).float().cpu()
    for i in tqdm(range(len(ds)), desc="build-bank", disable=not progress):
        name = ds[i][0]
        part = parts / f"{name}.safetensors"
        if part.exists():
            continue
        image, mask = ds.load_image(i), torch.from_numpy(ds.load_mask(i).astype(np.int64))
        feats = dino_features(image).float().cpu()
        labels, protos = [], []
        for c in torch.unique(mask).tolist():
            if c >= len(names) or int((mask == c).sum()) < min_pixels:
                continue  # 255 = ignore; tiny slivers carry no prototype
            labels.append(c)
            protos.append(mask_pool(feats, mask == c))
        t = {"labels": torch.tensor(labels, dtype=torch.long),
             "prototypes": torch.stack(protos) if protos else torch.zeros(0, feats.shape[0])}
        tmp = part.with_suffix(".tmp")
        save_file(t, str(tmp))
        os.replace(tmp, part)
    labels, protos = [], []
    for i in range(len(ds)):
        t = load_file(str(parts / f"{ds[i][0]}.safetensors"))
        labels.append(t["labels"])
        protos.append(t["prototypes"])
    labels_t = torch.cat(labels)
    if not len(labels_t):
        raise ValueError(f"no class region of at least {min_pixels} pixels in {folder}")
    info = {"classes": names, "labels": labels_t.tolist(), "source": os.fspath(folder)} | (meta or {})
    return save_bank(out, keys_all[labels_t], torch.cat(protos), info)
