"""Intermediate features handed back by `VisionTransformer.forward_tokens` in its one pass.

q-k attention maps of chosen middle layers (ResCLIP's RCS), running reductions (their mean; the
sum of some layers' tokens, SC-CLIP's fusion), q/k/v projections (CLIPtrase's self-correlation),
and only what is asked for is kept.
"""

import pytest
import torch
from measured import max_abs_diff

from ovss.backbones.configs import VisionCfg
from ovss.backbones.vit import Tap, VisionTransformer

# The fused path against the blocks run by hand (same float32 ops, other kernels and shapes).
# Tolerances: ~5x the max |difference| measured on an Intel Xeon (this machine), identical with
# OMP_NUM_THREADS=1, =2 and torch.set_num_threads(1), and not below ~1e-6 of the values' scale.
ATTN_TOL = 1e-6  # attention maps (values <= 0.32): 1.8e-7 measured
MEAN_TOL = 5e-7  # mean of three maps (<= 0.19): 6.0e-8 measured
TOKENS_TOL = 1e-5  # tokens (<= 5.7): 1.3e-6 (fused vs plain), 1.2e-6 (one layer) measured
SUM_TOL = 1.5e-5  # sum of three layers' tokens (<= 12.7): 2.9e-6 measured
QKV_TOL = 5e-6  # q/k/v (<= 3.0): 9.5e-7 measured; the block's own projection of a kept layer: 0
PROJ_TOL = 3e-6  # projected class token (<= 2.6): 4.8e-7 measured


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    m = VisionTransformer(VisionCfg(width=64, layers=6, heads=4, patch_size=16, image_size=64, output_dim=32))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))


def _manual(vit, x):
    """Every block's output, attention map and q/k/v, written out by hand."""
    t, _ = vit.embed(x)
    outs, attns, qkvs = [], [], []
    for blk in vit.blocks[:-1]:
        q, k, v = blk.attn.qkv(blk.ln_1(t))
        a = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        t = t + blk.attn.merge(a @ v)
        t = t + blk.mlp(blk.ln_2(t))
        outs.append(t)
        attns.append(a)
        qkvs.append((q, k, v))
    return outs, attns, qkvs


@torch.no_grad()
def test_attention_maps_without_a_second_pass(vit, image):
    plain = vit.forward_tokens(image)
    out = vit.forward_tokens(image, keep_attn=(1, 3))
    _, attns, _ = _manual(vit, image)
    assert sorted(out.attn) == [1, 3]  # only the asked-for maps are kept
    assert out.layers == {} and out.taps == {}
    for i in (1, 3):
        assert out.attn[i].shape == (2, 4, 1 + 15, 1 + 15)
        diff = max_abs_diff(out.attn[i], attns[i], "backbones.taps.attn")
        assert diff < ATTN_TOL, diff
        torch.testing.assert_close(out.attn[i].sum(-1), torch.ones(2, 4, 16))
    # the explicit attention feeds the block's output: the tokens are those of the fused path
    diff = max_abs_diff(out.tokens, plain.tokens, "backbones.taps.tokens")
    assert diff < TOKENS_TOL, diff
    assert out.grid == (3, 5)


@torch.no_grad()
def test_reductions_accumulate_while_running(vit, image):
    outs, attns, _ = _manual(vit, image)
    out = vit.forward_tokens(image, taps={"mean": Tap("attn", (1, 2, 3), "mean"),
                                          "sum": Tap("tokens", (0, 1, 2), "sum"),
                                          "one": Tap("tokens", (-3,))})
    assert isinstance(out.taps["mean"], torch.Tensor) and isinstance(out.taps["sum"], torch.Tensor)
    diff = max_abs_diff(out.taps["mean"], torch.stack(attns[1:4]).mean(0), "backbones.taps.mean")
    assert diff < MEAN_TOL, diff
    diff = max_abs_diff(out.taps["sum"], outs[0] + outs[1] + outs[2], "backbones.taps.sum")
    assert diff < SUM_TOL, diff
    assert sorted(out.taps["one"]) == [3]  # -3 of 6 blocks
    diff = max_abs_diff(out.taps["one"][3], outs[3], "backbones.taps.one")
    assert diff < TOKENS_TOL, diff
    assert out.attn == {} and out.layers == {}


@torch.no_grad()
def test_qkv_tap_is_the_blocks_own_projection(vit, image):
    outs, _, qkvs = _manual(vit, image)
    out = vit.forward_tokens(image, keep_layers=(3,), taps={"qkv": Tap("qkv", (4,))})
    q, k, v = out.taps["qkv"][4]
    for got, want in zip((q, k, v), qkvs[4]):
        diff = max_abs_diff(got, want, "backbones.taps.qkv")
        assert diff < QKV_TOL, diff
    blk = vit.blocks[4]
    diff = max_abs_diff(q, blk.attn.qkv(blk.ln_1(out.layers[3]))[0], "backbones.taps.qkv_projection")
    assert diff < QKV_TOL, diff


def test_bad_taps_are_refused(vit, image):
    with pytest.raises(ValueError, match="not run"):
        vit.forward_tokens(image, keep_attn=(5,))  # the last block is not run by default
    with pytest.raises(ValueError, match="not run"):
        vit.forward_tokens(image, taps={"x": Tap("attn", (-1,), "mean")})
    with pytest.raises(ValueError, match="do not exist"):
        vit.forward_tokens(image, taps={"x": Tap("attn", (8,))})  # 6 blocks: no wrapping around
    with pytest.raises(ValueError):
        Tap("qkv", (1,), "mean")
    with pytest.raises(ValueError):
        Tap("ffn", (1,))
    with pytest.raises(ValueError):
        Tap("attn", ())


@torch.no_grad()
def test_all_blocks_with_taps(vit, image):
    """upto=L runs the last block too; its map can then be asked for."""
    out = vit.forward_tokens(image, upto=6, keep_attn=(5,))
    assert sorted(out.attn) == [5]
    diff = max_abs_diff(vit.project(out.tokens[:, 0]), vit(image), "backbones.taps.all_blocks")
    assert diff < PROJ_TOL, diff
