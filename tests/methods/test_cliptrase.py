"""CLIPtrase (q-q + k-k + v-v block, `cluster` refiner) against the reference code, and the
cluster refiner's pieces (DBSCAN, median filter, vote).

Goldens: tests/golden/cliptrase_small.safetensors from leaves162/CLIPtrase@2b7de61's own
`self_clip` loop (clip_self_correlation.py) on the 12-block tower clip12_small.safetensors, its
data reading, text encoder and metric replaced by stand-ins (tests/golden/make_deep_methods_golden.py;
README there): per run the layer-11 self-correlation map (every 4th row, 224 px runs), sklearn's
DBSCAN labels, the upsampled patch logits (cosines) and the final label map (background = 5).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from deep_parity import GOLDEN, VOCAB, load_golden, small_clip
from measured import max_abs_diff

import ovss
from ovss.backbones.vit import Tap
from ovss.core.protocol import preprocess
from ovss.core.resize import upsample
from ovss.core.segmenter import Segmenter
from ovss.methods import get_method
from ovss.refine import RefineContext
from ovss.refine.cluster import Cluster, dbscan, denoised_affinity, majority_vote, mean_vote, median_filter
from ovss.text.bank import ClassSpec, parse_classes

FILE = GOLDEN / "cliptrase_small.safetensors"
# Tolerances from the max |ours - reference| measured on an Intel Xeon (this machine), identical with
# OMP_NUM_THREADS=1, =2 and torch.set_num_threads(1), with a ~5x margin (float32):
MAP_TOL = 2.5e-6  # layer-11 self-correlation (<= 1.0): 5.2e-7 measured
LOGITS_TOL = 2e-6  # patch logits (|values| <= 0.84): 3.8e-7 .. 4.2e-7 measured
# DBSCAN's labels (a decision) are compared exactly: no distance lies within 1.2e-4 of eps
# (336 px run; 2.7e-4 at 224 px), and ~5e-7 of noise per affinity entry moves a distance between
# rows of 441 entries by at most ~1e-5.
RUNS = {  # run -> (preset, image size, with background)
    "voc21_224": ("repo-224", 224, True),
    "voc20_224": ("voc20-repo-224", 224, False),
    "ade_336": ("repo-336", 336, False),
}


def classes(bg: bool):
    """ovss's class list for the golden queries (c1..c5 then 8 background words, as CLIPtrase
    orders them): with background, class 0 holds the 8 words (the reference's label 5)."""
    if not bg:
        return ClassSpec(tuple((f"c{i}",) for i in range(1, 6))), list(range(5))
    return ClassSpec((tuple(f"bg {c}" for c in "abcdefgh"), *((f"c{i}",) for i in range(1, 6))), background=True), \
        list(range(5, 13)) + list(range(5))


def to_ovss_labels(pred: torch.Tensor, bg: bool) -> np.ndarray:
    return (torch.where(pred == 5, 0, pred + 1) if bg else pred).numpy()


@pytest.fixture(scope="module")
def golden():
    return load_golden(FILE)


@pytest.fixture(scope="module")
def clip():
    return small_clip()


@pytest.fixture(scope="module")
def outputs(golden, clip):
    """Each golden image through `preprocess`, `stitched_logits` and `decide`, traced: the label
    map, the logits the decision reads, and the `cluster` refiner's block-11 self-correlation map
    and DBSCAN labels as it recorded them; "plain" is the same without the clustering."""
    g, _ = golden
    out = {}
    for run, (preset, size, bg) in RUNS.items():
        spec, order = classes(bg)
        q = g["queries"][order]
        image = g[f"{run}.image"].numpy()
        res = {}
        for key, over in (("full", {}), ("plain", {"plugins": "", "refiners": ""})):
            seg = Segmenter("cliptrase", clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                            overrides={"protocol.short_side": None, **over})
            state = seg.preprocess(image, size=(size, size))
            with seg.trace() as t:
                low = seg.stitched_logits(state, q)
                res[key + ".labels"] = seg.decide(low, state, spec).labels
            assert set(seg.trace_names) == set(t), set(seg.trace_names) ^ set(t)
            res[key + ".logits"] = t["logits"][0]
            if key == "full":
                res["cache_hit"] = bool(state.features.get("taps"))  # one window: the readout's own pass
                res["map11"] = t["cluster.self_correlation"][0]
                res["dbscan"] = t["cluster.dbscan"][0]
        out[run] = res
    return out


@pytest.mark.parametrize("run", [r for r in sorted(RUNS) if r.endswith("_224")])  # stored for 224 px only
def test_self_correlation_map_matches_reference(golden, outputs, run):
    g, _ = golden
    ref = g[f"{run}.map11_rows4"]
    diff = max_abs_diff(outputs[run]["map11"][::4], ref, f"methods.cliptrase.{run}.map11")
    assert diff < MAP_TOL, diff


@pytest.mark.parametrize("run", sorted(RUNS))
def test_dbscan_labels_match_sklearn_in_the_reference(golden, outputs, run):
    g, _ = golden
    labels = outputs[run]["dbscan"]
    assert torch.equal(labels, g[f"{run}.dbscan"])
    assert labels.max() >= 2  # several clusters (and some noise)
    assert outputs[run]["cache_hit"]  # one window: the readout's own pass gave the affinity


@pytest.mark.parametrize("run", sorted(RUNS))
def test_logits_match_reference(golden, outputs, run):
    g, step = golden
    ref = g[f"{run}.logits"]
    ours = outputs[run]["plain.logits"][:, ::step, ::step]
    _, order = classes(RUNS[run][2])
    ref = ref[order]  # CLIPtrase's query order -> ovss's
    diff = max_abs_diff(ours, ref, f"methods.cliptrase.{run}.logits")
    assert diff < LOGITS_TOL, diff


@pytest.mark.parametrize("run", sorted(RUNS))
def test_labels_match_reference(golden, outputs, run):
    g, _ = golden
    bg = RUNS[run][2]
    want = to_ovss_labels(g[f"{run}.pred"].long(), bg)
    ours = outputs[run]["full.labels"]
    assert np.array_equal(ours, want)
    assert len(np.unique(want)) >= 3
    # the clustering changed the plain argmax (so the golden tests the vote)
    assert not np.array_equal(outputs[run]["plain.labels"], want)


# ---- pieces ---------------------------------------------------------------------------------
def _sklearn_dbscan(x: torch.Tensor, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn's own DBSCAN (what CLIPtrase calls, clip_self_correlation.py:168-172), brute
    force on float64 points."""
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, algorithm="brute").fit_predict(x.double().numpy())


@pytest.mark.parametrize("seed,eps,m", [(0, 0.5, 3), (1, 0.8, 5), (2, 0.3, 2), (3, 2.0, 4), (4, 0.05, 3),
                                        (5, 1.0, 8), (6, 0.6, 1)])
def test_dbscan_is_sklearns(seed, eps, m):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 3, generator=g) * 2
    x = torch.cat([centres[i] + 0.3 * torch.randn(25, 3, generator=g) for i in range(4)] +
                  [torch.randn(10, 3, generator=g) * 3])
    x = x[torch.randperm(len(x), generator=g)]
    assert np.array_equal(dbscan(x, eps, m).numpy(), _sklearn_dbscan(x, eps, m))


def test_dbscan_ties_and_shared_border_points_as_sklearn():
    """Neighbours exactly eps away count (integer grid, eps = 1); a border point within reach of
    two clusters, listed before and after their cores, goes where sklearn puts it; all noise."""
    line = torch.tensor([[0.0], [1.0], [2.0], [3.0], [5.0], [6.0], [7.0], [9.0]])
    for m in (1, 2, 3, 4):
        assert np.array_equal(dbscan(line, 1.0, m).numpy(), _sklearn_dbscan(line, 1.0, m))
    a = [[0.25 * i, 0.25 * j] for i in range(3) for j in range(3)]  # 9 points: all core at min_samples 8
    b = [[3.0 + 0.25 * i, 0.25 * j] for i in range(3) for j in range(3)]
    p = [[1.75, 0.25]]  # 3 points of each cluster within 1.3: 7 neighbours, a border point of both
    for order in (p + a + b, a + p + b, b + a + p, b + p + a):
        x = torch.tensor(order)
        want = _sklearn_dbscan(x, 1.3, 8)
        assert (want >= 0).all() and len(set(want.tolist())) == 2
        assert np.array_equal(dbscan(x, 1.3, 8).numpy(), want)
    far = torch.arange(6, dtype=torch.float32)[:, None] * 10
    assert np.array_equal(dbscan(far, 1.0, 2).numpy(), _sklearn_dbscan(far, 1.0, 2))


def test_median_filter_is_scipys():
    import scipy.ndimage as nd
    maps = torch.rand(3, 13, 22, generator=torch.Generator().manual_seed(0))
    for size in (3, 7):
        want = np.stack([nd.median_filter(m, size=size) for m in maps.numpy()])
        assert np.array_equal(median_filter(maps, size).numpy(), want)


def test_votes():
    logits = torch.tensor([[[0.9, 0.1], [0.2, 0.3]], [[0.1, 0.8], [0.7, 0.35]], [[0.0, 0.2], [0.1, 0.5]]])
    regions = torch.zeros(2, 2, dtype=torch.long)
    # per query: argmax queries 0, 1, 1, 2 -> classes with q2c [0, 1, 1]: 0, 1, 1, 1 -> majority class 1
    out = majority_vote(logits, regions, [0, 1, 1], 1)
    assert torch.equal(out.argmax(0), torch.tensor([[1, 1], [1, 2]]))
    assert torch.equal(out.sort(0).values, logits.sort(0).values)  # values only swapped per pixel
    assert torch.equal(out[:, 1], logits[:, 1])  # pixels of the winning class are untouched
    m = mean_vote(logits, torch.tensor([[0, 1], [0, 1]]), 2)
    torch.testing.assert_close(m[:, 0, 0], logits[:, :, 0].mean(1))
    w = torch.rand(5, 5)
    d = denoised_affinity(w)
    torch.testing.assert_close(d, (w[1:, 1:] - w[0, 1:]).clamp(min=0))


def test_cluster_refiner_on_windows_and_other_methods(clip):
    """Any method can cluster: with windows the refiner runs one more pass over the whole
    (non-square) image; from Python and the CLI's --set syntax."""
    image = np.random.default_rng(0).integers(0, 256, (130, 190, 3), dtype=np.uint8)
    for method, over in (("sclip", {"refiners": "cluster:eps=0.5,min_samples=3"}),
                         ("naclip", {"refiners": ["pamr:steps=2", "cluster:vote=mean"]}),
                         ("cliptrase", {"protocol.crop": 64, "protocol.stride": 48})):
        seg = Segmenter(method, clip=clip, device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None, **over})
        queries = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
        spec = parse_classes(["a", "b|b2", "c"])
        with torch.no_grad():
            state = seg.preprocess(image)
            low = seg.stitched_logits(state, queries)
            left = state.features  # the per-image state holds what the readout left for refiners
            assert bool(left.get("taps")) == (method != "cliptrase")  # crop 224 > image: one window
            seg.refine(upsample(low, (130, 190)), state, spec)
            assert left["grid"] == (8, 11)  # else one more pass over the whole image
        res = seg(image, ["a", "b|b2", "c"], queries=queries)
        assert res.labels.shape == (130, 190)
        assert not any(isinstance(v, dict) for v in vars(seg).values() if v is not seg.__dict__)  # no per-call caches
        other = seg.preprocess(image)
        assert other.features == {} and other is not state  # nothing is shared between calls
    x = preprocess(image, get_method("cliptrase").resolve(None, {"protocol.short_side": None}).protocol)
    ctx = RefineContext(clip.model.visual, x)
    vals, grid = ctx.tap_values({"t": Tap("qkv", (-2,))})
    assert grid == (8, 11) and len(vals["t"][10]) == 3
    assert get_method("clearclip").resolve(None, {"refiners": "cluster:eps=1.1,min_samples=7"}).refiners == (
        Cluster(eps=1.1, min_samples=7),)


# ---- presets ----------------------------------------------------------------------------------
def test_repo_presets():
    """clip_self_correlation.py: Resize(n_px) (lines 38-43), Normalize (48), one pass (129-145),
    logit_scale.exp() = 100 (154), DBSCAN (0.7, 3) at 224 and (1.1, 7) at 336 (233-234), VOC20's
    class-token prior (159-161); attn2.py:254-277 and model.py:191-195 for the block."""
    from ovss.heads.attention import AttentionRule
    from ovss.heads.cls_prior import ClsPrior
    from ovss.heads.dense import Surgery

    spec = get_method("cliptrase")
    for name, size, eps, m, prior in (("repo-224", 224, 0.7, 3, False), ("repo-336", 336, 1.1, 7, False),
                                      ("voc20-repo-224", 224, 0.7, 3, True), ("voc20-repo-336", 336, 1.1, 7, True)):
        r = spec.resolve(name)
        assert r.protocol.short_side == size and r.protocol.crop == 0
        assert r.protocol.mean == pytest.approx((122.7709383, 116.7460125, 104.09373615))
        assert r.protocol.std == pytest.approx((68.5005327, 66.6321592, 70.32316305))
        assert (r.decision.logit_scale, r.decision.prob_thd, r.decision.area_thd) == (100.0, 0.0, None)
        assert r.refiners == (Cluster(eps, m, -2, 4, "majority"),)
        assert r.plugins == ((ClsPrior(100.0),) if prior else ())
        assert r.attention == AttentionRule(("qq", "kk", "vv")) and r.surgery == Surgery(True, True)
        p = spec.presets[name]
        assert set(p.sources) >= set(p.overrides)
        assert all(s.startswith("CLIPtrase ") and ":" in s for s in p.sources.values())
    assert spec.recipe == spec.resolve("repo-224")


def test_standard_presets_take_sclips_protocol():
    spec, sclip = get_method("cliptrase"), get_method("sclip")
    for name in ("voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff171", "cityscapes", "ade20k"):
        r, s = spec.resolve(name), sclip.resolve(name)
        assert r.protocol == s.protocol
        assert (r.decision.logit_scale, r.decision.prob_thd, r.decision.area_thd) == (
            s.decision.logit_scale, s.decision.prob_thd, None)
        assert r.refiners == (Cluster(1.1, 7),)
        assert spec.presets[name].classes == sclip.presets[name].classes
        assert spec.presets[name].sources["protocol.crop"].startswith("SCLIP ")
        assert spec.presets[name].eval_protocol == "mmseg"


# Its own protocol per benchmark: ovss benchmark -> (its dataset_cfg.py key and lines, background,
# classes, queries, class 0's first queries, the last class). Queries: VOC21 33 background words
# with "bed" twice (one query here: duplicates give equal logits) and "beach" "hill" run together
# into "beachhill" (line 53); COCO80_val 107 background words (line 16); PC60 ["background"] (37).
OWN = {
    "voc21": ("VOC21 49-54", True, 21, 20 + 32, ("background", "sky", "wall"), ("tv",)),
    "voc20": ("VOC20 44-48", False, 20, 20, ("aeroplane",), ("tv",)),
    "context60": ("PC60 33-38", True, 60, 60, ("background",), ("wood",)),
    "context59": ("PC59 28-32", False, 59, 59, ("aeroplane",), ("wood",)),
    "coco-object": ("COCO80_val 12-17", True, 81, 80 + 107, ("textile", "building", "furniture"), ("toothbrush",)),
    "coco-stuff171": ("COCO171_val 18-22", False, 171, 171, ("person",), ("wood",)),
    "ade20k": ("ADE150 2-6", False, 150, 150, ("wall",), ("flag",)),
}


@pytest.mark.parametrize("name", sorted(OWN))
@pytest.mark.parametrize("size", [224, 336])
def test_own_protocol_presets(name, size):
    """`<benchmark>-repo-<size>`: the model side of `repo-<size>` (clip_self_correlation.py:233-234
    for DBSCAN, 159-161 for VOC20's class-token prior), its class lists (configs/dataset_cfg.py),
    the background flag of its with_bg datasets (line 115) and its evaluation protocol."""
    from ovss.heads.cls_prior import ClsPrior

    where, bg, n_cls, n_q, first, last = OWN[name]
    spec = get_method("cliptrase")
    p = spec.presets[f"{name}-repo-{size}"]
    r = spec.resolve(f"{name}-repo-{size}")
    base = spec.resolve(f"repo-{size}")
    assert r.plugins == ((ClsPrior(100.0),) if name == "voc20" else ())
    assert r.with_overrides({"plugins": ""}) == base.with_overrides({"plugins": ""})
    assert r.protocol.short_side == size and r.refiners == ((Cluster(0.7, 3, -2, 4, "majority"),) if size == 224
                                                           else (Cluster(1.1, 7, -2, 4, "majority"),))
    assert p.eval_protocol == "cliptrase" and spec.presets[f"repo-{size}"].eval_protocol == "cliptrase"
    assert p.background is bg
    key, lines = where.split()
    assert p.sources["classes"].startswith(f"CLIPtrase configs/dataset_cfg.py:{lines} {key} ")
    assert p.sources["eval_protocol"].startswith("CLIPtrase clip_self_correlation.py:")
    assert p.classes == f"cliptrase/cls_{ {'coco-object': 'coco_object', 'coco-stuff171': 'coco_stuff'}.get(name, name)}.txt"
    classes = parse_classes(Path(ovss.__file__).parent / "data" / "classnames" / p.classes, background=bg)
    assert len(classes) == n_cls and len(classes.queries) == n_q and classes.background is bg
    assert classes.synonyms[0][:len(first)] == first and classes.synonyms[-1] == last
    if name == "voc21":
        assert "beachhill" in classes.synonyms[0] and classes.synonyms[0].count("bed") == 1
    if name == "ade20k":
        assert classes.synonyms[7] == ("bed",)  # "bed " in the list; the tokenizer drops the space


def test_methods_command_shows_the_evaluation_protocol(capsys):
    """`ovss methods` says which presets score with CLIPtrase's own protocol, and the JSON too."""
    import json

    from ovss.apps.cli import main

    assert main(["methods", "cliptrase"]) == 0
    out = capsys.readouterr().out
    block = out.split("  preset voc21-repo-224:")[1].split("  preset ")[0]
    assert "evaluation protocol: cliptrase" in block and "classes: cliptrase/cls_voc21.txt" in block
    std = out.split("  preset voc21:")[1].split("  preset ")[0]
    assert "evaluation protocol" not in std
    assert main(["methods", "cliptrase", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["cliptrase"]["presets"]
    assert d["voc21-repo-224"]["eval_protocol"] == "cliptrase" and d["voc21"]["eval_protocol"] == "mmseg"
