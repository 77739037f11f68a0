"""FOUND (valeoai/FOUND) as a saliency backbone: its saliency against the reference on a small
random DINO + decoder (tests/golden/clipdiy_small.safetensors, see make_clipdiy_golden.py), the
released decoder's checkpoint layout, names in the zoo, and the offline error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ovss.backbones.dino import create_dino
from ovss.backbones.found import (
    FOUND_DECODER_URL,
    create_found,
    decoder_state,
    found_cache_path,
    found_saliency,
    make_decoder,
    read_decoder,
)
from ovss.backbones.zoo import FAMILIES, entries, resolve_backbone

GOLDEN = Path(__file__).parents[1] / "golden"
IMNET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMNET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN / "clipdiy_small.safetensors"))


def _dino_state(g):
    return {k[13:]: v for k, v in g.items() if k.startswith("found.w.dino.")}


def _released(g):
    """The decoder as FOUND saves it (model.py:168-174): {"decoder": conv.state_dict()}."""
    return {"decoder": {k[16:]: v for k, v in g.items() if k.startswith("found.w.decoder.")}}


@pytest.mark.parametrize("size", ["256", "60x90"])
def test_saliency_matches_reference(golden, size, tmp_path):
    g = golden
    torch.save(_released(g), tmp_path / "decoder_weights.pt")
    save_file(_dino_state(g), str(tmp_path / "dino.safetensors"))  # the official DINO key layout
    found = create_found(tmp_path / "decoder_weights.pt", dino=tmp_path / "dino.safetensors")
    im = g[f"found.{size}.image"].permute(2, 0, 1)[None].float()
    x = (im / 255.0 - IMNET_MEAN) / IMNET_STD  # ToTensor + Normalize, as extract_saliency.py
    logits = found.logits(x)[0, 0]
    sal = found.saliency(x)[0, 0]
    assert sal.shape == im.shape[-2:]
    d_logits = (logits - g[f"found.{size}.logits"]).abs().max().item()
    d_sal = (sal[::2, ::2] - g[f"found.{size}.saliency"]).abs().max().item()
    print(size, "max abs diff logits", d_logits, "saliency", d_sal)  # measured 3.4e-7 / 1.2e-7 (256), 1.3e-7 / 1.2e-7 (60x90)
    assert d_logits < 1e-5 and d_sal < 1e-5


def test_released_checkpoint_layout(tmp_path):
    """A random checkpoint in the exact layout of data/weights/decoder_weights.pt (a torch.save
    dict {"decoder": OrderedDict(weight (1, 384, 1, 1), bias (1,))}) loads onto ViT-S/8."""
    from collections import OrderedDict

    conv = torch.nn.Conv2d(384, 1, (1, 1))
    torch.save({"decoder": OrderedDict(conv.state_dict())}, tmp_path / "decoder_weights.pt")
    state, _ = read_decoder(tmp_path / "decoder_weights.pt")
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (1, 384, 1, 1)
    assert torch.equal(make_decoder(state).weight, conv.weight)
    # the same as bare / prefixed state dicts and safetensors
    assert torch.equal(decoder_state({"decoder.weight": conv.weight, "decoder.bias": conv.bias})["bias"], conv.bias)
    save_file({k: v.detach().contiguous() for k, v in conv.state_dict().items()}, str(tmp_path / "d.safetensors"))
    assert torch.equal(read_decoder(tmp_path / "d.safetensors")[0]["weight"], conv.weight)
    with pytest.raises(ValueError, match="not a FOUND decoder"):
        decoder_state({"conv.weight": conv.weight})
    with pytest.raises(ValueError, match="1x1 conv to one channel"):
        decoder_state({"weight": torch.zeros(2, 384, 1, 1), "bias": torch.zeros(2)})
    # random ViT-S/8 (no download) + the released layout: end to end, shapes only
    f = create_found(pretrained=False)
    f.decoder.load_state_dict(state)
    x = torch.randn(1, 3, 44, 52)
    assert f.saliency(x).shape == (1, 1, 44, 52)
    assert f.logits(x).shape == (1, 1, 6, 7)  # padded to 48 x 56


def test_a_decoder_for_another_width_is_refused(golden, tmp_path):
    torch.save(_released(golden), tmp_path / "decoder_weights.pt")  # 64 channels
    with pytest.raises(ValueError, match="takes 64 channels"):
        create_found(tmp_path / "decoder_weights.pt", dino=_save_vits8(tmp_path))


def _save_vits8(tmp_path):
    m = create_dino("dino-vits8", pretrained=False).model
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "s8.safetensors"))
    return tmp_path / "s8.safetensors"


def test_zoo_lists_the_saliency_family():
    assert "saliency" in FAMILIES
    e = [x for x in entries("saliency") if x.name == "found-duts-tr"]
    assert e and e[0].source == FOUND_DECODER_URL
    assert resolve_backbone("found") == ("saliency", "found-duts-tr")
    assert "found-duts-tr" in [x.name for x in entries()]


def test_named_decoder_loads_from_the_cache_or_says_where_it_lives(tmp_path):
    with pytest.raises(FileNotFoundError, match="ovss download found-duts-tr"):
        read_decoder("found-duts-tr", cache_dir=tmp_path)
    p = found_cache_path("found-duts-tr", tmp_path)
    p.parent.mkdir(parents=True)
    conv = torch.nn.Conv2d(384, 1, (1, 1))
    torch.save({"decoder": conv.state_dict()}, p)
    assert torch.equal(read_decoder("found", cache_dir=tmp_path)[0]["weight"], conv.weight)


def test_found_saliency_pads_like_make_input_divisible():
    f = create_found(pretrained=False)
    x = torch.randn(1, 3, 20, 28)
    padded = torch.nn.functional.pad(x, (0, 4, 0, 4))
    assert torch.allclose(f.logits(x), f.logits(padded), atol=1e-6, rtol=0)
    a, b = found_saliency(f.dino, f.decoder, x), found_saliency(f.dino, f.decoder, padded)
    assert a.shape == (1, 1, 20, 28) and torch.allclose(a, b[..., :20, :28], atol=1e-6, rtol=0)
