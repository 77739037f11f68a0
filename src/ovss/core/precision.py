"""Inference precision: float32 (the default, the parity-tested path), bfloat16 or float16.

Reduced precision runs under `torch.autocast`: the weights stay float32 (a model may be shared
by several `Segmenter`s of different precisions), the towers' and the head's matrix products run
in the chosen dtype, and the numerically sensitive parts stay float32: every attention softmax
of the dense head and of a block whose map is kept (the logits are cast first), the cosine
logits, and everything after the dense head (refiners, resize, the decision).

"auto": on CUDA, bfloat16 where the GPU supports it, else float16; on a CPU, bfloat16 when the
CPU has native bf16 arithmetic (`amx_bf16` or `avx512_bf16` in /proc/cpuinfo's flags), else
float32 (emulated bf16 is slower than float32); float32 on every other device (MPS included).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU advertises native bf16 arithmetic (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A dtype name ("float32", "bfloat16", "float16", "auto"; or bf16/fp16/fp32) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported inference dtype {dtype}; choose from {sorted(DTYPES)} or 'auto'")
        return dtype
    name = _ALIASES.get(str(dtype or "float32"), str(dtype or "float32"))
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)} or 'auto'")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """The reduced-precision context of `dtype` on `device` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def full_precision(x: torch.Tensor):
    """A context where autocast is off (float32 arithmetic inside a reduced-precision pass);
    nothing when no autocast is active, so the float32 path is untouched."""
    if not torch.is_autocast_enabled(x.device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)
