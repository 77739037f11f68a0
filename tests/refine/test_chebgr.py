"""The chebgr refiner: Cheb-GR's rounds over the patch graph, composed onto every method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovss.core.recipe import Recipe, parse_refiners
from ovss.core.segmenter import Segmenter
from ovss.ops.graphs import bistochastic, threshold_graph
from ovss.refine.chebgr import ChebGR, propagate_scores

GOLDEN = Path(__file__).parents[1] / "golden"
CLASSES = "cat, sofa|couch, wooden floor, sky"


def test_scores_move_as_the_features_they_are_read_from():
    """One round: Y = X T^T propagated is (L X) T^T with rows rescaled by 1 / (L 1)."""
    g = torch.Generator().manual_seed(0)
    X = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    T = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    L = bistochastic(threshold_graph(X, 1.0, 0.16))
    X1, Y1 = propagate_scores(X, X @ T.T, 1.0, 0.16, 1, mode="no-norm")
    assert torch.allclose(X1, L @ X, atol=1e-6)
    assert torch.allclose(Y1, (X1 @ T.T) / L.sum(1, keepdim=True), atol=1e-5)


def test_settings_parse_like_every_refiner():
    (r,) = parse_refiners("chebgr:lam=2.0,beta=0.3,rounds=1,feature=tokens,layer=-3")
    assert r == ChebGR(lam=2.0, beta=0.3, rounds=1, feature="tokens", layer=-3)
    assert Recipe().with_overrides({"refiners": repr(r)}).refiners == (r,)
    with pytest.raises(ValueError, match="mode"):
        ChebGR(mode="fixA")
    with pytest.raises(ValueError, match="feature"):
        ChebGR(feature="keys")


@pytest.fixture(scope="module")
def weights(tiny_clip_dir):
    return str(tiny_clip_dir / "model.safetensors")


@pytest.fixture(scope="module")
def weights12(tmp_path_factory):
    """A 12-block tiny CLIP (ResCLIP and SC-CLIP read blocks up to the 9th)."""
    from safetensors.torch import save_file

    from ovss.backbones.clip import CLIP
    from ovss.backbones.configs import ClipCfg, TextCfg, VisionCfg
    from ovss.text.tokenizer import Tokenizer

    vocab = Tokenizer.from_file(GOLDEN / "tokenizer" / "small_vocab.txt.gz").vocab_size
    torch.manual_seed(0)
    model = CLIP(ClipCfg(VisionCfg(width=64, layers=12, heads=1, patch_size=16, image_size=64, output_dim=32),
                         TextCfg(width=64, layers=1, heads=1, vocab_size=vocab, output_dim=32)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = {k.removeprefix("text."): v.contiguous() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("clip12")
    save_file(state, str(d / "model.safetensors"))
    return str(d / "model.safetensors")


def test_zero_rounds_is_the_identity(weights, rgb_image):
    plain = Segmenter("naclip", backbone=weights, device="cpu", overrides={"refiners": ""})
    zero = Segmenter("naclip", backbone=weights, device="cpu", clip=plain.clip,
                     overrides={"refiners": "chebgr:rounds=0"})
    assert torch.equal(plain.logits(rgb_image, CLASSES), zero.logits(rgb_image, CLASSES))


@pytest.mark.parametrize("method", ["dense-clip", "maskclip", "sclip", "clearclip", "naclip", "resclip",
                                    "scclip", "cliptrase"])
def test_composes_with_every_clip_method(weights12, rgb_image, method):
    """After each method's own refiners (PAMR, cluster vote); sliding windows and whole image."""
    weights = weights12
    base = Segmenter(method, backbone=weights, device="cpu", tokenizer=GOLDEN / "tokenizer" / "small_vocab.txt.gz")
    seg = Segmenter(method, backbone=weights, device="cpu", clip=base.clip, tokenizer=GOLDEN / "tokenizer" / "small_vocab.txt.gz",
                    overrides={"refiners": list(base.recipe.refiners) + ["chebgr:stage=full"]})
    before, after = base.logits(rgb_image, CLASSES), seg.logits(rgb_image, CLASSES)
    assert after.shape == before.shape == (5, 75, 100) and torch.isfinite(after).all()
    assert not torch.equal(before, after)
    whole = Segmenter(method, backbone=weights, device="cpu", clip=base.clip, tokenizer=GOLDEN / "tokenizer" / "small_vocab.txt.gz",
                      overrides={"refiners": "chebgr", "protocol.crop": 0})
    r = whole(rgb_image, CLASSES)
    assert r.labels.shape == (75, 100)


def test_network_stage_reuses_the_readouts_taps(weights, rgb_image):
    """One window: the keys come from the readout's own pass (no second backbone pass)."""
    seg = Segmenter("naclip", backbone=weights, device="cpu",
                    overrides={"refiners": "chebgr", "protocol.crop": 0})
    calls = []
    orig = seg.visual.forward_tokens
    seg.visual.forward_tokens = lambda *a, **k: calls.append(k.get("taps")) or orig(*a, **k)
    try:
        seg(rgb_image, CLASSES)
    finally:
        del seg.visual.forward_tokens
    assert len(calls) == 1 and "qkv:-2" in calls[0]


def test_dino_source(weights, rgb_image):
    from safetensors.torch import load_file

    from ovss.backbones.dino import create_dino
    from ovss.heads.vfm import register_vfm

    g = load_file(str(GOLDEN / "lposs_small.safetensors"))
    register_vfm("chebgr-test-dino", create_dino(weights={k[9:]: v for k, v in g.items()
                                                          if k.startswith("dino16.w.")}).model)
    base = Segmenter("maskclip", backbone=weights, device="cpu")
    seg = Segmenter("maskclip", backbone=weights, device="cpu", clip=base.clip,
                    overrides={"refiners": "chebgr:source=chebgr-test-dino,feature=k,layer=-1"})
    out = seg.logits(rgb_image, CLASSES)
    assert out.shape == (5, 75, 100) and torch.isfinite(out).all()
    assert not torch.equal(out, base.logits(rgb_image, CLASSES))
