"""ResCLIP (RCS + SFR head plug-ins) against the reference code, and its pieces.

Goldens: tests/golden/resclip_small.safetensors from yvhangyang/ResCLIP@0e085f7 on the 12-block
tower clip12_small.safetensors (tests/golden/make_deep_methods_golden.py; README there). Each run
holds the reference's per-pixel logits (what its segmentor hands to postprocess_result), its label
map, the first window's seed label map, and for the whole-image runs A_c (the mean attention of
blocks 6-9) and the SFR matrix. ovss's `Segmenter` runs the `resclip` presets on the same image
with the golden queries (`queries=`) and no test-time resize; the intermediate stages come from
the public trace (`seg(..., trace=True).trace`: "rcs.attention", "sfr.seed_labels", ...).
"""


import numpy as np
import pytest
import torch
from deep_parity import GOLDEN, VOCAB, assert_labels_equal, load_golden, small_clip, spec_of
from measured import max_abs_diff

from ovss.core.segmenter import Segmenter
from ovss.heads.feedback import SFR, label_affinity, line_of_sight, patch_mode
from ovss.heads.rcs import RCS
from ovss.methods import get_method

FILE = GOLDEN / "resclip_small.safetensors"
# Tolerances from the max |ours - reference| measured on an Intel Xeon (this machine), identical with
# OMP_NUM_THREADS=1, =2 and torch.set_num_threads(1), with a ~5x margin (float32):
TOL = 1.5e-6  # logits (|values| <= 0.64): 1.9e-7 (clearclip) .. 2.7e-7 (whole224) measured
A_C_TOL = 5e-8  # mean middle-layer attention (<= 0.017): 5.6e-9 / 7.5e-9 measured
SFR_TOL = 3e-7  # the SFR matrix (<= 0.08): 0 measured; the float32 floor (~1e-6 of its scale) x 3
# run -> (preset, overrides, network input size); the reference settings are the preset's
RUNS = {
    "whole224": ("voc21", {}, (224, 224)),  # whole image, prob_thd 0.1, temp_thd 0.5, (2.0, 0.3), (2.2, 0.7)
    "whole_ns": ("voc20", {}, (170, 250)),  # whole image, 10x15 grid + remainder; (2.0, 0.6), (2.1, 0.6)
    "slide": ("context60", {}, (240, 288)),  # 4 windows 224/112; prob_thd 0.1, temp_thd 0.3
    "sclip": ("ade20k-on-sclip", {"protocol.crop": 0}, (224, 224)),  # w_resi + sclip strategy
    "clearclip": ("context59-on-clearclip", {}, (240, 288)),  # wo_resi + clearclip strategy
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
    and the first window's A_c, seed map and SFR matrix as the plug-ins recorded them."""
    g, _ = golden
    q = g["queries"]
    spec = spec_of(g["query_to_class"].tolist())
    out = {}
    for run, (preset, over, (h, w)) in RUNS.items():
        image = g[f"image_{h}x{w}"].numpy()
        ori = tuple(g[f"{run}.ori_shape"].tolist())
        seg = Segmenter("resclip", clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None, **over})
        res = seg(image, spec, queries=q, size=ori, trace=True)
        t = res.trace
        assert set(seg.trace_names) == set(t), set(seg.trace_names) ^ set(t)
        out[run] = dict(logits=t["logits"][0], labels=res.labels.astype(np.int64),
                        a_c=t["rcs.attention"][0][0],  # the first batch of windows' first window
                        seed=t["sfr.seed_labels"][0][0], prior=t["sfr.prior"][0][0, 0],
                        raw=t["sfr.affinity"][0][0, 0], seg=seg)
    return out


@pytest.mark.parametrize("run", sorted(RUNS))
def test_logits_match_reference(golden, outputs, run):
    g, step = golden
    ref = g[f"{run}.logits"]
    diff = max_abs_diff(outputs[run]["logits"][:, ::step, ::step], ref, f"methods.resclip.{run}.logits")
    assert diff < TOL, diff


@pytest.mark.parametrize("run", sorted(RUNS))
def test_labels_match_reference(golden, outputs, run):
    g, _ = golden
    ref = g[f"{run}.labels"].numpy().astype(np.int64)
    o = outputs[run]
    assert_labels_equal(o["labels"], ref, o["logits"], spec_of(g["query_to_class"].tolist()),
                        o["seg"].recipe.decision)
    assert len(np.unique(ref)) >= 3  # not a trivial map


@pytest.mark.parametrize("run", sorted(RUNS))
def test_seed_label_map_matches_reference(golden, outputs, run):
    g, _ = golden
    ref = g[f"{run}.seed"].long()
    assert torch.equal(outputs[run]["seed"], ref)
    assert len(ref.unique()) >= 5


@pytest.mark.parametrize("run", ["whole224", "whole_ns"])
def test_middle_attention_and_prior_match_reference(golden, outputs, run):
    g, _ = golden
    ref = g[f"{run}.rcs_rows8"]
    diff = max_abs_diff(outputs[run]["a_c"][:, ::8], ref, f"methods.resclip.{run}.a_c")
    assert diff < A_C_TOL, diff
    # the SFR matrix as generate_attention_sfr returns it (before custom_attn's max division and
    # float16 cast, which `SFR.prior` adds: checked through the logits above)
    ref = g[f"{run}.prior_rows4"]
    diff = max_abs_diff(outputs[run]["raw"][::4], ref, f"methods.resclip.{run}.sfr")
    assert diff < SFR_TOL, diff
    assert outputs[run]["prior"].dtype == torch.float16
    torch.testing.assert_close(outputs[run]["prior"], (outputs[run]["raw"] / outputs[run]["raw"].max()).half(),
                               rtol=0, atol=0)


def test_the_seed_threshold_acts_in_the_goldens(golden, clip):
    """temp_thd sends pixels to query 0 in the golden's seed map: without it the map changes."""
    from dataclasses import replace

    g, _ = golden
    rcs, sfr = get_method("resclip").resolve("voc21").plugins
    seeds = []
    for plugins in ((rcs, sfr), (rcs, replace(sfr, seed_thd=0.0))):
        seg = Segmenter("resclip", clip=clip, preset="voc21", device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None, "plugins": plugins})
        with seg.trace() as t:
            seg.stitched_logits(seg.preprocess(g["image_224x224"].numpy()), g["queries"])
        seeds.append(t["sfr.seed_labels"][0][0])
    seed, no_thd = seeds
    assert torch.equal(seed, g["whole224.seed"].long())
    assert (seed == 0).sum() > (no_thd == 0).sum()


# ---- the pieces -----------------------------------------------------------------------------
def _reference_check_path(labels: torch.Tensor) -> torch.Tensor:
    """ResCLIP's check_path on every pair at once, restated (clip/model.py:132-148, 167-191)."""
    h, w = labels.shape
    n = h * w
    idx = torch.arange(n)
    i, j = torch.meshgrid(idx, idx, indexing="ij")
    start = torch.stack((torch.div(i, w, rounding_mode="floor"), i % w), -1).view(-1, 2)
    end = torch.stack((torch.div(j, w, rounding_mode="floor"), j % w), -1).view(-1, 2)
    steps = (end - start).abs().max(1)[0]
    m = steps.max().item()
    t = torch.linspace(0, 1, steps=m + 1).unsqueeze(1).unsqueeze(0)
    cur = (start.unsqueeze(1) * (1 - t) + end.unsqueeze(1) * t).round().long()
    live = torch.arange(m + 1).unsqueeze(0) <= steps.unsqueeze(1)
    ok = (labels[cur[:, :, 0], cur[:, :, 1]] == labels[start[:, 0], start[:, 1]].unsqueeze(1)) | ~live
    return ok.all(1).view(n, n)


@pytest.mark.parametrize("shape", [(5, 7), (9, 4), (1, 6), (8, 8)])
def test_line_of_sight_is_the_references_in_chunks(shape, monkeypatch):
    import ovss.heads.feedback as fb

    labels = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(sum(shape)))
    want = _reference_check_path(labels)
    monkeypatch.setattr(fb, "_CHUNK", 50)  # many chunks
    assert torch.equal(line_of_sight(labels, "partial"), want)


def test_full_line_of_sight_fixes_the_partial_segment():
    """A U-shaped region: the arms' tips cannot see each other through the gap, but the code's
    sampling stops short of the far end for short pairs and calls some of them connected."""
    lab = torch.zeros(7, 7, dtype=torch.long)
    lab[:5, 2:5] = 1  # the gap between the arms, open at the top
    full = line_of_sight(lab, "full")
    part = line_of_sight(lab, "partial")
    a, b = 0 * 7 + 0, 0 * 7 + 6  # (0, 0) and (0, 6): both label 0, path crosses label 1
    assert not full[a, b]
    # rectangles are convex: every same-label pair inside one sees the other in both modes
    rect = torch.zeros(6, 6, dtype=torch.long)
    rect[1:4, 1:5] = 1
    inside = (rect.flatten() == 1).nonzero().flatten()
    for m in ("full", "partial"):
        v = line_of_sight(rect, m)
        assert v[inside][:, inside].all()
    assert (part & ~full).any()  # the partial test accepts paths the full test rejects


def test_label_affinity_rows_and_smoothing():
    lab = torch.randint(0, 4, (6, 9), generator=torch.Generator().manual_seed(0))
    for smooth in ("raster", "grid", "none"):
        for line in ("partial", "full", "none"):
            a = label_affinity(lab, line, 5.0, smooth)
            assert a.shape == (54, 54)
            torch.testing.assert_close(a.sum(1), torch.ones(54), rtol=0, atol=1e-5)
            assert (a >= 0).all()
    # without smoothing or damping it is the same-label indicator, row-normalised
    a = label_affinity(lab, "none", 5.0, "none")
    same = (lab.flatten()[:, None] == lab.flatten()[None]).float()
    torch.testing.assert_close(a, same / same.sum(1, keepdim=True))


def test_patch_mode_ties_go_to_the_smallest_label():
    px = torch.tensor([[3, 3, 1, 1], [2, 2, 0, 0], [5, 5, 5, 4], [4, 4, 4, 5]])[None]
    out = patch_mode(px, 2, 6)
    assert out.tolist() == [[[2, 0], [4, 4]]]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (2, 35, 50), generator=g)
    ref = x[:, :32, :48].unfold(1, 16, 16).unfold(2, 16, 16).reshape(2, 2, 3, -1).mode(-1)[0]
    assert torch.equal(patch_mode(x, 16, 5), ref)


def test_plugins_compose_from_strings_and_with_other_methods(clip):
    """RCS/SFR are plug-ins of any recipe: by name from Python and the CLI's --set syntax."""
    r = get_method("naclip").resolve(None, {"plugins": "rcs:weight=0.4+sfr:scale=1.8,weight=0.7,seed_thd=0.11",
                                            "refiners": "pamr"})
    assert r.plugins == (RCS(weight=0.4), SFR(scale=1.8, weight=0.7, seed_thd=0.11))
    assert get_method("resclip").resolve("context60").plugins == (
        RCS(scale=2.0, weight=0.3), SFR(scale=1.8, weight=0.7, seed_thd=0.3))
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    for method, over in (("sclip", {"plugins": "rcs"}), ("clearclip", {"plugins": ["sfr:seed_thd=0.2"]}),
                         ("naclip", {"plugins": "rcs+sfr", "refiners": "pamr:steps=2"})):
        seg = Segmenter(method, clip=clip, device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None, "protocol.crop": 48, "protocol.stride": 32, **over})
        res = seg(image, ["a", "b", "c"], queries=torch.nn.functional.normalize(torch.randn(3, 32), dim=-1))
        assert res.labels.shape == (60, 90)
        assert res.settings["recipe"]["plugins"]


def test_cli_composes_plugins(tmp_path):
    from ovss.apps.cli import parse_overrides

    over = parse_overrides(["plugins=rcs:layers=4|5+sfr:line=full,smooth=grid,half=False", "refiners=pamr"])
    r = get_method("clearclip").resolve(None, over)
    assert r.plugins == (RCS(layers=(4, 5)), SFR(line="full", smooth="grid", half=False))


def test_sfr_prior_is_bounded_on_a_whole_voc_image():
    """SFR on a 21x31 patch grid (a whole 336x500 image): no pairwise path tensor is built."""
    import ovss.heads.feedback as fb

    lab = torch.randint(0, 6, (21, 31), generator=torch.Generator().manual_seed(0))
    n = 21 * 31
    rows = max(1, fb._CHUNK // (n * 31))
    assert rows * n * 31 <= fb._CHUNK  # positions per chunk; the reference holds n*n*31 at once
    prior = SFR().prior(lab[None])
    assert prior.shape == (1, 1, n + 1, n + 1) and prior.dtype == torch.float16
    assert float(prior.float().max()) == 1.0 and (prior[0, 0, 0] == 0).all()


# ---- presets against the reference configs (yvhangyang/ResCLIP@0e085f7) ----------------------
# segmentor defaults, resclip_segmentor.py:23-26: crop 224, stride 112, logit_scale 40, prob_thd 0,
# pamr_steps 0, area_thd None; RCS layers 6-9 (clip/model.py:327-329); SFR seed PAMR(10, (8, 16))
# (clip/model.py:279), seed softmax x logit_scale (line 287), smoothing std = gaussian_std 5
# (README: test_all.sh wo_resi resclip 5); delete_same_entity=True in every config.
# Columns: Resize short side, crop (0 = whole image), prob_thd, temp_thd, RCS (tau, lambda), SFR (tau, lambda)
RESCLIP_TABLE = {
    "voc21": (336, 0, 0.1, 0.50, (2.0, 0.3), (2.2, 0.7)),  # cfg_voc21.py:20; :6; :7; :8; :10; :11
    "context60": (336, 224, 0.1, 0.30, (2.0, 0.3), (1.8, 0.7)),  # cfg_context60.py:19; :6; -; :7; :9; :10
    "coco-object": (336, 224, 0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),  # cfg_coco_object.py:19; :6; -; :7; :9; :10
    "voc20": (336, 0, 0.0, 0.10, (2.0, 0.6), (2.1, 0.6)),  # cfg_voc20.py:19; -; :6; :7; :9; :10
    "context59": (336, 224, 0.0, 0.25, (2.0, 0.4), (1.8, 0.7)),  # cfg_context59.py:18; -; -; :6; :8; :9
    "coco-stuff171": (336, 224, 0.0, 0.11, (2.0, 0.4), (1.8, 0.7)),  # cfg_coco_stuff164k.py:18; :6; :8; :9
    "cityscapes": (560, 224, 0.0, 0.10, (2.0, 0.2), (2.1, 0.6)),  # cfg_city_scapes.py:18 (2048, 560); :6; :8; :9
    "ade20k": (336, 224, 0.0, 0.25, (2.0, 0.3), (2.1, 0.7)),  # cfg_ade20k.py:18; :6; :8; :9
}
BASE_TABLE = {  # eval.py --arch/--attn (test_all.sh); clip/model.py custom_attn branches
    "": ("kk+gaussian:5", False, False),  # wo_resi + resclip (= naclip branch, lines 473-494)
    "-on-sclip": ("qq+kk", True, True),  # w_resi + sclip (lines 519-541)
    "-on-clearclip": ("qq", False, False),  # wo_resi + clearclip (lines 543-563)
}
NAMES = {"voc21": "voc21", "context60": "context60", "coco-object": "coco_object", "voc20": "voc20",
         "context59": "context59", "coco-stuff171": "coco_stuff", "cityscapes": "city_scapes", "ade20k": "ade20k"}


@pytest.mark.parametrize("suffix", sorted(BASE_TABLE))
@pytest.mark.parametrize("dataset", sorted(RESCLIP_TABLE))
def test_presets_follow_the_configs(dataset, suffix):
    from ovss.core.protocol import CLIP_MEAN, CLIP_STD
    from ovss.heads.attention import AttentionRule
    from ovss.heads.dense import Surgery

    short, crop, prob, temp, rcs, sfr = RESCLIP_TABLE[dataset]
    rule, res, ffn = BASE_TABLE[suffix]
    spec = get_method("resclip")
    preset = spec.presets[dataset + suffix]
    r = spec.resolve(dataset + suffix)
    p, d = r.protocol, r.decision
    assert (p.short_side, p.long_cap, p.crop, p.stride, p.pad_to_patch) == (short, 2048, crop, 112, False)
    assert (p.mean, p.std) == (CLIP_MEAN, CLIP_STD)
    assert (d.logit_scale, d.prob_thd, d.area_thd) == (40.0, prob, None)
    assert r.refiners == () and r.templates == "imagenet80" and r.pos_resize == "scale_factor"
    assert r.attention == AttentionRule.parse(rule) and r.surgery == Surgery(res, ffn)
    assert r.plugins == (RCS((5, 6, 7, 8), *rcs),
                         SFR(sfr[0], sfr[1], seed_thd=temp, logit_scale=40.0, pamr_steps=10,
                             pamr_dilations=(8, 16), line="partial", std=5.0, smooth="raster", half=True))
    assert preset.classes == f"sclip/cls_{NAMES[dataset]}.txt"
    assert preset.background == (dataset in ("voc21", "context60", "coco-object"))
    assert set(preset.sources) >= set(preset.overrides)
    assert all(s.startswith("ResCLIP ") and ":" in s for s in preset.sources.values())
    assert f"cfg_{NAMES[dataset] if dataset != 'coco-stuff171' else 'coco_stuff164k'}.py" in preset.sources["plugins"]


@pytest.mark.parametrize("dataset", sorted(RESCLIP_TABLE))
def test_fixed_presets_change_only_the_quirks(dataset):
    spec = get_method("resclip")
    a, b = spec.resolve(dataset), spec.resolve(f"{dataset}-fixed")
    assert a.protocol == b.protocol and a.decision == b.decision and a.attention == b.attention
    assert a.plugins[0] == b.plugins[0]
    from dataclasses import replace

    assert b.plugins[1] == replace(a.plugins[1], line="full", smooth="grid", half=False)
    assert "ovss variant" in spec.presets[f"{dataset}-fixed"].note


def test_default_recipe_is_naclip_plus_resclip():
    r = get_method("resclip").recipe
    naclip = get_method("naclip").recipe
    assert r.attention == naclip.attention and r.surgery == naclip.surgery
    assert r.refiners == ()  # pamr_steps=0 (resclip_segmentor.py:24)
    assert [type(p) for p in r.plugins] == [RCS, SFR]
    assert "resclip" in __import__("ovss").methods.list_methods()
