"""ProxyCLIP through ovss against the reference segmentor (golden from
tests/golden/make_proxyclip_golden.py: ProxyCLIP's own predict() with the clip_small CLIP and
the `dino` small DINO of dino_small.safetensors, 224/112 windows, logit scale 40, prob_thd 0.2)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from deep_parity import assert_labels_equal
from measured import max_abs_diff
from safetensors import safe_open
from safetensors.torch import load_file

from ovss.backbones.dino import create_dino
from ovss.backbones.factory import create_clip
from ovss.core.segmenter import Segmenter
from ovss.heads.proxy import ProxyHead
from ovss.heads.vfm import register_vfm
from ovss.methods import get_method
from ovss.text.bank import ClassSpec

GOLDEN = Path(__file__).parents[1] / "golden"
VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"


@pytest.fixture(scope="module")
def golden():
    f = GOLDEN / "proxyclip_small.safetensors"
    with safe_open(str(f), "pt") as fh:
        step = int(fh.metadata()["logits_step"])
    return load_file(str(f)), step


@pytest.fixture(scope="module")
def segmenter():
    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    register_vfm("golden-dino", create_dino(weights={k[7:]: v for k, v in dg.items() if k.startswith("dino.w.")}).model)
    clip = create_clip(str(GOLDEN / "clip_small.safetensors"))
    return Segmenter("proxyclip", clip=clip, preset="voc21", device="cpu", tokenizer=VOCAB,
                     overrides={"protocol.short_side": None, "protocol.crop": 224, "protocol.stride": 112,
                                "plugins": "proxy:vfm=golden-dino,beta=1.2,gamma=3.0"})


def _spec(q2c):
    groups = [tuple(f"q{q}" for q, c in enumerate(q2c) if c == k) for k in range(max(q2c) + 1)]
    return ClassSpec(tuple(groups), background=True)


def test_logits_and_labels_match_reference(golden, segmenter):
    """The full call with the golden queries at the golden's original size, traced: the logits the
    decision reads and the label map match; the proxy affinity is recorded per batch of windows."""
    g, step = golden
    spec = _spec(g["query_to_class"].tolist())
    ori = tuple(g["ori_shape"].tolist())
    res = segmenter(g["image"].numpy(), spec, queries=g["queries"], size=ori, trace=True)
    t = res.trace
    assert set(segmenter.trace_names) == set(t), set(segmenter.trace_names) ^ set(t)
    logits = t["logits"][0]
    diff = max_abs_diff(logits[:, ::step, ::step], g["logits"], "methods.proxyclip.logits")
    # measured on an Intel Xeon (this machine): 1.5e-7 (|values| <= 0.26), identical with
    # OMP_NUM_THREADS=1, =2 and torch.set_num_threads(1); the bound is 6.7x that (float32)
    assert diff < 1e-6, diff
    assert_labels_equal(np.asarray(res.labels, dtype=np.int64), g["labels"].numpy().astype(np.int64), logits, spec,
                        segmenter.recipe.decision)
    feats, aff = t["proxy.features"][0], t["proxy.affinity"][0]
    n = feats.shape[-2] * feats.shape[-1]
    assert aff.shape == (feats.shape[0], n, n)  # one (H'W' x H'W') affinity per window of the batch
    assert (torch.isinf(aff) | (aff >= 0)).all()  # negatives masked to -inf


def test_presets_and_plugin():
    spec = get_method("proxyclip")
    assert spec.resolve("voc21").decision.prob_thd == 0.2
    assert spec.resolve("cityscapes").protocol.crop == 224
    assert spec.resolve("voc21-dinov2").plugins == (ProxyHead(vfm="dinov2-vitb14-reg"),)
    for name, preset in spec.presets.items():
        assert all(k in preset.sources for k in preset.overrides), name


def test_dinov2_proxy_with_registers_runs(golden, segmenter):
    """A DINOv2-with-registers proxy (patch 14): registers dropped, logits on its 16x16 grid."""
    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    register_vfm("golden-dinov2r", create_dino(weights={k[10:]: v for k, v in dg.items()
                                                         if k.startswith("dinov2r.w.")}).model)
    clip = create_clip(str(GOLDEN / "clip_small.safetensors"))
    seg = Segmenter("proxyclip", clip=clip, preset="voc21-dinov2", device="cpu", tokenizer=VOCAB,
                    overrides={"protocol.short_side": None, "protocol.crop": 224,
                               "plugins": "proxy:vfm=golden-dinov2r"})
    g, _ = golden
    crops = torch.zeros(1, 3, 224, 224)
    lg = seg.patch_logits(crops, g["queries"])
    assert lg.shape == (1, 16, 16, 16)
    res = seg(g["image"].numpy(), _spec(g["query_to_class"].tolist()), queries=g["queries"])
    assert res.labels.shape == (224, 336)


def test_methods_command_describes_the_affinity_only_rule(capsys):
    """ProxyCLIP's rule has no q/k/v terms (DINO's affinity is its attention): `ovss methods`
    names it instead of printing an empty string, and the name parses back."""
    from ovss.apps.cli import main
    from ovss.heads.attention import AttentionRule

    rule = get_method("proxyclip").recipe.attention
    assert rule.terms == () and str(rule) == "affinity" and AttentionRule.parse("affinity") == rule
    assert main(["methods", "proxyclip"]) == 0
    out = capsys.readouterr().out
    assert ("  recipe: attention=affinity (no q/k/v terms: the attention is a plug-in's affinity, "
            "e.g. DINO's for ProxyCLIP) surgery[residual=off,ffn=off]") in out
    assert "attention= " not in out
    assert main(["methods", "proxyclip", "--json"]) == 0
    assert '"attention": "affinity"' in capsys.readouterr().out
    with pytest.raises(ValueError, match="no q/k/v terms"):
        AttentionRule.parse("qk+affinity")
