"""`Segmenter.patch_logits` runs the method's own head for every kind of head plug-in.

- readout plug-ins (ProxyCLIP's `proxy`, SC-CLIP's `selfcal`): the plug-in's readout, not the
  dense head's (equal to `readout` on the same pass, different from the recipe without it);
- logit adjusters (CASS's `presence`, CLIPtrase's `clsprior`): the adjustment is applied
  (checked against its formula);
- joint heads (LPOSS, CASS) have no per-crop logits: refused, naming `stitched_logits`;
and on an image that is one window, the full path's stitched logits are these patch logits
resized to the window, so both calls are the same head.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from deep_parity import GOLDEN, VOCAB, small_clip
from safetensors.torch import load_file

from ovss.backbones.dino import create_dino
from ovss.backbones.factory import create_clip
from ovss.core.segmenter import Segmenter
from ovss.heads.dense import pass_context
from ovss.heads.vfm import register_vfm

IMAGE = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
ONE_WINDOW = {"protocol.short_side": None, "protocol.crop": 224, "protocol.stride": 112, "refiners": ""}


@pytest.fixture(scope="module")
def clip():
    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    register_vfm("golden-dino", create_dino(weights={k[7:]: v for k, v in dg.items() if k.startswith("dino.w.")}).model)
    return create_clip(str(GOLDEN / "clip_small.safetensors"))


@pytest.fixture(scope="module")
def clip12():
    return small_clip()


def _queries(dim, n=5, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _same_as_the_full_path(seg, q):
    """One window: stitched logits = the patch logits resized to it (bilinear)."""
    state = seg.preprocess(IMAGE)
    assert state.network_size == (224, 224)
    lg = seg.patch_logits(state.x, q)
    stitched = seg.stitched_logits(state, q)
    want = F.interpolate(lg, size=(224, 224), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(stitched, want, rtol=0, atol=1e-6)
    return state, lg


@pytest.mark.parametrize("method,plugin,which", [("proxyclip", "proxy:vfm=golden-dino", "clip"),
                                                 ("scclip", "selfcal", "clip12")])
def test_readout_plugins_run_their_readout(method, plugin, which, clip, clip12):
    model = clip if which == "clip" else clip12
    seg = Segmenter(method, clip=model, device="cpu", tokenizer=VOCAB, overrides={**ONE_WINDOW, "plugins": plugin})
    q = _queries(model.model.visual.proj.shape[1])
    state, lg = _same_as_the_full_path(seg, q)
    r = seg.recipe
    (head,) = r.plugins
    assert "readout" in head.hooks
    with torch.no_grad():
        ctx = pass_context(seg.visual, state.x, r.attention, r.surgery, r.pos_resize, r.plugins, q)
        want = ctx.logits(head.readout(ctx, ()))
    torch.testing.assert_close(lg, want, rtol=0, atol=1e-6)
    # without the plug-in: the dense head (ProxyCLIP's rule has no terms of its own: its k-k)
    plain = Segmenter(method, clip=model, device="cpu", tokenizer=VOCAB,
                      overrides={**ONE_WINDOW, "plugins": "", **({"attention": "kk"} if method == "proxyclip" else {})})
    dense = plain.patch_logits(state.x, q)
    # the plug-in's head, not the dense one (ProxyCLIP's logits are on the proxy's own grid)
    assert dense.shape != lg.shape or not torch.allclose(dense, lg, atol=1e-3)
    if method == "proxyclip":
        assert lg.shape[-2:] == (28, 28) and dense.shape[-2:] == (14, 14)  # DINO patch 8 vs CLIP patch 16


def test_presence_adjusts_the_patch_logits(clip):
    """CASS's presence step with the text left in place: (1 - b) logits + b prior."""
    from ovss.heads.presence import class_token_prior

    q = _queries(clip.model.visual.proj.shape[1])
    seg = Segmenter("naclip", clip=clip, device="cpu", tokenizer=VOCAB,
                    overrides={**ONE_WINDOW, "plugins": "presence:text_weight=0,prior_weight=0.5"})
    state, lg = _same_as_the_full_path(seg, q)
    plain = Segmenter("naclip", clip=clip, device="cpu", tokenizer=VOCAB, overrides=ONE_WINDOW)
    base = plain.patch_logits(state.x, q)
    with torch.no_grad():
        prior = class_token_prior(seg.visual, seg.visual.forward_tokens(state.x).tokens, q)[0]
    torch.testing.assert_close(lg, 0.5 * base + 0.5 * prior[None, :, None, None], rtol=0, atol=1e-6)
    moved = Segmenter("naclip", clip=clip, device="cpu", tokenizer=VOCAB,
                      overrides={**ONE_WINDOW, "plugins": "presence:text_weight=0.5,prior_weight=0"})
    assert not torch.allclose(moved.patch_logits(state.x, q), base, atol=1e-3)


def test_class_token_prior_multiplies_the_patch_logits(clip12):
    """CLIPtrase's VOC20 prior: logits x scale x cos(class token, query), the class token of the
    same readout (`seg.features(..., cls_token=True)`)."""
    seg = Segmenter("cliptrase", clip=clip12, preset="voc20-repo-224", device="cpu", tokenizer=VOCAB,
                    overrides={**ONE_WINDOW, "protocol.crop": 0})
    assert [type(p).__name__ for p in seg.recipe.plugins] == ["ClsPrior"]
    q = _queries(clip12.model.visual.proj.shape[1])
    state = seg.preprocess(IMAGE)
    lg = seg.patch_logits(state.x, q)
    plain = Segmenter("cliptrase", clip=clip12, preset="voc20-repo-224", device="cpu", tokenizer=VOCAB,
                      overrides={**ONE_WINDOW, "protocol.crop": 0, "plugins": ""})
    base = plain.patch_logits(state.x, q)
    cls = seg.features(IMAGE, cls_token=True)[0]
    torch.testing.assert_close(lg, base * (100.0 * cls @ q.T)[None, :, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["lposs", "cass"])
def test_joint_heads_are_refused(method, clip):
    seg = Segmenter(method, clip=clip, device="cpu", tokenizer=VOCAB)
    with pytest.raises(ValueError, match="stitched_logits"):
        seg.patch_logits(torch.zeros(1, 3, 224, 224), _queries(clip.model.visual.proj.shape[1]))
