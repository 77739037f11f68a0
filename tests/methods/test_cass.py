"""CASS through ovss against the reference segmentor (golden from tests/golden/make_cass_golden.py:
CASS's own predict() with the clip_small CLIP and the small `dino` DINO of dino_small.safetensors,
seeded; runs `slide` (224/112 windows, stretched singular values, whole-image prior), `city`
(Cityscapes: no stretching, per-window prior) and `whole` (one pass, DINO input squashed))."""

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
from ovss.heads.cass import CASSHead
from ovss.heads.vfm import register_vfm
from ovss.methods import get_method
from ovss.ops.hierarchy import ward_clusters
from ovss.text.bank import ClassSpec

GOLDEN = Path(__file__).parents[1] / "golden"
VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"

# run -> (preset, plug-in settings) as make_cass_golden.py's RUNS
# measured on an Intel Xeon (this machine), identical with OMP_NUM_THREADS=1, =2 and
# torch.set_num_threads(1): head-matching cost (values <= 0.94) 0 .. 6.9e-6 (city window 1), logits
# (<= 0.22) 3.4e-7 (whole), 3.1e-6 (slide), 7.8e-6 (city) (float32, eigen solvers and randomised SVD);
# the bounds are 7x and 6.4x the largest, for other CPUs' summation orders. The assignments the
# costs feed are compared exactly, the label maps but at float ties (assert_labels_equal).
COST_TOL = 5e-5
LOGITS_TOL = 5e-5
RUNS = {
    "slide": ("context60", "text_weight=0.04,prior_weight=0.25,cluster_threshold=0.1,stretch=True,global_cls=image",
              {"protocol.crop": 224, "decision.prob_thd": 0.1}),
    "city": ("cityscapes", "text_weight=0.03,prior_weight=0.1,cluster_threshold=0.1,stretch=False,global_cls=window",
             {"protocol.crop": 224, "decision.prob_thd": 0.0}),
    "whole": ("voc21", "text_weight=0.03,prior_weight=0.1,cluster_threshold=0.1,stretch=True,global_cls=image",
              {"protocol.crop": 0, "decision.prob_thd": 0.1}),
}


@pytest.fixture(scope="module")
def golden():
    f = GOLDEN / "cass_small.safetensors"
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
    return load_file(str(f)), int(meta["logits_step"]), int(meta["seed"])


@pytest.fixture(scope="module")
def clip():
    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    register_vfm("golden-dino", create_dino(weights={k[7:]: v for k, v in dg.items() if k.startswith("dino.w.")}).model)
    return create_clip(str(GOLDEN / "clip_small.safetensors"))


def _spec(q2c):
    groups = [tuple(f"q{q}" for q, c in enumerate(q2c) if c == k) for k in range(max(q2c) + 1)]
    return ClassSpec(tuple(groups), background=True)


def _segmenter(clip, run, seed, **extra):
    preset, plugin, overrides = RUNS[run]
    more = ",".join(f"{k}={v}" for k, v in extra.items())
    return Segmenter("cass", clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                     overrides={"protocol.short_side": None, **overrides,
                                "plugins": f"cass:vfm=golden-dino,seed={seed},{plugin}" + (f",{more}" if more else "")})


def _run(seg, g, run, trace=None):
    """The golden image through `preprocess`, `stitched_logits` and `decide` (traced into
    `trace` when given) -> (the full-size logits the decision reads, the label map)."""
    spec = _spec(g["query_to_class"].tolist())
    image = g[f"{run}.image"]
    ori = tuple(image.shape[:2])
    state = seg.preprocess(image.numpy(), size=ori)
    with seg.trace() as t:
        low = seg.stitched_logits(state, g["queries"])
        labels = seg.decide(low, state, spec).labels
    if trace is not None:
        trace.update(t)
    return t["logits"][0], torch.as_tensor(labels)


def test_text_clusters_match_reference(golden):
    g, _, _ = golden
    ours = ward_clusters(g["queries"], 0.1)
    ref = g["clusters"].numpy()
    same = (ours[:, None] == ours[None, :]) == (ref[:, None] == ref[None, :])
    assert same.all()
    assert len(set(ref.tolist())) < len(ref)  # the golden has real clusters, not only singletons


@pytest.mark.parametrize("run", list(RUNS))
def test_logits_and_labels_match_reference(golden, clip, run):
    g, step, seed = golden
    seg = _segmenter(clip, run, seed)
    t = {}
    logits, labels = _run(seg, g, run, t)
    assert set(seg.trace_names) == set(t), set(seg.trace_names) ^ set(t)
    n_win = len([k for k in g if k.startswith(f"{run}.cost")])
    assert len(t["cass.cost"]) == len(t["cass.assignment"]) == n_win  # one head matching per window
    for i, (cost, cols) in enumerate(zip(t["cass.cost"], t["cass.assignment"])):
        # the decision the cost's ties feed (the head assignment) must be the reference's; the
        # cost itself depends on the CPU's summation order (eigen solvers, matmul kernels)
        assert torch.equal(cols, g[f"{run}.cols{i}"].to(cols.dtype))
        cdiff = max_abs_diff(cost, g[f"{run}.cost{i}"], f"methods.cass.{run}.cost{i}")
        assert cdiff < COST_TOL, cdiff
    # the queries' Ward clusters the presence step used: the reference's partition
    ours, ref = t["cass.clusters"][0], g["clusters"].numpy()
    assert ((ours[:, None] == ours[None, :]) == (ref[:, None] == ref[None, :])).all()
    diff = max_abs_diff(logits[:, ::step, ::step], g[f"{run}.logits"], f"methods.cass.{run}.logits")
    assert diff < LOGITS_TOL, diff
    decision = get_method("cass").resolve(RUNS[run][0], RUNS[run][2]).decision
    assert_labels_equal(labels.numpy(), g[f"{run}.labels"].numpy().astype(np.int64), logits,
                        _spec(g["query_to_class"].tolist()), decision)


def test_seed_decides_the_randomised_svd(golden, clip):
    """Another seed changes the low-rank DINO graph (the golden's match needs the same draws);
    the same seed gives identical output; svd=exact is close to both."""
    g, step, seed = golden
    a, _ = _run(_segmenter(clip, "slide", seed), g, "slide")
    b, _ = _run(_segmenter(clip, "slide", seed), g, "slide")
    c, _ = _run(_segmenter(clip, "slide", seed + 1), g, "slide")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    e, _ = _run(_segmenter(clip, "slide", 1, svd="exact"), g, "slide")
    assert 0 < (e - a).abs().max() < 0.05  # a rank-10 randomised SVD is close to the exact one


def test_presets_cite_the_configs():
    spec = get_method("cass")
    table = {  # preset: (short side, crop, prob_thd, gsw, mvw, h, stretch, global_cls)
        "voc21": (336, 0, 0.1, 0.1, 0.03, 0.10, True, "image"),
        "context60": (336, 224, 0.1, 0.25, 0.04, 0.09, True, "image"),
        "coco-object": (336, 224, 0.1, 0.25, 0.01, 0.10, True, "image"),
        "voc20": (336, 224, 0.0, 0.4, 0.02, 0.10, False, "image"),
        "context59": (336, 224, 0.0, 0.25, 0.04, 0.09, True, "image"),
        "coco-stuff171": (336, 224, 0.0, 0.2, 0.02, 0.02, True, "image"),
        "cityscapes": (560, 224, 0.0, 0.1, 0.03, 0.14, False, "window"),
        "ade20k": (336, 224, 0.0, 0.3, 0.05, 0.06, True, "image"),
    }
    assert set(spec.presets) == set(table)
    for name, (short, crop, thd, gsw, mvw, h, stretch, gcls) in table.items():
        r = spec.resolve(name)
        head = r.plugins[0]
        assert isinstance(head, CASSHead)
        assert (r.protocol.short_side, r.protocol.crop, r.protocol.stride) == (short, crop, 112), name
        assert r.decision.prob_thd == thd and r.decision.logit_scale == 40.0, name
        assert (head.prior_weight, head.text_weight, head.cluster_threshold) == (gsw, mvw, h), name
        assert (head.stretch, head.global_cls, head.vfm) == (stretch, gcls, "dino-vitb8"), name
        assert str(r.attention) == "kk+gaussian:5" and not r.surgery.residual and not r.surgery.ffn
        preset = spec.presets[name]
        assert all(k in preset.sources for k in preset.overrides), name
        assert "CASS configs/cfg_" in preset.sources["plugins"]


def test_exact_dino_input_and_matched_pairing_run(golden, clip):
    """The corrected modes run and differ from the faithful ones (they are not the reference)."""
    g, _, seed = golden
    a, _ = _run(_segmenter(clip, "whole", seed), g, "whole")
    b, _ = _run(_segmenter(clip, "whole", seed, dino_input="exact", pairing="matched"), g, "whole")
    assert a.shape == b.shape and torch.isfinite(b).all()
    assert not torch.equal(a, b)


def test_refiners_compose_with_cass(golden, clip):
    """CASS's stitched logits go through any refiner, e.g. PAMR (off in CASS's own runs)."""
    g, _, seed = golden
    preset, plugin, overrides = RUNS["whole"]
    seg = Segmenter("cass", clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                    overrides={"protocol.short_side": None, **overrides, "refiners": "pamr",
                               "plugins": f"cass:vfm=golden-dino,seed={seed},{plugin}"})
    a, _ = _run(_segmenter(clip, "whole", seed), g, "whole")
    b, _ = _run(seg, g, "whole")
    assert b.shape == a.shape and not torch.equal(a, b)


def test_dinov2_graph_option_runs(golden, clip):
    """The reference's DINOv2 option (registers dropped, crops resized to 518x518 bilinearly):
    runs on a small DINOv2-with-registers model and gives a different graph than DINO's."""
    g, _, seed = golden
    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    register_vfm("golden-dinov2r", create_dino(weights={k[10:]: v for k, v in dg.items()
                                                         if k.startswith("dinov2r.w.")}).model)
    a, _ = _run(_segmenter(clip, "whole", seed), g, "whole")
    preset, _, overrides = RUNS["whole"]
    seg = Segmenter("cass", clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                    overrides={"protocol.short_side": None, **overrides,
                               "plugins": f"cass:vfm=golden-dinov2r,dino_side=518,seed={seed}"})
    b, _ = _run(seg, g, "whole")
    assert b.shape == a.shape and torch.isfinite(b).all() and not torch.equal(a, b)


def test_presence_plugin_on_another_method(golden, clip):
    """CASS's text side on NACLIP's readout (`plugins=presence`): weights 0 leave NACLIP's logits
    as they are; weights > 0 change them by exactly the blend with the class-token prior when
    the text is not moved (text_weight 0)."""
    from ovss.heads.presence import class_token_prior

    g, _, _ = golden
    image = g["whole.image"].numpy()

    def low(plugins):
        seg = Segmenter("naclip", clip=clip, preset="voc21", device="cpu", tokenizer=VOCAB,
                        overrides={"protocol.short_side": None, "protocol.crop": 0, "plugins": plugins})
        with torch.no_grad():
            state = seg.preprocess(image)
            out = seg.stitched_logits(state, g["queries"])
        return out, state.x, seg

    base, x, seg = low("")
    zero, _, _ = low("presence:text_weight=0,prior_weight=0")
    assert torch.allclose(base, zero, atol=1e-6)
    blend, _, _ = low("presence:text_weight=0,prior_weight=0.5")
    with torch.no_grad():
        prior = class_token_prior(seg.visual, seg.visual.forward_tokens(x).tokens, g["queries"])[0]
    assert torch.allclose(blend, 0.5 * base + 0.5 * prior[:, None, None], atol=1e-6)
    moved, _, _ = low("presence:text_weight=0.5,prior_weight=0")
    assert not torch.allclose(base, moved, atol=1e-3)


def test_cli_segment_with_a_local_dino_file(tmp_path):
    """`ovss segment --method cass` with the shipped demo CLIP and a DINO checkpoint file in the
    official layout named through the plug-in (how users run it offline); a DINO with another
    number of heads than CLIP's is refused by name."""
    import json
    import subprocess
    import sys

    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    dino = tmp_path / "dino_small.pth"
    torch.save({k[7:]: v for k, v in dg.items() if k.startswith("dino.w.")}, dino)
    assets = Path(__file__).parents[2] / "src/ovss/data/assets/examples"
    cmd = [sys.executable, "-m", "ovss", "segment", str(assets / "scene_a.png"), "--classes-file",
           str(assets / "scene_a.txt"), "--backbone", "tiny-synthetic", "--method", "cass", "--preset", "voc20",
           "--set", f"plugins=cass:vfm={dino},stretch=False", "--out", str(tmp_path / "out")]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OVSS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "out" / "scene_a.json").read_text())
    assert side["method"] == "cass" and (tmp_path / "out" / "scene_a.png").exists()
    visual = create_clip(str(GOLDEN / "clip_small.safetensors")).model.visual  # 2 heads
    tok = visual.forward_tokens(torch.randn(1, 3, 64, 64))
    r = get_method("cass").recipe
    with pytest.raises(ValueError, match="the DINO model has 3 heads, CLIP's last block 2"):
        CASSHead().features(visual, r.attention, r.surgery, tok.tokens, tok.grid, torch.randn(3, 16, 8))


def test_cli_dino_keeps_the_presets_head_settings(tmp_path):
    """`--dino FILE` replaces only the DINO model: `cass --preset voc20` keeps the preset's head
    settings (stretch=False, prior_weight=0.4), where `--set plugins=cass:vfm=FILE` starts from
    the plug-in's defaults (stretch=True, prior_weight=0.1)."""
    import json
    import subprocess
    import sys

    from ovss.apps.cli import _dino_for, build_parser

    dg = load_file(str(GOLDEN / "dino_small.safetensors"))
    dino = tmp_path / "dino_small.pth"
    torch.save({k[7:]: v for k, v in dg.items() if k.startswith("dino.w.")}, dino)
    assets = Path(__file__).parents[2] / "src/ovss/data/assets/examples"
    cmd = [sys.executable, "-m", "ovss", "segment", str(assets / "scene_a.png"), "--classes-file",
           str(assets / "scene_a.txt"), "--backbone", "tiny-synthetic", "--method", "cass", "--preset", "voc20",
           "--dino", str(dino), "--out", str(tmp_path / "out")]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OVSS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    side = json.loads((tmp_path / "out" / "scene_a.json").read_text())
    (head,) = side["recipe"]["plugins"]
    assert head.startswith("CASSHead(") and f"vfm={str(dino)!r}" in head
    assert "stretch=False" in head and "prior_weight=0.4" in head and "text_weight=0.02" in head
    reset = get_method("cass").resolve("voc20", {"plugins": f"cass:vfm={dino}"}).plugins[0]
    assert reset.stretch and reset.prior_weight == 0.1  # what --set plugins=... gives instead
    # ovss eval: with several methods only those that borrow a DINO model get it
    args = build_parser().parse_args(["eval", "--dataset", "voc21", "--root", ".", "--method", "maskclip,cass",
                                      "--dino", str(dino)])
    assert _dino_for(args, get_method("cass")) == str(dino) and _dino_for(args, get_method("maskclip")) is None
    one = build_parser().parse_args(["eval", "--dataset", "voc21", "--root", ".", "--method", "maskclip",
                                     "--dino", str(dino)])
    assert _dino_for(one, get_method("maskclip")) == str(dino)  # a single method: Segmenter says why not
    with pytest.raises(ValueError, match="uses no DINO model"):
        Segmenter("maskclip", clip=create_clip(str(GOLDEN / "clip_small.safetensors")), device="cpu",
                  tokenizer=VOCAB, dino=str(dino))
