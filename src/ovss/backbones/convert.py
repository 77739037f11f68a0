"""Checkpoint readers and key-layout filters: every CLIP weight format -> the canonical layout.

The canonical layout is `ovss.backbones.clip.CLIP`'s state dict: OpenAI key names, image tower
under `visual.`, text tower under `text.`, plus `logit_scale`. Users hold CLIP weights in many
shapes (OpenAI TorchScript archives, OpenCLIP files and hub folders, Hugging Face `transformers`
folders, training checkpoints wrapped in `state_dict` / `module.`), so reading and converting is
split in two steps that can be tested separately:

    state, meta = read_state(path)          # raw tensors + what the files say (activation, ...)
    canonical = to_canonical(state, meta["format"])

`load_canonical(path)` does both. Nothing here builds a model or touches the network.

Safety: weights are read as data only. Pickled checkpoints are read with
`torch.load(weights_only=True)`, which only rebuilds tensors and plain containers; a file that
needs anything else is refused (`PickleRefusedError`) unless the caller passes `trust_pickle=True`.
TorchScript archives (OpenAI's `.pt`) are never given to `torch.jit.load`, which would run their
code: `ovss.backbones.torchscript` reads their tensor records (`UnsafeWeightsError` when that is
not enough). Every file, in every format, is then refused if a floating tensor holds NaN or Inf
(`NonFiniteWeightsError`).
"""

from __future__ import annotations

import json
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import NonFiniteWeightsError, PickleRefusedError, UnsafeWeightsError, WeightsCorruptError

__all__ = [
    "FORMATS",
    "NonFiniteWeightsError",
    "PickleRefusedError",
    "UnsafeWeightsError",
    "WeightsCorruptError",
    "detect_format",
    "find_weights_file",
    "load_canonical",
    "parse_hf_config",
    "parse_open_clip_config",
    "read_folder",
    "read_state",
    "to_canonical",
]

FORMATS = ("ovss", "openai", "open_clip", "hf")

# Weight files inside a model folder, best first: safetensors before pickles; OpenCLIP's own files
# before HF's (a LAION hub snapshot can hold both; OpenCLIP's are the native layout).
# "open_clip_pytorch_model.safetensors" is the name SFconvertbot gave some LAION repos (ViT-g-14).
FOLDER_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "model.safetensors.index.json",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
HF_CONFIG = "config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"

# Non-weight entries some formats carry: OpenAI's archives hold these ints as tensors; the causal
# mask and HF's position ids are buffers that the model rebuilds itself.
_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
_DROP_SUFFIXES = ("attn_mask", "position_ids")
# Top-level OpenAI/OpenCLIP keys that belong to the text tower (moved under `text.`).
_TEXT_TOP = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Wrappers around a state dict in training checkpoints, tried in order ("teacher": DINO full checkpoints).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema", "teacher")
# Key prefixes added by DDP (`module.`), torch.compile (`_orig_mod.`) and some trainers (`model.`).
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


# ----------------------------------------------------------------------------------------------
# Reading files


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with `code/` and `constants.pkl`; torch.save zips have neither."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _looks_like_safetensors(path: Path) -> bool:
    """Safetensors files start with a little-endian u64 header size, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        state = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            file_meta = f.metadata() or {}
            for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
                state[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsCorruptError(f"{path}: not a readable safetensors file ({e})") from e
    return state, {"safetensors_metadata": dict(file_meta)}


def _pickle_bytes(path: Path) -> bytes | None:
    """The main pickle stream of a torch.save file (zip: `*/data.pkl`; legacy: the file itself)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                return zf.read(name) if name else None
        return path.read_bytes()
    except (zipfile.BadZipFile, OSError, KeyError):
        return None


def _pickle_globals(data: bytes) -> list[str] | None:
    """Opcode-level scan (nothing is executed): the globals a pickle references, or None when the
    bytes are not a well-formed pickle."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]))
            if op.name == "STOP":
                return found
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return None
    return None


_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                         "numpy.", "_codecs.encode", "builtins.slice")


def _classify_weights_only_failure(path: Path, err: Exception) -> Exception:
    """Tell 'pickle of arbitrary objects' (refuse) from 'garbage bytes' (corrupt)."""
    msg = str(err)
    if "Unsupported global" in msg or "not an allowed global" in msg:
        start = msg.find("GLOBAL ")
        what = msg[start + 7:].split(" ")[0] if start >= 0 else "a Python object"
        return _refusal(path, what)
    data = _pickle_bytes(path)
    names = _pickle_globals(data) if data is not None else None
    if names is None:
        return WeightsCorruptError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated or not a checkpoint): "
            f"{_first_line(err)}"
        )
    unsafe = [n for n in names if not n.startswith(_SAFE_GLOBAL_PREFIXES)]
    return _refusal(path, unsafe[0] if unsafe else "objects outside torch's weights-only allow-list")


def _refusal(path: Path, what: str) -> PickleRefusedError:
    return PickleRefusedError(
        f"{path} holds pickled Python objects ({what}), not just tensors; loading it would run "
        "arbitrary code, so ovss refuses it. If you trust where the file came from, pass "
        "trust_pickle=True (or convert it once to .safetensors)."
    )


def _first_line(err: Exception) -> str:
    s = str(err).strip().splitlines()
    return s[0] if s else type(err).__name__


def _read_torch(path: Path, trust_pickle: bool) -> tuple[Any, dict]:
    if _is_torchscript(path):
        # OpenAI's released `.pt` files are TorchScript archives. torch.jit.load would compile their
        # code and run any __setstate__ in them; the restricted reader only copies tensor records.
        from .torchscript import read_torchscript

        return read_torchscript(path), {"torchscript": True}
    try:
        with warnings.catch_warnings():
            # Plain pickles (protocol > 2) make torch warn before it refuses them; the error says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:
        import pickle

        if isinstance(e, pickle.UnpicklingError) and not trust_pickle:
            raise _classify_weights_only_failure(path, e) from e
        raise WeightsCorruptError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {_first_line(e)}"
        ) from e
    return obj, {}


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict]:
    """Find the tensor dict inside a checkpoint, strip wrapper prefixes, set aside non-tensors."""
    extra: dict[str, Any] = {}
    if isinstance(obj, torch.nn.Module):  # only reachable with trust_pickle=True
        obj = obj.state_dict()
    for _ in range(3):  # {"state_dict": {"model": {...}}} nests at most a couple of levels
        if not isinstance(obj, dict):
            break
        inner = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            break
        extra.update({k: v for k, v in obj.items() if k != inner and not isinstance(v, (dict, Tensor))})
        obj = obj[inner]
    if not isinstance(obj, dict):
        raise WeightsCorruptError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    extra.update({str(k): v for k, v in obj.items() if not isinstance(v, (Tensor, dict))})
    if not state:
        raise WeightsCorruptError(f"{path}: holds no tensors (keys: {list(obj)[:10]})")
    for prefix in _STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, extra


def _read_index(path: Path, trust_pickle: bool) -> tuple[dict[str, Tensor], dict]:
    """HF sharded checkpoints: an index json maps each key to its shard file."""
    try:
        index = json.loads(path.read_text())
        shards = sorted(set(index["weight_map"].values()))
    except (ValueError, KeyError, OSError) as e:
        raise WeightsCorruptError(f"{path}: not a valid sharded-checkpoint index ({e})") from e
    state: dict[str, Tensor] = {}
    files = []
    for shard in shards:
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"{shard_path} (a shard listed in {path}) does not exist")
        s, _ = _read_file(shard_path, trust_pickle)
        state.update(s)
        files.append(str(shard_path))
    return state, {"files": files}


def _read_file(path: Path, trust_pickle: bool) -> tuple[dict[str, Tensor], dict]:
    if path.name.endswith(".index.json"):
        return _read_index(path, trust_pickle)
    if path.stat().st_size == 0:
        raise WeightsCorruptError(f"{path}: empty file")
    if path.suffix == ".safetensors" or (not zipfile.is_zipfile(path) and _looks_like_safetensors(path)):
        state, meta = _read_safetensors(path)
    else:
        obj, meta = _read_torch(path, trust_pickle)
        state, extra = _unwrap(obj, path)
        if extra:
            meta["extra"] = extra
    _refuse_non_finite(state, path)  # every file of every format (shards included) passes here
    return state, meta


def _refuse_non_finite(state: dict[str, Tensor], path: Path) -> None:
    """NaN/Inf weights only ever come from a broken or diverged checkpoint; they would silently turn
    every prediction into NaN, so the file is refused with the first such tensor named. Entries the
    converters drop (causal `attn_mask` buffers legitimately hold -inf) are not weights."""
    for key, value in state.items():
        if not (value.is_floating_point() or value.is_complex()) or key.endswith(_DROP_SUFFIXES):
            continue
        real = torch.view_as_real(value) if value.is_complex() else value
        finite = _elementwise(torch.isfinite, real)
        if bool(finite.all()):
            continue
        n_bad = int(finite.numel() - finite.sum())
        n_nan = int(_elementwise(torch.isnan, real).sum())
        kinds = " and ".join(k for k, n in (("NaN", n_nan), ("Inf", n_bad - n_nan)) if n)
        raise NonFiniteWeightsError(
            f"{path}: tensor {key!r} {tuple(value.shape)} holds {kinds} values ({n_bad} of "
            f"{real.numel()}); non-finite weights come from a broken or diverged checkpoint, so ovss "
            "refuses them"
        )


def _elementwise(fn: Any, t: Tensor) -> Tensor:
    """`fn(t)`, through float32 for dtypes without a CPU kernel (float8)."""
    try:
        return fn(t)
    except (RuntimeError, NotImplementedError):
        return fn(t.float())


# ----------------------------------------------------------------------------------------------
# Configs shipped next to weights (they say which activation the weights were trained with)


def parse_hf_config(cfg: dict) -> dict:
    """Activation, LayerNorm eps and head counts from a transformers `CLIPModel` config.json.

    transformers' CLIP configs default to quick_gelu (OpenAI); LAION's HF exports say "gelu".
    """
    out: dict[str, Any] = {"config": cfg}
    v = cfg.get("vision_config") or cfg.get("vision_config_dict") or {}
    t = cfg.get("text_config") or cfg.get("text_config_dict") or {}
    v_act, t_act = v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")
    out["act"] = v_act
    if t_act != v_act:
        out["text_act"] = t_act
    out["ln_eps"] = float(v.get("layer_norm_eps", 1e-5))
    heads = {}
    if "num_attention_heads" in v:
        heads["vision"] = int(v["num_attention_heads"])
    if "num_attention_heads" in t:
        heads["text"] = int(t["num_attention_heads"])
    out["heads"] = heads
    return out


def parse_open_clip_config(cfg: dict) -> dict:
    """Activation and head counts from OpenCLIP's open_clip_config.json.

    OpenCLIP models use exact GELU unless `model_cfg.quick_gelu` is true (OpenAI-trained weights).
    """
    model_cfg = cfg.get("model_cfg", cfg)
    out: dict[str, Any] = {"config": cfg}
    out["act"] = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    out["ln_eps"] = 1e-5
    v, t = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    heads = {}
    if "width" in v:
        heads["vision"] = int(v.get("heads") or v["width"] // v.get("head_width", 64))
    if "heads" in t:
        heads["text"] = int(t["heads"])
    out["heads"] = heads
    pre = cfg.get("preprocess_cfg") or {}
    if "mean" in pre and "std" in pre:
        out["mean"], out["std"] = tuple(pre["mean"]), tuple(pre["std"])
    unsupported = [k for k in ("hf_model_name", "timm_model_name") if v.get(k) or t.get(k)]
    if unsupported:
        out["unsupported"] = unsupported
    return out


def _sibling_config(weights: Path) -> dict:
    """Config next to a weights file: OpenCLIP's for open_clip_* files, HF's config.json otherwise."""
    folder = weights.parent
    oc, hf = folder / OPEN_CLIP_CONFIG, folder / HF_CONFIG
    order = (oc, hf) if weights.name.startswith("open_clip") else (hf, oc)
    for cfg_path in order:
        if not cfg_path.is_file():
            continue
        try:
            cfg = json.loads(cfg_path.read_text())
        except (ValueError, OSError):
            continue
        if cfg_path.name == OPEN_CLIP_CONFIG:
            return {**parse_open_clip_config(cfg), "config_file": str(cfg_path)}
        if cfg.get("model_type") == "clip" or "CLIPModel" in (cfg.get("architectures") or []):
            return {**parse_hf_config(cfg), "config_file": str(cfg_path)}
    return {}


def find_weights_file(folder: str | Path) -> Path:
    """The weights file of a model folder (HF, OpenCLIP, or a folder with one checkpoint)."""
    folder = Path(folder)
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"{folder}: no weights found (looked for {', '.join(FOLDER_WEIGHTS)} or a single "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} file)"
        )
    safe = [p for p in found if p.suffix == ".safetensors"]
    if len(safe) == 1:
        return safe[0]
    raise ValueError(f"{folder}: several checkpoint files ({', '.join(p.name for p in found)}); pass one")


def read_folder(folder: str | Path, trust_pickle: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Read a model folder: picks the weights file, then reads it with its sibling config."""
    return read_state(find_weights_file(folder), trust_pickle=trust_pickle)


def read_state(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Read the raw tensors of a checkpoint file or model folder, in the file's own key layout.

    Args:
        path: `.safetensors`, `.pt/.pth/.bin/.ckpt` (torch.save or OpenAI TorchScript archive), an HF
            sharded `*.index.json`, or a folder (HF transformers / OpenCLIP / single checkpoint).
        trust_pickle: allow pickles that need arbitrary Python objects. Off by default: unpickling
            runs code chosen by whoever made the file. (TorchScript archives never run code.)
    Returns:
        (state, meta). meta: "format" (see `detect_format`; None if unrecognised), "path", "files"
        (the files read), "act"/"ln_eps"/"heads" when a config says so (else absent), "extra"
        (non-tensor entries of a training checkpoint, e.g. epoch), "config_file".
    Raises:
        FileNotFoundError: the path does not exist. WeightsCorruptError: unreadable bytes.
        PickleRefusedError: the pickle holds arbitrary objects and trust_pickle is False.
        UnsafeWeightsError: a TorchScript archive that would need its own code run to load.
        NonFiniteWeightsError: a floating tensor holds NaN or Inf.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.is_dir():
        return read_folder(path, trust_pickle)
    state, meta = _read_file(path, trust_pickle)
    meta.setdefault("files", [str(path)])
    meta["path"] = str(path)
    meta.update({k: v for k, v in _sibling_config(path).items() if k not in meta})
    if meta.get("torchscript"):
        meta.setdefault("act", "quick_gelu")  # every OpenAI CLIP archive uses QuickGELU
    try:
        meta["format"] = detect_format(state)
    except ValueError:
        meta["format"] = None  # not a known CLIP layout; to_canonical / the factory say so
    return state, meta


# ----------------------------------------------------------------------------------------------
# Key layouts


def detect_format(state: dict[str, Tensor]) -> str:
    """Which key layout a state dict uses: "ovss", "openai", "open_clip" or "hf".

    OpenAI and OpenCLIP ViT checkpoints share key names and convert the same way; "openai" is
    reported when OpenAI's scalar entries (`input_resolution`, ...) are present.
    """
    keys = state.keys()
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "hf"
    if "text.token_embedding.weight" in state or any(k.startswith("text.transformer.") for k in keys):
        return "ovss"
    if "token_embedding.weight" in state or "visual.conv1.weight" in state:
        return "openai" if any(k in state for k in _OPENAI_SCALARS) else "open_clip"
    sample = ", ".join(sorted(keys)[:8])
    raise ValueError(f"not a CLIP ViT checkpoint layout this reader knows (first keys: {sample})")


def _openai_to_canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        if k in _OPENAI_SCALARS or k.endswith(_DROP_SUFFIXES):
            continue
        out["text." + k if k.startswith(_TEXT_TOP) else k] = v
    return out


_HF_BLOCK = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "self_attn.out_proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_HF_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "logit_scale": "logit_scale",
}
# HF stores projections as nn.Linear weights (out, in); OpenAI multiplies x @ proj with (in, out).
_HF_PROJ = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text.text_projection"}
_HF_TOWERS = {"vision_model.encoder.layers.": "visual.transformer.resblocks.",
              "text_model.encoder.layers.": "text.transformer.resblocks."}


def _hf_to_canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in state.items():
        if k.endswith(_DROP_SUFFIXES):
            continue
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
            continue
        if k in _HF_PROJ:
            out[_HF_PROJ[k]] = v.t().contiguous()
            continue
        tower = next((p for p in _HF_TOWERS if k.startswith(p)), None)
        if tower is None:
            out[k] = v  # unknown key: kept, so a strict load reports it
            continue
        idx, rest = k[len(tower):].split(".", 1)
        block = f"{_HF_TOWERS[tower]}{idx}."
        if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            _, proj, kind = rest.split(".")
            qkv.setdefault((block, kind), {})[proj[0]] = v
            continue
        new = next((rest.replace(a, b, 1) for a, b in _HF_BLOCK.items() if rest.startswith(a)), rest)
        out[block + new] = v
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{block}: HF attention has {sorted(parts)} projections, expected q, k, v")
        # nn.MultiheadAttention's in_proj stacks q, k, v along the output dimension.
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_canonical(state: dict[str, Tensor], fmt: str | None = None) -> dict[str, Tensor]:
    """Rename a state dict from its source layout to the canonical (ovss) one.

    Tensors are not copied or cast (apart from HF's transposed projections and stacked q/k/v);
    dtype conversion happens when they are loaded into the model.
    """
    fmt = fmt or detect_format(state)
    if fmt == "ovss":
        return {k: v for k, v in state.items() if not k.endswith(_DROP_SUFFIXES)}
    if fmt in ("openai", "open_clip"):
        return _openai_to_canonical(state)
    if fmt == "hf":
        return _hf_to_canonical(state)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def load_canonical(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, Tensor], dict]:
    """`read_state` + `to_canonical`: canonical tensors and the meta of the files they came from."""
    state, meta = read_state(path, trust_pickle=trust_pickle)
    return to_canonical(state, meta["format"]), meta
