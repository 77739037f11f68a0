"""Float comparisons whose tolerances were set from measured differences (not a test module).

A parity test computes `diff = max_abs_diff(ours, ref, "name")` and asserts `diff < TOL`, with TOL
next to the assert and a comment giving what was measured (value, machine, thread counts). The
differences are float32 round-off whose size depends on the order the CPU's kernels sum in (SIMD
width, blocking, thread count), so a tolerance is a few times the largest measured difference,
never below ~1e-6 of the values' scale: tight enough that a real regression (a changed constant, a
missing term) fails, loose enough for another x86-64 CPU.

To re-measure, run the tests with OVSS_DIFF_LOG=FILE: every call appends a tab-separated line
(name, max |diff|, max |ref|, torch threads, OMP_NUM_THREADS) to FILE; run once per thread setting
(OMP_NUM_THREADS=1, =2, ...) and take the largest value per name.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def _as64(x) -> torch.Tensor:
    return x.detach().double() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)).double()


def max_abs_diff(ours, ref, name: str) -> float:
    """max |ours - ref| in float64 (shapes must match); logged to $OVSS_DIFF_LOG under `name`."""
    a, b = _as64(ours), _as64(ref)
    assert a.shape == b.shape, (name, tuple(a.shape), tuple(b.shape))
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    log = os.environ.get("OVSS_DIFF_LOG")
    if log:
        scale = b.abs().max().item() if b.numel() else 0.0
        with open(log, "a") as f:
            f.write(f"{name}\t{diff:.3e}\t{scale:.3e}\t{torch.get_num_threads()}\t"
                    f"{os.environ.get('OMP_NUM_THREADS', '-')}\n")
    return diff
