"""Make the ResCLIP / SC-CLIP / CLIPtrase goldens from the reference code (run by hand).

    python tests/golden/make_deep_methods_golden.py --resclip /path/to/yvhangyang/ResCLIP \
        [--scclip /path/to/SuleBai/SC-CLIP] [--cliptrase /path/to/leaves162/CLIPtrase] [--full]

These methods read middle layers (ResCLIP: blocks 6-9; SC-CLIP: 4-10; CLIPtrase: 11), so the
2-block `clip_small` model cannot serve: a narrow 12-block OpenAI-layout image tower is made here
(`clip12_small.safetensors`: width 40, 4 heads of 10, patch 16, 224 px so a 14x14 grid, output
32; every parameter perturbed as in make_clip_golden.py) with ResCLIP's own `VisionTransformer`
class, and loaded into each reference's own class (their `CLIP` would derive heads = width // 64,
so the towers are built directly and wrapped with the reference's `CLIP.encode_image`).

Each reference runs on CPU in float32 with the stand-ins of make_methods_golden.py (mmseg,
mmengine, torchvision) plus empty `cv2` / `matplotlib` modules (imported, never called here).
Where the reference calls CUDA it is run as a CPU port of the same calls: `Tensor.cuda` is the
identity and the PAMR module's `.to('cuda')` a no-op (ResCLIP's create_patch_matrix,
generate_attention_sfr and create_logit_temp); nothing else is changed. Its half-precision cast
of the SFR prior (`attn_sfr.to(torch.float16)`) runs as written (CPU half arithmetic).

Without --full the references' outputs on the small tower are written to
`<method>_small.safetensors` (see tests/golden/README.md for what each holds); with --full the same
runs use ViT-B/16-sized random weights (in memory) and the differences to ovss are printed.
"""

from __future__ import annotations

import argparse
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module, perturb_
from make_methods_golden import (
    CLASS_LINES,
    _module,
    _Sample,
    blocky_image,
    capture_postprocess,
    load_segmentor_module,
    make_segmentor,
    normalise,
    stub_frameworks,
)

SMALL = dict(width=40, layers=12, heads=4, patch=16, image=224, out=32)
B16 = dict(width=768, layers=12, heads=12, patch=16, image=224, out=512)
STEP = 8  # logits are stored at every STEP-th row and column
VOCAB = HERE / "tokenizer" / "small_vocab.txt.gz"


# ---- the shared tower ---------------------------------------------------------------------
class RefNet(torch.nn.Module):
    """What the reference segmentors use of `CLIP`: `.visual` and `.encode_image`."""

    def __init__(self, visual, clip_cls):
        super().__init__()
        self.visual = visual
        self.encode_image = types.MethodType(clip_cls.encode_image, self)

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype


def make_tower(model_mod, dims: dict, seed: int = 0) -> dict:
    """A perturbed random image tower (reference class), as an OpenAI-layout `visual.*` dict."""
    torch.manual_seed(seed)
    vis = model_mod.VisionTransformer(dims["image"], dims["patch"], dims["width"], dims["layers"],
                                      dims["heads"], dims["out"]).eval()
    perturb_(vis, seed + 1)
    return {f"visual.{k}": v.clone().contiguous() for k, v in vis.state_dict().items()}


def ref_net(model_mod, state: dict, dims: dict) -> RefNet:
    vis = model_mod.VisionTransformer(dims["image"], dims["patch"], dims["width"], dims["layers"],
                                      dims["heads"], dims["out"]).eval()
    vis.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
    return RefNet(vis, model_mod.CLIP).eval()


def ovss_clip(state: dict, dims: dict):
    """ovss's CLIP with this image tower (explicit head count) and an unused tiny text tower."""
    from ovss.backbones.clip import CLIP
    from ovss.backbones.configs import ClipCfg, TextCfg, VisionCfg
    from ovss.backbones.factory import LoadedClip

    cfg = ClipCfg(VisionCfg(dims["width"], dims["layers"], dims["heads"], dims["patch"], dims["image"], dims["out"]),
                  TextCfg(width=32, layers=1, heads=1, vocab_size=500, output_dim=dims["out"]))
    torch.manual_seed(0)
    model = CLIP(cfg).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("text.") or k == "logit_scale" for k in missing), (missing, unexpected)
    return LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="deep-methods-golden")


@contextmanager
def cuda_as_cpu():
    """Run a reference's `.cuda()` calls as the identity (CPU port of the same calls)."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


@torch.no_grad()
def queries_for(state: dict, dims: dict, n: int = 16, seed: int = 3, method: str | None = None) -> torch.Tensor:
    """Query embeddings that give the random tower confident but varied predictions: the
    centred patch features of a seeded 224 x 224 image (computed with ovss: the NACLIP rule, or
    `method`'s default readout; they are inputs only) at `n` random patches, plus 0.3 x noise,
    normalised."""
    from ovss.heads.attention import AttentionRule
    from ovss.heads.dense import Surgery, dense_embeddings

    clip = ovss_clip(state, dims)
    x = normalise(blocky_image(torch.Generator().manual_seed(11), 224, 224))
    if method is None:
        f = dense_embeddings(clip.model.visual, x, AttentionRule(("kk",), "gaussian", 5.0), Surgery(False, False))[0][0]
    else:
        from ovss.methods import get_method

        r = get_method(method).recipe
        f = dense_embeddings(clip.model.visual, x, r.attention, r.surgery, r.pos_resize, r.plugins)[0][0]
    gen = torch.Generator().manual_seed(seed)
    c = f - f.mean(0, keepdim=True)
    if method is None:
        idx = torch.randperm(f.shape[0], generator=gen)[:n]
        noise = F.normalize(torch.randn(n, f.shape[1], generator=gen), dim=-1)
        return F.normalize(c[idx] + 0.3 * c.norm(dim=-1).mean() * noise, dim=-1)
    # smoother readouts (SC-CLIP's aggregations): the leading principal directions of the patch
    # features, both signs, plus 0.3 x noise, made orthogonal to the mean feature (so that the
    # patches, not a common offset, decide), in a seeded order
    v = torch.linalg.svd(c, full_matrices=False)[2][: (n + 1) // 2]
    q = torch.cat([v, -v])[:n] + 0.3 * F.normalize(torch.randn(n, f.shape[1], generator=gen), dim=-1)
    m = F.normalize(f.mean(0), dim=0)
    q = F.normalize(q - (q @ m)[:, None] * m, dim=-1)
    return q[torch.randperm(n, generator=gen)]


def ovss_segmenter(clip, method, preset, overrides, queries):
    from ovss.core.segmenter import Segmenter

    seg = Segmenter(method, clip=clip, preset=preset, device="cpu", tokenizer=VOCAB,
                    overrides={"protocol.short_side": None, **overrides})
    seg.golden_queries = queries  # the golden's queries, passed to the public calls
    return seg


def spec_of(q2c):
    from ovss.text.bank import ClassSpec

    groups = [tuple(f"q{q}" for q, c in enumerate(q2c) if c == k) for k in range(max(q2c) + 1)]
    return ClassSpec(tuple(groups), background=True)


@torch.no_grad()
def ovss_predict(seg, image: torch.Tensor, q2c, ori):
    """ovss's logits at the original size (after refiners) and its label map."""
    from ovss.core.resize import upsample

    spec = spec_of(q2c)
    state = seg.preprocess(image.numpy(), size=tuple(ori))
    low = seg.stitched_logits(state, seg.golden_queries)
    logits = seg.refine(upsample(low, tuple(ori)), state)
    labels = seg.decide(low, state, spec).labels
    return logits, torch.from_numpy(labels)


def first_window(seg, x: torch.Tensor) -> torch.Tensor:
    from ovss.core.protocol import window_boxes

    p = seg.recipe.protocol
    y1, y2, x1, x2 = window_boxes(x.shape[-2], x.shape[-1], p.crop, p.stride)[0]
    return x[:, :, y1:y2, x1:x2]


# ---- ResCLIP ------------------------------------------------------------------------------
# run -> (ovss preset, ovss overrides, arch, attn strategy, network input size, original size)
RESCLIP_RUNS = {
    "whole224": ("voc21", {}, "wo_resi", "resclip", (224, 224), (240, 250)),
    "whole_ns": ("voc20", {}, "wo_resi", "resclip", (170, 250), (180, 260)),  # 10x15 grid, 10 px remainder
    "slide": ("context60", {}, "wo_resi", "resclip", (240, 288), (260, 300)),  # 4 windows 224/112
    "sclip": ("ade20k-on-sclip", {"protocol.crop": 0}, "w_resi", "sclip", (224, 224), (240, 250)),
    "clearclip": ("context59-on-clearclip", {}, "wo_resi", "clearclip", (240, 288), (260, 300)),
}
RESCLIP_FULL = {  # ViT-B/16 check: 224 whole, VOC's 500x375 after the resize (whole image and windows)
    "whole224": ("voc21", {}, "wo_resi", "resclip", (224, 224), (240, 250)),
    "voc21_336x448": ("voc21", {}, "wo_resi", "resclip", (336, 448), (375, 500)),
    "context60_336x448": ("context60", {}, "wo_resi", "resclip", (336, 448), (375, 500)),
    "sclip_336x448": ("ade20k-on-sclip", {}, "w_resi", "sclip", (336, 448), (375, 500)),
}


def load_resclip(root: Path):
    _module("cv2")
    _module("matplotlib")
    _module("matplotlib.pyplot")
    seg_mod = load_segmentor_module(root, "resclip_segmentor.py", "ref_resclip_segmentor")
    model_mod = load_module("ref_resclip_model", root / "clip/model.py")
    base_pamr = sys.modules["pamr"].PAMR

    class CpuPAMR(base_pamr):  # create_logit_temp moves its PAMR to torch.device('cuda')
        def to(self, *args, **kwargs):
            return self

    model_mod.PAMR = CpuPAMR
    return seg_mod, model_mod


def resclip_reference(seg_mod, net, class_file, queries, recipe, arch, attn):
    """The reference segmentor with an ovss preset's numbers (the preset test ties them to the
    configs), recording A_c, the seed map and the prior of every window."""
    rcs, sfr = recipe.plugins
    p, d = recipe.protocol, recipe.decision
    seg, _ = make_segmentor(
        seg_mod, "ResCLIPSegmentation", net, class_file, queries, logit_scale=d.logit_scale,
        prob_thd=d.prob_thd, area_thd=None, slide_stride=p.stride, slide_crop=p.crop, pamr=None,
        temp_thd=sfr.seed_thd, attn_sfr_weights=[sfr.scale, sfr.weight], attn_rcs_weights=[rcs.scale, rcs.weight],
        delete_same_entity=sfr.line != "none", use_rcs=(True,), use_sfr=(True,))  # 1-tuples, as its __init__
    net.visual.set_params(arch, attn, 5.0)
    vis = net.visual
    rec = {"rcs": [], "seed": [], "prior": []}
    clt, cpm, gas = vis.create_logit_temp, vis.create_patch_matrix, vis.generate_attention_sfr

    def create_logit_temp(x, **kw):
        rec["rcs"].append(kw["attn_rcs"].clone())
        return clt(x, **kw)

    def create_patch_matrix(*a, **kw):
        out = cpm(*a, **kw)
        rec["seed"].append(out.clone())
        return out

    def generate_attention_sfr(*a, **kw):
        out = gas(*a, **kw)
        rec["prior"].append(out.clone())
        return out

    vis.create_logit_temp, vis.create_patch_matrix = create_logit_temp, create_patch_matrix
    vis.generate_attention_sfr = generate_attention_sfr
    return seg, rec


@torch.no_grad()
def resclip_runs(root: Path, state: dict, dims: dict, runs: dict, queries, class_file, full: bool):
    from ovss.heads.dense import pass_context
    from ovss.methods import get_method

    seg_mod, model_mod = load_resclip(root)
    q2c = seg_mod.get_cls_idx(str(class_file))[1]
    clip = ovss_clip(state, dims) if full else None
    images = {}
    out = {}
    for run, (preset, over, arch, attn, size, ori) in runs.items():
        recipe = get_method("resclip").resolve(preset, {"protocol.short_side": None, **over})
        if size not in images:  # one image per size, shared by the runs of that size
            images[size] = blocky_image(torch.Generator().manual_seed(11 + len(images)), *size)
        image = images[size]
        x = normalise(image)
        net = ref_net(model_mod, state, dims)
        seg, rec = resclip_reference(seg_mod, net, class_file, queries, recipe, arch, attn)
        box = capture_postprocess(seg)
        sample = _Sample(ori)
        with cuda_as_cpu():
            seg.predict(x, [sample])
        logits, labels = box["logits"][0], sample.pred_sem_seg.data[0]
        seed = rec["seed"][0]
        counts = torch.bincount(labels.flatten(), minlength=len(CLASS_LINES)).tolist()
        print(f"resclip {run}: {len(rec['seed'])} window(s), seed labels {sorted(set(seed.flatten().tolist()))}, "
              f"labels per class {counts}")
        out[run] = dict(image=image, ori=torch.tensor(ori), logits=logits, labels=labels, seed=seed,
                        rcs=rec["rcs"][0][:, ::8].contiguous(), prior=rec["prior"][0][0, ::4].contiguous())
        if full:
            ours = ovss_segmenter(clip, "resclip", preset, over, queries)
            lg, lb = ovss_predict(ours, image, q2c, ori)
            r = ours.recipe
            ctx = pass_context(ours.visual, first_window(ours, x), r.attention, r.surgery, r.pos_resize,
                               r.plugins, queries)
            rcs, sfr = r.plugins
            a_c = rcs.middle_attention(ctx)[0]
            s = sfr.seed_labels(ctx, tuple(rcs.mixes(ctx, ())))[0]
            from ovss.heads.feedback import label_affinity

            prior = torch.zeros_like(rec["prior"][0][0])
            prior[1:, 1:] = label_affinity(s, sfr.line, sfr.std, sfr.smooth)  # before the max division / half
            n_heads = a_c.shape[0]
            ref_ac = rec["rcs"][0].view(n_heads, *a_c.shape[1:]) if rec["rcs"][0].shape[0] == n_heads else rec["rcs"][0]
            print(f"  ViT-B/16 {run} {size}: max |A_c diff| {(a_c - ref_ac).abs().max().item():.3g}, "
                  f"seed maps equal {torch.equal(s.cpu(), seed.cpu())}, max |prior diff| "
                  f"{(prior - rec['prior'][0][0]).abs().max().item():.3g}, "
                  f"max |logit diff| {(lg - logits).abs().max().item():.3g}, labels equal on "
                  f"{100 * (lb == labels).float().mean().item():.4f}% of pixels")
    return out, q2c


def save_resclip(out: dict, queries, q2c):
    from safetensors.torch import save_file

    tensors = {"queries": queries, "query_to_class": torch.tensor(q2c)}
    for run, o in out.items():
        h, w = o["image"].shape[:2]
        tensors.setdefault(f"image_{h}x{w}", o["image"])
        tensors[f"{run}.ori_shape"] = o["ori"]
        tensors[f"{run}.logits"] = o["logits"][:, ::STEP, ::STEP].contiguous()
        tensors[f"{run}.labels"] = o["labels"].to(torch.uint8)
        tensors[f"{run}.seed"] = o["seed"].to(torch.uint8)
        if run in ("whole224", "whole_ns"):
            tensors[f"{run}.rcs_rows8"] = o["rcs"]  # A_c (heads, every 8th row, all columns)
            tensors[f"{run}.prior_rows4"] = o["prior"].float()  # the SFR matrix (every 4th row)
    path = HERE / "resclip_small.safetensors"
    save_file(tensors, str(path), metadata={"logits_step": str(STEP), "class_lines": "\n".join(CLASS_LINES)})
    print("wrote", path, f"({path.stat().st_size / 1e6:.2f} MB)")


# ---- SC-CLIP ------------------------------------------------------------------------------
# run -> (ovss preset, ovss overrides, network input size, original size); square windows only
SCCLIP_RUNS = {
    "w224": ("voc21", {}, (224, 224), (240, 250)),  # one 224 window; logit_scale 50, prob 0.15, area 0.1
    "slide": ("context60", {}, (240, 288), (260, 300)),  # 4 windows 224/112; prob_thd 0.15
    "coco": ("coco-object", {}, (224, 224), (240, 250)),  # logit_scale 55, prob_thd 0.35
    "nothd": ("context59", {}, (240, 288), (260, 300)),  # logit_scale 40, no thresholds
}
SCCLIP_FULL = {
    "w224": ("voc21", {}, (224, 224), (240, 250)),
    "voc21_336x448": ("voc21", {}, (336, 448), (375, 500)),
    "context60_336x448": ("context60", {}, (336, 448), (375, 500)),
}
LOF_INPUTS = {"a": (196, 40), "b": (100, 64), "c": (651, 16)}  # (tokens, channels) of random LOF inputs


def load_scclip(root: Path):
    seg_mod = load_segmentor_module(root, "scclip_segmentor.py", "ref_scclip_segmentor")
    model_mod = load_module("ref_scclip_model", root / "clip/model.py")
    return seg_mod, model_mod


@torch.no_grad()
def scclip_runs(root: Path, state: dict, dims: dict, runs: dict, queries, class_file, full: bool):
    from ovss.methods import get_method

    seg_mod, model_mod = load_scclip(root)
    q2c = seg_mod.get_cls_idx(str(class_file))[1]
    clip = ovss_clip(state, dims) if full else None
    rec = {"outliers": [], "scores": []}
    lof = model_mod.lof_pytorch

    def recording_lof(x, n_neighbors=30, contamination=0.05):
        idx, scores = lof(x, n_neighbors=n_neighbors, contamination=contamination)
        rec["outliers"].append(idx.clone())
        rec["scores"].append(scores.clone())
        return idx, scores

    model_mod.lof_pytorch = recording_lof  # VisionTransformer.forward looks it up at call time
    images, out = {}, {}
    for run, (preset, over, size, ori) in runs.items():
        recipe = get_method("scclip").resolve(preset, {"protocol.short_side": None, **over})
        if size not in images:
            images[size] = blocky_image(torch.Generator().manual_seed(11 + len(images)), *size)
        image = images[size]
        x = normalise(image)
        net = ref_net(model_mod, state, dims)
        (sc,) = recipe.plugins
        vis = net.visual
        vis.pre_adjust_idx, vis.post_adjust_idx, vis.res_cls = sc.pre_layer, sc.post_layer, sc.res_cls
        vis.multi_start_idx, vis.multi_end_idx = sc.fuse_layers[0], sc.fuse_layers[-1] + 1
        p, d = recipe.protocol, recipe.decision
        seg, _ = make_segmentor(seg_mod, "SCCLIPForSegmentation", net, class_file, queries,
                                logit_scale=d.logit_scale, prob_thd=d.prob_thd, area_thd=d.area_thd,
                                slide_stride=p.stride, slide_crop=p.crop, pamr=None)
        box = capture_postprocess(seg)
        sample = _Sample(ori)
        rec["outliers"].clear()
        rec["scores"].clear()
        seg.predict(x, [sample])
        logits, labels = box["logits"][0], sample.pred_sem_seg.data[0]
        counts = torch.bincount(labels.flatten(), minlength=len(CLASS_LINES)).tolist()
        print(f"scclip {run}: {len(rec['outliers'])} window(s), outliers {rec['outliers'][0].tolist()}, "
              f"labels per class {counts}")
        out[run] = dict(image=image, ori=torch.tensor(ori), logits=logits, labels=labels,
                        outliers=rec["outliers"][0], scores=rec["scores"][0])
        if full:
            from ovss.heads.dense import pass_context

            ours = ovss_segmenter(clip, "scclip", preset, over, queries)
            lg, lb = ovss_predict(ours, image, q2c, ori)
            r = ours.recipe
            ctx = pass_context(ours.visual, first_window(ours, x), r.attention, r.surgery, r.pos_resize,
                               r.plugins, queries)
            mask = r.plugins[0].outliers(ctx)[0]
            print(f"  ViT-B/16 {run} {size}: outliers equal {torch.equal(mask.nonzero().flatten(), out[run]['outliers'])}, "
                  f"max |logit diff| {(lg - logits).abs().max().item():.3g}, labels equal on "
                  f"{100 * (lb == labels).float().mean().item():.4f}% of pixels")
    # the reference LOF on random inputs
    lofs = {}
    gen = torch.Generator().manual_seed(5)
    for key, (n, c) in LOF_INPUTS.items():
        xin = torch.randn(n, c, generator=gen) * torch.rand(n, 1, generator=gen).add(0.5)
        idx, scores = lof(xin, n_neighbors=30, contamination=0.05)
        lofs[key] = dict(x=xin, outliers=idx, scores=scores)
    model_mod.lof_pytorch = lof
    return out, lofs, q2c


def save_scclip(out: dict, lofs: dict, queries, q2c):
    from safetensors.torch import save_file

    tensors = {"queries": queries, "query_to_class": torch.tensor(q2c)}
    for run, o in out.items():
        h, w = o["image"].shape[:2]
        tensors.setdefault(f"image_{h}x{w}", o["image"])
        tensors[f"{run}.ori_shape"] = o["ori"]
        tensors[f"{run}.logits"] = o["logits"][:, ::STEP, ::STEP].contiguous()
        tensors[f"{run}.labels"] = o["labels"].to(torch.uint8)
        tensors[f"{run}.outliers"] = o["outliers"]  # first window's outlier token indices
        tensors[f"{run}.lof"] = o["scores"]
    for key, o in lofs.items():
        for k, v in o.items():
            tensors[f"lof_{key}.{k}"] = v.contiguous()
    path = HERE / "scclip_small.safetensors"
    save_file(tensors, str(path), metadata={"logits_step": str(STEP), "class_lines": "\n".join(CLASS_LINES)})
    print("wrote", path, f"({path.stat().st_size / 1e6:.2f} MB)")


# ---- CLIPtrase ----------------------------------------------------------------------------
# run -> (reference dataset, image size, eps, min_samples, ovss preset, ovss overrides)
CLIPTRASE_NAMES = ["c1", "c2", "c3", "c4", "c5"]
CLIPTRASE_BG = [f"bg {c}" for c in "abcdefgh"]
CLIPTRASE_RUNS = {
    "voc21_224": ("VOC21", 224, 0.7, 3, "repo-224", {}),  # with background (8 words), DBSCAN (0.7, 3)
    "voc20_224": ("VOC20", 224, 0.7, 3, "voc20-repo-224", {}),  # the class-token prior
    "ade_336": ("ADE150", 336, 1.1, 7, "repo-336", {}),  # 21x21 grid (positional resize), (1.1, 7)
}
CLIPTRASE_FULL = {
    "voc21_224": ("VOC21", 224, 0.7, 3, "repo-224", {}),
    "voc21_336": ("VOC21", 336, 1.1, 7, "repo-336", {}),
    "voc20_336": ("VOC20", 336, 1.1, 7, "voc20-repo-336", {}),
}


def stub_torchvision_transforms() -> None:
    """What clip_self_correlation.py takes from torchvision: ToTensor and Normalize as torchvision
    computes them (uint8 HWC -> float CHW / 255; (x - mean) / std); Resize/CenterCrop are never
    called here (the images are given at the network size)."""
    import numpy as np

    tr = sys.modules["torchvision.transforms"]

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, pic):
            a = torch.from_numpy(np.array(pic, copy=True))
            return a.permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, t):
            mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
            return t.sub(mean).div(std)

    def unused(*a, **k):
        raise RuntimeError("not used by the golden runs")

    tr.Compose, tr.ToTensor, tr.Normalize, tr.Resize, tr.CenterCrop = Compose, ToTensor, Normalize, unused, unused
    tr.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", NEAREST="nearest")


def load_cliptrase(root: Path):
    stub_torchvision_transforms()
    _module("cv2")
    _module("matplotlib", use=lambda *a, **k: None)
    _module("matplotlib.pyplot")
    _module("einops", rearrange=None)
    pkg = _module("clip_utils")
    pkg.__path__ = [str(root / "clip_utils")]
    load_module("clip_utils.attn2", root / "clip_utils/attn2.py", "clip_utils")
    model_mod = load_module("clip_utils.model", root / "clip_utils/model.py", "clip_utils")
    cfg = _module("configs")
    cfg.__path__ = []
    _module("configs.dataset_cfg", dataset_info={}, prompt_templates=[])
    _module("configs.metric", scores=None)
    script = load_module("ref_cliptrase", root / "clip_self_correlation.py")
    script.device = "cpu"
    return script, model_mod


class TraseNet(RefNet):
    """RefNet plus the `logit_scale` CLIPtrase reads (log 100: the trained CLIP's value)."""

    def __init__(self, visual, clip_cls):
        super().__init__(visual, clip_cls)
        self.logit_scale = torch.nn.Parameter(torch.tensor(100.0).log())


@torch.no_grad()
def cliptrase_runs(root: Path, state: dict, dims: dict, runs: dict, queries: torch.Tensor, full: bool):
    """The reference's `self_clip` loop on one image per run (its dataset reading, text encoder and
    metric replaced by stand-ins that hand it the image and the golden queries and keep its
    prediction); records the layer-11 map, the DBSCAN labels and the upsampled patch logits."""
    script, model_mod = load_cliptrase(root)
    names = CLIPTRASE_NAMES + CLIPTRASE_BG
    by_name = {n: queries[i] for i, n in enumerate(names)}
    clip = ovss_clip(state, dims) if full else None
    rec = {}

    def get_text_features(clip_, labels):
        return torch.stack([by_name[n] for n in labels])

    def get_visual_features(clip_, images):
        feats, attn = script.__dict__["_orig_gvf"](clip_, images)
        rec["map11"] = attn[-2, 0].clone()
        return feats, attn

    class RecordingDBSCAN:
        def __init__(self, **kw):
            self.inner = script.__dict__["_orig_dbscan"](**kw)

        def fit_predict(self, x):
            out = self.inner.fit_predict(x)
            rec["dbscan"] = torch.from_numpy(out.copy())
            return out

    class RecordingF(types.SimpleNamespace):
        pass

    def interpolate(*a, **k):
        out = F.interpolate(*a, **k)
        rec.setdefault("interp", []).append(out.clone())
        return out

    script._orig_gvf = script.get_visual_features
    script._orig_dbscan = script.DBSCAN
    script.get_text_features, script.get_visual_features, script.DBSCAN = get_text_features, get_visual_features, RecordingDBSCAN
    script.F = RecordingF(**{**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")},
                             "interpolate": interpolate})
    out = {}
    for run, (dataset, size, eps, min_s, preset, over) in runs.items():
        image = blocky_image(torch.Generator().manual_seed(21 + size), size, size)
        gt = torch.zeros(size, size, dtype=torch.int16)
        gt[: size // 2] = 1
        bg = dataset == "VOC21"
        script.dataset_info = {dataset: {"labels": CLIPTRASE_NAMES, "background": CLIPTRASE_BG,
                                         "image_path": "", "gt_path": ""}}
        script.get_image_name_list = lambda d, p: ["golden.png"]
        script.get_image_and_gt = lambda d, s, ip, gp, f, image=image, gt=gt: (image.numpy(), gt.clone())
        preds = []
        script.scores = lambda gts, p, n: preds.extend(p) or {}
        rec.clear()
        net = TraseNet(model_mod.VisionTransformer(dims["image"], dims["patch"], dims["width"], dims["layers"],
                                                   dims["heads"], dims["out"]).eval(), model_mod.CLIP)
        net.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
        script.self_clip(net, dataset, image_size=size, eps=eps, min=min_s)
        pred = torch.from_numpy(preds[0]).long()
        scale = float(net.logit_scale.exp())
        logits = rec["interp"][0][0] / scale  # the upsampled patch logits, back to cosines
        n_cl = int(rec["dbscan"].max()) + 1
        print(f"cliptrase {run}: {n_cl} clusters, noise {(rec['dbscan'] < 0).sum().item()}, "
              f"labels {torch.bincount(pred.flatten()).tolist()}")
        out[run] = dict(image=image, pred=pred, logits=logits, dbscan=rec["dbscan"], map11=rec["map11"], bg=bg)
        if full:
            # ovss: classes (background first when there is one) and the reference's label numbering
            from ovss.refine import RefineContext

            q2c, order = cliptrase_classes(bg)
            ours = ovss_segmenter(clip, "cliptrase", preset, over, queries[order])
            lg, lb = ovss_predict(ours, image, q2c, (size, size))
            want = cliptrase_labels_to_ovss(pred, bg)
            plain = ovss_segmenter(clip, "cliptrase", preset, {**over, "plugins": "", "refiners": ""}, queries[order])
            plg, _ = ovss_predict(plain, image, q2c, (size, size))
            ctx = RefineContext(ours.visual, normalise_for(ours, image), q2c, None, {})
            labels_db, _ = ours.recipe.refiners[0].regions(ctx, (size, size))
            print(f"  ViT-B/16 {run}: DBSCAN labels equal {torch.equal(labels_db, rec['dbscan'])} "
                  f"({int(labels_db.max()) + 1} clusters), max |logit diff| {(plg - logits[order]).abs().max().item():.3g}, "
                  f"labels equal on {100 * (lb == want).float().mean().item():.4f}% of pixels")
    script.get_visual_features, script.DBSCAN, script.F = script._orig_gvf, script._orig_dbscan, F
    return out


def normalise_for(seg, image: torch.Tensor) -> torch.Tensor:
    from ovss.core.protocol import preprocess

    return preprocess(image.numpy(), seg.recipe.protocol)


def cliptrase_classes(bg: bool):
    """ovss's query-to-class map and query order for the golden class list: with background,
    class 0 holds the 8 background words (CLIPtrase's label C) and classes 1-5 the names."""
    if not bg:
        return list(range(5)), list(range(5))
    return [0] * 8 + [1, 2, 3, 4, 5], list(range(5, 13)) + list(range(5))


def cliptrase_labels_to_ovss(pred: torch.Tensor, bg: bool) -> torch.Tensor:
    return torch.where(pred == 5, 0, pred + 1) if bg else pred


def save_cliptrase(out: dict, queries):
    from safetensors.torch import save_file

    tensors = {"queries": queries}  # CLIPtrase's order: c1..c5, then the 8 background words
    for run, o in out.items():
        tensors[f"{run}.image"] = o["image"]
        tensors[f"{run}.pred"] = o["pred"].to(torch.uint8)  # the reference's labels (background = 5)
        tensors[f"{run}.logits"] = o["logits"][:, ::STEP, ::STEP].contiguous()
        tensors[f"{run}.dbscan"] = o["dbscan"]
        if o["map11"].shape[-1] <= 197:
            tensors[f"{run}.map11_rows4"] = o["map11"][::4].contiguous()  # the layer-11 map, every 4th row
    path = HERE / "cliptrase_small.safetensors"
    save_file(tensors, str(path), metadata={"logits_step": str(STEP)})
    print("wrote", path, f"({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resclip", type=Path)
    ap.add_argument("--scclip", type=Path)
    ap.add_argument("--cliptrase", type=Path)
    ap.add_argument("--full", action="store_true", help="ViT-B/16-sized check, prints only")
    args = ap.parse_args()
    torch.set_num_threads(1)

    stub_frameworks()
    import tempfile

    class_file = Path(tempfile.mkdtemp()) / "cls_golden.txt"
    class_file.write_text("\n".join(CLASS_LINES))
    dims = B16 if args.full else SMALL
    state = None
    if args.resclip:
        _, model_mod = load_resclip(args.resclip)
        if args.full:
            state = make_tower(model_mod, dims)
        else:
            state = make_tower(model_mod, dims)
            from safetensors.torch import save_file

            save_file(state, str(HERE / "clip12_small.safetensors"))
            print("wrote", HERE / "clip12_small.safetensors")
        queries = queries_for(state, dims)
        out, q2c = resclip_runs(args.resclip, state, dims, RESCLIP_FULL if args.full else RESCLIP_RUNS,
                                queries, class_file, args.full)
        if not args.full:
            save_resclip(out, queries, q2c)
    if args.scclip or args.cliptrase:
        if state is None:
            from safetensors.torch import load_file

            if args.full:
                model_mod = load_scclip(args.scclip)[1] if args.scclip else load_cliptrase(args.cliptrase)[1]
                state = make_tower(model_mod, dims)  # the same seed and perturbation as above
            else:
                state = load_file(str(HERE / "clip12_small.safetensors"))
    if args.scclip:
        queries = queries_for(state, dims, method="scclip")
        out, lofs, q2c = scclip_runs(args.scclip, state, dims, SCCLIP_FULL if args.full else SCCLIP_RUNS,
                                     queries, class_file, args.full)
        if not args.full:
            save_scclip(out, lofs, queries, q2c)
    if args.cliptrase:
        queries = queries_for(state, dims, n=13, method="cliptrase")
        out = cliptrase_runs(args.cliptrase, state, dims, CLIPTRASE_FULL if args.full else CLIPTRASE_RUNS,
                             queries, args.full)
        if not args.full:
            save_cliptrase(out, queries)


if __name__ == "__main__":
    main()
