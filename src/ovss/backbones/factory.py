"""Build a ready CLIP from a backbone name and/or a weights source, with errors that say what to do.

    loaded = create_clip("clip-vit-b16")                       # registered weights (hub / cache)
    loaded = create_clip("clip-vit-b16", weights="ViT-B-16.pt")  # own file, architecture checked
    loaded = create_clip("/models/my-clip")                     # any format; architecture inferred

Weights in any supported format are converted to the canonical layout (`convert.py`) and loaded
with `strict=True`: a checkpoint that does not fill the model exactly is an error, never a
silently half-random model.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .clip import CLIP
from .configs import ARCHS, ClipCfg, infer_clip_config
from .convert import (
    PickleRefusedError,
    WeightsCorruptError,
    read_state,
    to_canonical,
)
from .hub import WeightsNotFoundError, resolve_weights
from .pretrained import PretrainedCfg, resolve_name
from .zoo import get_pretrained, unknown_backbone_message

__all__ = [
    "LoadedClip",
    "PickleRefusedError",
    "WeightsCorruptError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "create_clip",
    "weights_identity",
]

_FULL_HASH_LIMIT = 64 * 2**20  # files below this are hashed whole
_EDGE = 2**20  # bytes hashed at each end of larger files
_PATH_PREFIXES = ("hf-hub:", "local-dir:")
_CHECKPOINT_EXT = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")


class WeightsMismatchError(ValueError):
    """Weights whose keys or shapes do not fit the architecture they are loaded into."""


@dataclass
class LoadedClip:
    """A CLIP ready for inference plus what downstream caches and tokenizers need.

    tokenizer_dir: the folder holding the vocabulary that came with the weights (vocab.json +
        merges.txt, or a *.txt.gz merges file), for `Tokenizer.from_dir`; None when there is none.
    weights_id: short stable identity of the weight bytes (see `weights_identity`), for caches.
    """

    model: CLIP
    tokenizer_dir: Path | None
    pretrained: PretrainedCfg | None
    weights_id: str
    weights_path: Path | None = None
    format: str = ""


# ----------------------------------------------------------------------------------------------
# Identity of weight files


def _file_identity(path: Path) -> str:
    """sha256 of the file's bytes (files < 64 MiB), else of (size, first MiB, last MiB).

    Large files use the partial hash so that opening a 1.7 GB checkpoint does not cost a full
    read; it still changes with any re-save (sizes, headers and tail differ). Files in the
    Hugging Face cache are symlinks to `blobs/<sha256>` for LFS files: that name *is* the sha256 of
    the whole file, so hub files get the full hash for free and match a hashed local copy.
    """
    size = path.stat().st_size
    if size < _FULL_HASH_LIMIT:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()[:16]
    real = path.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return "sha256:" + real.name[:16]
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        f.seek(max(size - _EDGE, 0))
        h.update(f.read(_EDGE))
    return "sha256p:" + h.hexdigest()[:16]


def weights_identity(files: list[str | Path]) -> str:
    """Identity of one weights file, or of a sharded set (hash of the shards' identities)."""
    ids = [_file_identity(Path(f)) for f in files]
    if len(ids) == 1:
        return ids[0]
    return "shards:" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Architecture checks


_SIZE_BY_WIDTH = {768: "B", 1024: "L", 1280: "H", 1408: "g", 1664: "bigG", 512: "M", 384: "S"}


def _describe(cfg: ClipCfg) -> str:
    v = cfg.vision
    name = f"ViT-{_SIZE_BY_WIDTH.get(v.width, '?')}/{v.patch_size}"
    return (f"{name} (width {v.width}, {v.layers} blocks, {v.image_size}px; "
            f"text width {cfg.text.width}, {cfg.text.layers} blocks)")


def _describe_state(state: dict[str, torch.Tensor]) -> str:
    try:
        return _describe(infer_clip_config(state)) + "-shaped"
    except (KeyError, ValueError, IndexError, ZeroDivisionError):
        return "not CLIP-ViT-shaped (no readable visual.conv1 / positional embedding / blocks)"


def _head(items: list[str], n: int = 10) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _check_fit(model: CLIP, state: dict[str, torch.Tensor], source: str, expected: str) -> None:
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    )
    if not (missing or unexpected or shapes):
        return
    lines = [(f"weights from {source} do not fit {expected}: checkpoint is {_describe_state(state)} "
              f"but the model is {_describe(model.cfg)}.")]
    if missing:
        lines.append(f"missing keys ({len(missing)}): {_head(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {_head(unexpected)}")
    if shapes:
        lines.append(f"shape mismatches ({len(shapes)}): {_head(shapes)}")
    raise WeightsMismatchError("\n".join(lines))


# ----------------------------------------------------------------------------------------------


def _looks_like_path(s: str) -> bool:
    return (s.startswith(_PATH_PREFIXES) or s.startswith((".", "~", os.sep, "/"))
            or s.lower().endswith(_CHECKPOINT_EXT) or Path(s).expanduser().exists())


def _tokenizer_dir(weights: Path) -> Path | None:
    folder = weights if weights.is_dir() else weights.parent
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    if any(folder.glob("*.txt.gz")):
        return folder
    return None


def _towers_cfg(cfg: ClipCfg, act: str | None, text_act: str | None, ln_eps: float | None,
                heads: dict | None) -> ClipCfg:
    v, t = cfg.vision, cfg.text
    if act:
        v, t = replace(v, act=act), replace(t, act=text_act or act)
    if ln_eps:
        v, t = replace(v, ln_eps=ln_eps), replace(t, ln_eps=ln_eps)
    if heads:
        v = replace(v, heads=heads.get("vision", v.heads))
        t = replace(t, heads=heads.get("text", t.heads))
    return ClipCfg(v, t)


def create_clip(backbone: str = "clip-vit-b16", weights: str | Path | None = None,
                device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                act: str | None = None, pos_resize: str = "scale_factor",
                trust_pickle: bool = False) -> LoadedClip:
    """Load a CLIP model in eval mode, float32, on `device`.

    Args:
        backbone: a registered name or alias (`list_backbones()`), or a weights source (file,
            folder, `local-dir:`, `hf-hub:`) whose architecture is then read off the weights.
        weights: where the weights come from instead of the registry (file or folder in any
            format, `hf-hub:` spec); the registered architecture is still enforced.
        cache_dir: hub cache instead of HF_HUB_CACHE / HF_HOME.
        act: force the activation ("quick_gelu" / "gelu"); by default the weights' own config
            decides, then the registry entry, then quick_gelu (OpenAI).
        pos_resize: positional-embedding resize rule (see pos_embed.resize_pos_embed).
        trust_pickle: allow pickles with arbitrary objects (runs their code: trusted files only).
    Raises:
        KeyError: unknown backbone name (close matches and all valid names in the message).
        FileNotFoundError / WeightsNotFoundError: local path missing / hub weights unavailable.
        WeightsCorruptError, PickleRefusedError, WeightsMismatchError: see their docstrings.
    """
    backbone = os.fspath(backbone)
    key = resolve_name(backbone)
    pre = get_pretrained(key) if key is not None else None
    if pre is None and not _looks_like_path(backbone):
        raise KeyError(unknown_backbone_message(backbone, "clip"))
    if pre is None and weights is not None:
        raise ValueError(f"backbone {backbone!r} is already a weights source; pass weights=None, or name a "
                         "registered backbone to check `weights` against its architecture")
    if pre is not None:
        source = weights if weights is not None else pre
    else:
        source = weights if weights is not None else backbone
    path = resolve_weights(source, cache_dir=cache_dir)
    state, meta = read_state(path, trust_pickle=trust_pickle)
    src = meta.get("path", str(path))
    try:
        fmt = meta["format"]
        state = to_canonical(state, fmt)
    except ValueError as e:
        raise WeightsMismatchError(f"weights from {src}: {e}") from e

    if pre is not None:
        base = ARCHS[pre.arch] if pre.arch in ARCHS else infer_clip_config(state)  # shipped models
        expected = f"{pre.name} ({pre.arch})"
    else:
        try:
            base = infer_clip_config(state)
        except (KeyError, ValueError, IndexError) as e:
            raise WeightsMismatchError(
                f"weights from {src} are {_describe_state(state)}; cannot infer a CLIP architecture "
                f"({type(e).__name__}: {e}). Keys: {_head(sorted(state))}"
            ) from e
        expected = "the architecture inferred from them"
    act_used = act or meta.get("act") or (pre.act if pre else None) or base.vision.act or "quick_gelu"
    text_act = None if act else meta.get("text_act")
    cfg = _towers_cfg(base, act_used, text_act, meta.get("ln_eps"), None if pre else meta.get("heads"))

    model = CLIP(cfg, pos_resize=pos_resize)
    _check_fit(model, state, src, expected)
    model.load_state_dict(state, strict=True)
    model = model.float().eval().to(device)
    files = meta.get("files", [src])
    return LoadedClip(
        model=model,
        tokenizer_dir=_tokenizer_dir(Path(src)),
        pretrained=pre,
        weights_id=weights_identity(files),
        weights_path=Path(src),
        format=fmt,
    )

