"""Shared fixtures: a tiny random CLIP written in OpenAI format with a small BPE vocabulary.

Random weights prove plumbing and parity, not segmentation quality: tests that need real
segmentation use the shipped tiny-synthetic model instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

GOLDEN = Path(__file__).parent / "golden"
SMALL_VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches."""
    cache = tmp_path_factory.getbasetemp() / "ovss-cache"
    monkeypatch.setenv("OVSS_CACHE", str(cache))


def tiny_clip_cfg(vocab_size: int):
    from ovss.backbones.configs import ClipCfg, TextCfg, VisionCfg

    return ClipCfg(VisionCfg(width=64, layers=2, heads=1, patch_size=16, image_size=64, output_dim=32),
                   TextCfg(width=64, layers=1, heads=1, vocab_size=vocab_size, output_dim=32))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A folder with `model.safetensors` (OpenAI key layout) and the small vocabulary beside it."""
    from ovss.backbones.clip import CLIP
    from ovss.text.tokenizer import Tokenizer

    vocab = Tokenizer.from_file(SMALL_VOCAB).vocab_size
    torch.manual_seed(0)
    model = CLIP(tiny_clip_cfg(vocab))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = {(k[5:] if k.startswith("text.") else k): v.contiguous() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("tiny_clip")
    save_file(state, str(d / "model.safetensors"))
    shutil.copy(SMALL_VOCAB, d / "bpe_vocab.txt.gz")
    return d


@pytest.fixture
def rgb_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (75, 100, 3), dtype=np.uint8)
