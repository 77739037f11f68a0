"""SC-CLIP (the `selfcal` readout plug-in) against the reference code, and its pieces (LOF,
anomaly repair, affinities).

Goldens: tests/golden/scclip_small.safetensors from SuleBai/SC-CLIP@0417ba9 on the 12-block tower
clip12_small.safetensors (tests/golden/make_deep_methods_golden.py; README there): per run the
reference's per-pixel logits, label map and its first window's LOF outliers and scores; and the
reference `lof_pytorch` on three random inputs. ovss's side is the full call with the golden
queries (`queries=`, `size=`), traced (`trace=True`: "selfcal.lof_scores", "selfcal.outliers").
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from deep_parity import GOLDEN, VOCAB, assert_labels_equal, load_golden, small_clip, spec_of
from measured import max_abs_diff

from ovss.core.segmenter import Segmenter
from ovss.heads.selfcal import SelfCalibration
from ovss.methods import get_method
from ovss.ops.affinity import aggregate, cosine_matrix, proxy_logits, threshold
from ovss.ops.anomaly import lof_outliers, lof_scores, repair_tokens

FILE = GOLDEN / "scclip_small.safetensors"
# Tolerances from the max |difference| measured on an Intel Xeon (this machine) with
# OMP_NUM_THREADS=1, =2 and torch.set_num_threads(1), with a ~5x margin (float32):
TOL = 1e-6  # logits vs the reference (|values| <= 0.18): 1.7e-7 (w224, coco) .. 2.3e-7 (slide, nothd)
LOF_TOL = 5e-6  # the first window's LOF scores (<= 2.1): 8.4e-7 .. 9.5e-7 measured
LOF_REL_TOL = 2e-6  # lof_pytorch on random inputs, relative to the largest score: 0 measured (float floor)
REPAIR_TOL = 4e-6  # repair vs the per-position loop (<= 4.2): 6.0e-8 measured; ~1e-6 of the scale
# The decisions are compared exactly: the outliers (smallest |score - quantile| 2.3e-4, 245x the
# scores' noise) and the label maps (equal but at float ties, deep_parity.assert_labels_equal).
RUNS = {  # run -> (preset, network input size); square 224 windows as the reference needs
    "w224": ("voc21", (224, 224)),  # one window; logit_scale 50, prob_thd 0.15, area_thd 0.1
    "slide": ("context60", (240, 288)),  # 4 windows 224/112; prob_thd 0.15
    "coco": ("coco-object", (224, 224)),  # logit_scale 55, prob_thd 0.35
    "nothd": ("context59", (240, 288)),  # logit_scale 40, no thresholds
}


@pytest.fixture(scope="module")
def golden():
    return load_golden(FILE)


@pytest.fixture(scope="module")
def clip():
    return small_clip()


@pytest.fixture(scope="module")
def outputs(golden, clip):
    """The full call on each golden image, traced: the logits the decision reads, the label map,
    and the first window's LOF scores and anomaly tokens as the `selfcal` plug-in recorded them."""
    g, _ = golden
    q = g["queries"]
    spec = spec_of(g["query_to_class"].tolist())
    out = {}
    for run, (preset, (h, w)) in RUNS.items():
        image = g[f"image_{h}x{w}"].numpy()
        ori = tuple(g[f"{run}.ori_shape"].tolist())
        seg = Segmenter("scclip", clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None})
        res = seg(image, spec, queries=q, size=ori, trace=True)
        t = res.trace
        assert set(seg.trace_names) == set(t), set(seg.trace_names) ^ set(t)
        out[run] = dict(seg=seg, logits=t["logits"][0], labels=res.labels.astype(np.int64),
                        scores=t["selfcal.lof_scores"][0][0],  # the first batch of windows' first window
                        outliers=t["selfcal.outliers"][0][0].nonzero().flatten())
    return out


@pytest.mark.parametrize("run", sorted(RUNS))
def test_anomaly_tokens_match_reference(golden, outputs, run):
    g, _ = golden
    assert torch.equal(outputs[run]["outliers"], g[f"{run}.outliers"])
    assert len(g[f"{run}.outliers"]) == 10  # 5 % of 196
    diff = max_abs_diff(outputs[run]["scores"], g[f"{run}.lof"], f"methods.scclip.{run}.lof")
    assert diff < LOF_TOL, diff


@pytest.mark.parametrize("run", sorted(RUNS))
def test_logits_match_reference(golden, outputs, run):
    g, step = golden
    ref = g[f"{run}.logits"]
    diff = max_abs_diff(outputs[run]["logits"][:, ::step, ::step], ref, f"methods.scclip.{run}.logits")
    assert diff < TOL, diff


@pytest.mark.parametrize("run", sorted(RUNS))
def test_labels_match_reference(golden, outputs, run):
    g, _ = golden
    ref = g[f"{run}.labels"].numpy().astype(np.int64)
    o = outputs[run]
    assert_labels_equal(o["labels"], ref, o["logits"], spec_of(g["query_to_class"].tolist()), o["seg"].recipe.decision)
    assert len(np.unique(ref)) >= 3


@pytest.mark.parametrize("key", ["a", "b", "c"])
def test_lof_equals_the_references_torch_lof(golden, key, monkeypatch):
    """lof_pytorch (clip/model.py:208-227) on random inputs: scores and outliers; chunked too."""
    import ovss.ops.anomaly as an

    g, _ = golden
    x = g[f"lof_{key}.x"]
    scores, _ = lof_scores(x[None], 30)
    diff = max_abs_diff(scores[0], g[f"lof_{key}.scores"], f"methods.scclip.lof_{key}")
    assert diff <= LOF_REL_TOL * g[f"lof_{key}.scores"].abs().max().item(), diff
    mask = lof_outliers(x[None], 30, 0.05)[0]
    assert torch.equal(mask.nonzero().flatten(), g[f"lof_{key}.outliers"])
    monkeypatch.setattr(an, "_CHUNK", 1000)  # a few rows at a time: the same numbers
    assert torch.equal(lof_scores(x[None], 30)[0], scores)
    # batched: each image has its own neighbours and quantile
    other = torch.randn_like(x)
    both = lof_outliers(torch.stack([x, other]), 30, 0.05)
    assert torch.equal(both[0], mask) and torch.equal(both[1], lof_outliers(other[None], 30, 0.05)[0])


def test_lof_classical_reach_and_small_inputs():
    x = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(0))
    x[0, 7] += 6.0  # a far point
    for reach in ("self", "neighbour"):
        s, _ = lof_scores(x, 10, reach)
        assert s[0].argmax().item() == 7
    s, nb = lof_scores(x[:, :5], 30)  # fewer tokens than neighbours: k = N - 1
    assert nb.shape == (1, 5, 4) and torch.isfinite(s).all()


def _repair_loop(tokens, grid, mask):
    """The mean-of-valid-neighbours rule written per position."""
    h, w = grid
    out = tokens.clone()
    for b in range(tokens.shape[0]):
        for i in mask[b].nonzero().flatten().tolist():
            y, x = divmod(i, w)
            nb = [(y + dy) * w + (x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                  if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w and not mask[b, (y + dy) * w + x + dx]]
            if nb:
                out[b, i] = tokens[b, nb].mean(0)
    return out


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (9, 4)])
def test_repair_uses_grid_positions_on_any_grid(grid):
    """Non-square grids too (the reference's row-count indexing is only right for square ones)."""
    g = torch.Generator().manual_seed(grid[0] * 10 + grid[1])
    n = grid[0] * grid[1]
    tokens = torch.randn(2, n, 6, generator=g)
    mask = torch.rand(2, n, generator=g) < 0.3
    mask[0, 0] = mask[0, 1] = mask[0, grid[1]] = mask[0, grid[1] + 1] = True  # a corner with no valid neighbour
    diff = max_abs_diff(repair_tokens(tokens, grid, mask), _repair_loop(tokens, grid, mask),
                        f"methods.scclip.repair.{grid}")
    assert diff < REPAIR_TOL, diff
    assert torch.equal(repair_tokens(tokens, grid, torch.zeros_like(mask)), tokens)


def test_affinity_pieces():
    x = torch.randn(2, 12, 5, generator=torch.Generator().manual_seed(0))
    s = cosine_matrix(x)
    torch.testing.assert_close(torch.diagonal(s, dim1=1, dim2=2), torch.ones(2, 12))
    t = threshold(s, 0.4)
    assert ((t == 0) | (t >= 0.4)).all()
    a = aggregate(t, x)
    torch.testing.assert_close(a, (t / (t.sum(-1, keepdim=True) + 1e-6)) @ x)
    pl = proxy_logits(s, 1.0, 3.0)
    assert pl.shape == (2, 1, 12, 12)
    assert torch.isinf(pl[s.unsqueeze(1) < s.mean((1, 2), keepdim=True).unsqueeze(1)]).all()
    assert torch.isfinite(pl.softmax(-1)).all()  # the diagonal (1) is always above the mean


def test_selfcal_composes_and_handles_whole_non_square_images(clip):
    """The readout plug-in on another rule and on a whole non-square image (11 x 15 grid)."""
    image = np.random.default_rng(0).integers(0, 256, (176, 240, 3), dtype=np.uint8)
    for over in ({"protocol.crop": 0}, {"attention": "qq+kk+mean", "protocol.crop": 0},
                 {"plugins": "selfcal:fuse_layers=,reach=neighbour", "refiners": "pamr:steps=2"}):
        seg = Segmenter("scclip", clip=clip, device="cpu", tokenizer=VOCAB, overrides={"protocol.short_side": None, **over})
        res = seg(image, ["a", "b", "c"], queries=torch.nn.functional.normalize(torch.randn(3, 32), dim=-1))
        assert res.labels.shape == (176, 240)
    r = get_method("naclip").resolve(None, {"plugins": "selfcal:res_cls=0.1", "attention": "kk+mean"})
    assert r.plugins == (SelfCalibration(res_cls=0.1),)
    with pytest.raises(ValueError, match="patch tokens only"):
        bad = Segmenter("scclip", clip=clip, device="cpu", tokenizer=VOCAB, overrides={"plugins": "rcs+selfcal"})
        bad(image, ["a", "b", "c"], queries=torch.nn.functional.normalize(torch.randn(3, 32), dim=-1))


# ---- presets against the reference configs (SuleBai/SC-CLIP@0417ba9) --------------------------
# segmentor defaults scclip_segmentor.py:19-22: crop 224, stride 112, logit_scale 40, prob_thd 0,
# area_thd None, pamr_steps 0; base_config.py:4-8 pre 8, post 3, multi 3..10, res_cls 0.3.
# Columns: Resize short side, logit_scale, prob_thd, area_thd
SCCLIP_TABLE = {
    "voc21": (336, 50.0, 0.15, 0.1),  # cfg_voc21.py:16 Resize; :6 area_thd; :7 logit_scale, prob_thd
    "context60": (336, 40.0, 0.15, None),  # cfg_context60.py:15; :6 prob_thd
    "coco-object": (336, 55.0, 0.35, None),  # cfg_coco_object.py:15; :6 logit_scale, prob_thd
    "voc20": (336, 40.0, 0.0, None),  # cfg_voc20.py:14
    "context59": (336, 40.0, 0.0, None),  # cfg_context59.py:14
    "coco-stuff171": (336, 40.0, 0.0, None),  # cfg_coco_stuff164k.py:14
    "cityscapes": (560, 40.0, 0.0, None),  # cfg_city_scapes.py:14 scale=(2048, 560)
    "ade20k": (336, 40.0, 0.0, None),  # cfg_ade20k.py:14
}
L14_CHANGES = {"voc21": {"prob": 0.2}, "coco-object": {"scale": 40.0, "prob": 0.25}}  # @74471da comments


@pytest.mark.parametrize("l14", [False, True])
@pytest.mark.parametrize("dataset", sorted(SCCLIP_TABLE))
def test_presets_follow_the_configs(dataset, l14):
    from ovss.core.protocol import CLIP_MEAN, CLIP_STD
    from ovss.heads.attention import AttentionRule
    from ovss.heads.dense import Surgery

    short, scale, prob, area = SCCLIP_TABLE[dataset]
    if l14:
        ch = L14_CHANGES.get(dataset, {})
        scale, prob = ch.get("scale", scale), ch.get("prob", prob)
    name = dataset + ("-vit-l14" if l14 else "")
    spec = get_method("scclip")
    r = spec.resolve(name)
    p, d = r.protocol, r.decision
    assert (p.short_side, p.long_cap, p.crop, p.stride, p.pad_to_patch) == (short, 2048, 224, 112, False)
    assert (p.mean, p.std) == (CLIP_MEAN, CLIP_STD)
    assert (d.logit_scale, d.prob_thd, d.area_thd) == (scale, prob, area)
    assert r.refiners == () and r.templates == "imagenet80" and r.pos_resize == "scale_factor"
    assert r.attention == AttentionRule(("kk",), combine="mean") and r.surgery == Surgery(False, False)
    # clip/model.py:247 beta 0.4, :274 LOF 30 / 0.05, :329 x 3.0; base_config.py:4-8 (B/16) or :12-21@74471da (L/14)
    layers = (16, 6, tuple(range(8, 19)), 0.1) if l14 else (8, 3, (3, 4, 5, 6, 7, 8, 9), 0.3)
    assert r.plugins == (SelfCalibration(30, 0.05, "self", *layers, 0.4, 3.0, True),)
    preset = spec.presets[name]
    assert set(preset.sources) >= set(preset.overrides)
    assert all(s.startswith("SC-CLIP ") and ":" in s for s in preset.sources.values())
    assert preset.background == (dataset in ("voc21", "context60", "coco-object"))
    assert (Path(__import__("ovss").__file__).parent / "data" / "classnames" / preset.classes).is_file()
