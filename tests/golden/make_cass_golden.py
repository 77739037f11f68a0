"""Make the CASS golden from the reference segmentor (run by hand).

    python tests/golden/make_cass_golden.py --cass /path/to/MICV-yonsei/CASS \
        --pydeps /path/with/scipy-and-sklearn [--full]

Nothing of the reference is committed. CASS's `cass_segmentor.py` and `clip/model.py` need
SciPy (`linear_sum_assignment`, `linkage`, `fcluster`, `squareform`) and scikit-learn
(`cosine_distances`), which ovss does not depend on: install them anywhere
(`pip install --target DIR scipy scikit-learn`) and pass DIR as --pydeps (appended to sys.path).
The segmentor is imported with the stand-ins of make_methods_golden.py (mmseg, mmengine,
torchvision) plus exact stand-ins for the three torchvision transforms the DINO path calls
(`Compose`, `ToTensor`: HWC uint8 -> CHW float / 255, `Normalize`: (x - mean) / std per channel,
as torchvision computes them) and an empty `dinov2.dino_attention` (the DINOv2 option is unused).
The segmentor is made with `__new__` and given the attributes its `__init__` sets: CLIP is
CASS's `clip/model.py` `CLIP` with the weights of `clip_small.safetensors` (float32,
`set_params('reduced', 'spectral', 5.0)`); DINO is a `DinoSelfAttention` whose model is CASS's
`dino/vision_transformer.py` `VisionTransformer` with the `dino` weights of
`dino_small.safetensors` (width 128, 2 heads of 64 as CLIP's, patch 8, 2 blocks); the queries are
seeded vectors in groups of near-duplicates (so Ward clustering at h = 0.1 joins some of them);
`cluster_info` comes from the reference's own `hierarchical_clustering`.

Runs (`predict()` after `torch.manual_seed(SEED)`; images seeded and smoothed):
  slide   224x336 image, 224/112 windows (2), dataset 'context60' (singular values stretched,
          whole-image class-token prior), prob_thd 0.1, gsw 0.25, mvw 0.04, h 0.1
  city    the same image, dataset 'city_scapes' (no stretching, each window's own prior), gsw 0.1
  whole   224x288 image, slide_crop 0 (one pass over the whole image, squashed to 224x224 for
          DINO), dataset 'voc21', prob_thd 0.1, gsw 0.1, mvw 0.03
Stored per run (tests/golden/cass_small.safetensors): `<run>.image`, `<run>.logits` (what
postprocess_result receives, every 5th row/column), `<run>.labels`, `<run>.cost<i>` /
`<run>.cols<i>` (each window's head cost matrix and assignment), and `queries`,
`query_to_class`, `clusters`. `--full`: ViT-B/16 CLIP and DINO ViT-B/8 sized random weights (12
heads) on a 336x448 image with 224/112 windows and on a whole 336x448 image, compared in memory.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module
from make_methods_golden import (
    CLASS_LINES,
    MEAN,
    STD,
    STEP,
    _module,
    _Sample,
    capture_postprocess,
    stub_frameworks,
)
from make_proxyclip_golden import _Normalize  # torchvision's Normalize: (x - mean) / std per channel

SEED = 42


class _ToTensor:
    def __call__(self, pic):
        return torch.from_numpy(np.array(pic)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


class _Compose:
    def __init__(self, ts):
        self.ts = ts

    def __call__(self, x):
        for t in self.ts:
            x = t(x)
        return x


def load_cass(root: Path):
    stub_frameworks()
    tr = sys.modules["torchvision.transforms"]
    tr.Normalize, tr.ToTensor, tr.Compose = _Normalize, _ToTensor, _Compose
    utils = types.ModuleType("utils")  # dino's vision_transformer.py takes trunc_normal_ from it
    utils.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules["utils"] = utils
    _module("requests")
    _module("clip")
    prompts = _module("prompts")
    prompts.__path__ = [str(root / "prompts")]
    load_module("prompts.imagenet_template", root / "prompts/imagenet_template.py")
    load_module("pamr", root / "pamr.py")
    sys.path.insert(0, str(root / "dino"))
    vits = load_module("vision_transformer", root / "dino/vision_transformer.py")
    dino_pkg = _module("dino")
    dino_pkg.__path__ = [str(root / "dino")]
    dino_att = load_module("dino.dino_attention", root / "dino/dino_attention.py")
    _module("dinov2")
    _module("dinov2.dino_attention", Dinov2SelfAttention=None)
    model = load_module("cass_clip_model", root / "clip/model.py")
    seg_mod = load_module("ref_cass_segmentor", root / "cass_segmentor.py")
    return seg_mod, model, vits, dino_att


def cass_clip(model_mod, sd: dict):
    from make_methods_golden import dims_of

    d = dims_of(sd)
    order = ("embed", "res", "vl", "vw", "patch", "ctx", "vocab", "tw", "th", "tl")
    m = model_mod.CLIP(*(d[k] for k in order))
    m.load_state_dict(sd)
    m.visual.set_params("reduced", "spectral", 5.0)
    return m.eval()


def dino_wrapper(dino_att, vit):
    d = dino_att.DinoSelfAttention.__new__(dino_att.DinoSelfAttention)
    torch.nn.Module.__init__(d)
    d.arch, d.patch_size, d.device, d.model = "vit_base", 8, torch.device("cpu"), vit.eval()
    return d


def grouped_queries(g, dim: int, n: int) -> torch.Tensor:
    """n unit queries in groups of near-duplicates of varying spread."""
    base = torch.randn(6, dim, generator=g)
    group = torch.arange(n) % 6
    spread = torch.tensor([0.05, 0.1, 0.2, 0.4, 0.8, 1.5])[group]
    q = base[group] + spread[:, None] * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(q, dim=-1)


def make_segmentor(seg_mod, clip, dino, class_file: Path, queries, dataset: str, **attrs):
    cls = seg_mod.CASS_segmentor
    seg = cls.__new__(cls)
    torch.nn.Module.__init__(seg)
    seg.net = seg.cls_net = clip
    seg.scale_up = False
    words, idx = seg_mod.get_cls_idx(str(class_file))
    seg.query_words, seg.num_queries = words, len(words)
    seg.query_idx = torch.tensor(idx, dtype=torch.int64)
    seg.query_features = seg.cls_query_features = queries
    seg.dataset = dataset
    seg.dtype = queries.dtype
    seg.align_corners = False
    seg.pamr = None
    seg.dino_type, seg.dino_model = "dino_vitb8", dino
    seg.inv_normalize = _Normalize([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255],
                                   [1 / 0.229, 1 / 0.224, 1 / 0.255])
    seg.logit_scale = 40
    for k, v in attrs.items():
        setattr(seg, k, v)
    seg.cluster_info = seg.hierarchical_clustering(queries)
    return seg, idx


def run_reference(seg, model_mod, image_u8: torch.Tensor, ori_shape):
    """predict() with the assignment recorded: (logits, labels, [(cost, cols) per window])."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (image_u8.permute(2, 0, 1)[None].float() - mean) / std
    box = capture_postprocess(seg)
    rec = []
    lsa = model_mod.linear_sum_assignment

    def recording(cost):
        rows, cols = lsa(cost)
        rec.append((torch.from_numpy(np.array(cost)), torch.from_numpy(np.array(cols))))
        return rows, cols

    model_mod.linear_sum_assignment = recording
    try:
        torch.manual_seed(SEED)
        with torch.no_grad():
            out = seg.predict(x, [_Sample(ori_shape)])
    finally:
        model_mod.linear_sum_assignment = lsa
    return box["logits"], out[0].pred_sem_seg.data[0], rec


def smooth_image(g, h: int, w: int) -> torch.Tensor:
    image = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    image = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None].float(), 9, 1, 4)[0].permute(1, 2, 0)
    return image.round().clamp(0, 255).to(torch.uint8)


RUNS = {
    "slide": dict(size=(224, 336), dataset="context60", slide_crop=224, slide_stride=112, prob_thd=0.1,
                  global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.1),
    "city": dict(size=(224, 336), dataset="city_scapes", slide_crop=224, slide_stride=112, prob_thd=0.0,
                 global_semantics_weight=0.1, mean_vector_weight=0.03, h_threshold=0.1),
    "whole": dict(size=(224, 288), dataset="voc21", slide_crop=0, slide_stride=112, prob_thd=0.1,
                  global_semantics_weight=0.1, mean_vector_weight=0.03, h_threshold=0.1),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cass", type=Path, required=True)
    ap.add_argument("--pydeps", type=Path, required=True)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    sys.path.append(str(args.pydeps))
    torch.set_num_threads(1)
    seg_mod, model_mod, vits, dino_att = load_cass(args.cass)
    g = torch.Generator().manual_seed(20251127)
    class_file = Path("/tmp/cass_golden_classes.txt")
    class_file.write_text("\n".join(CLASS_LINES))
    if args.full:
        return run_full(seg_mod, model_mod, vits, dino_att, class_file, g)
    clip_sd = load_file(str(HERE / "clip_small.safetensors"))
    clip = cass_clip(model_mod, clip_sd)
    dg = load_file(str(HERE / "dino_small.safetensors"))
    dino_sd = {k[len("dino.w."):]: v for k, v in dg.items() if k.startswith("dino.w.")}
    vit = vits.VisionTransformer(img_size=[32], patch_size=8, embed_dim=128, depth=2, num_heads=2, mlp_ratio=1,
                                 qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    vit.load_state_dict(dino_sd)
    dino = dino_wrapper(dino_att, vit)
    n_q = sum(len(line.split(", ")) for line in CLASS_LINES)
    queries = grouped_queries(g, clip_sd["text_projection"].shape[1], n_q)
    out = {"queries": queries}
    for name, run in RUNS.items():
        run = dict(run)
        h, w = run.pop("size")
        dataset = run.pop("dataset")
        seg, idx = make_segmentor(seg_mod, clip, dino, class_file, queries, dataset, **run)
        image = smooth_image(g, h, w)
        logits, labels, rec = run_reference(seg, model_mod, image, (h, w))
        out[f"{name}.image"] = image.contiguous()
        out[f"{name}.logits"] = logits[0, :, ::STEP, ::STEP].contiguous()
        out[f"{name}.labels"] = labels.to(torch.uint8).contiguous()
        for i, (cost, cols) in enumerate(rec):
            out[f"{name}.cost{i}"] = cost.contiguous()
            out[f"{name}.cols{i}"] = cols.contiguous()
        print(name, "windows", len(rec), "labels", labels.unique().tolist(), "cols", [c.tolist() for _, c in rec])
    out["query_to_class"] = torch.tensor(idx)
    out["clusters"] = torch.from_numpy(np.asarray(seg.cluster_info, dtype=np.int64))
    print("clusters", out["clusters"].tolist())
    save_file(out, str(HERE / "cass_small.safetensors"), metadata={"logits_step": str(STEP), "seed": str(SEED)})


def run_full(seg_mod, model_mod, vits, dino_att, class_file, g) -> None:
    """ViT-B/16 CLIP + DINO ViT-B/8, random (perturbed): the reference's predict() against
    ovss's Segmenter, compared in memory (printed)."""
    from make_clip_golden import perturb_ as perturb_clip
    from make_dino_golden import perturb_ as perturb_dino

    from ovss.backbones.clip import CLIP
    from ovss.backbones.configs import ARCHS
    from ovss.backbones.dino import create_dino
    from ovss.backbones.factory import LoadedClip
    from ovss.heads.vfm import register_vfm

    torch.manual_seed(0)
    ours_clip = CLIP(ARCHS["ViT-B-16"]).eval()
    perturb_clip(ours_clip, 7)
    sd = {k.removeprefix("text."): v for k, v in ours_clip.state_dict().items()}
    clip = cass_clip(model_mod, sd)
    vit = vits.VisionTransformer(patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                 qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
    perturb_dino(vit, 8)
    dino = dino_wrapper(dino_att, vit)
    register_vfm("full-dino", create_dino(weights={k: v.detach() for k, v in vit.state_dict().items()}).model)
    lc = LoadedClip(model=ours_clip, tokenizer_dir=None, pretrained=None, weights_id="full-random")
    n_q = sum(len(line.split(", ")) for line in CLASS_LINES)
    queries = grouped_queries(g, 512, n_q)
    for name, run in {"slide": RUNS["slide"], "whole": RUNS["whole"]}.items():
        run = dict(run)
        run.pop("size")
        dataset = run.pop("dataset")
        seg, idx = make_segmentor(seg_mod, clip, dino, class_file, queries, dataset, **run)
        image = smooth_image(g, 336, 448)
        ref_logits, ref_labels, rec = run_reference(seg, model_mod, image, (336, 448))
        ours = ovss_segmenter(lc, "voc21" if name == "whole" else "context60", "full-dino")
        logits, labels, cols = run_ovss(ours, queries, idx, image)
        print(f"full CASS {name} (ViT-B/16 + DINO ViT-B/8, 336x448): max abs logits diff",
              (logits - ref_logits[0]).abs().max().item(), "of max", ref_logits.abs().max().item(),
              "label mismatches", int((labels != ref_labels.to(labels.dtype)).sum()), "of", labels.numel(),
              "assignments equal", [c.tolist() for _, c in rec] == cols)


def ovss_segmenter(clip, preset: str, vfm: str):
    from ovss.core.segmenter import Segmenter

    return Segmenter("cass", clip=clip, preset=preset, device="cpu", tokenizer=HERE / "tokenizer" / "small_vocab.txt.gz",
                     overrides={"protocol.short_side": None, "plugins": f"cass:vfm={vfm}"}
                     | ({"plugins": f"cass:vfm={vfm},text_weight=0.04,prior_weight=0.25"} if preset == "context60" else {}))


def run_ovss(seg, queries, idx, image):
    """ovss's stitched logits, labels and per-window assignments for one image."""
    from ovss.core.resize import upsample
    from ovss.ops import spectral
    from ovss.text.bank import ClassSpec

    seg_queries = queries
    groups = [tuple(f"q{q}" for q, c in enumerate(idx) if c == k) for k in range(max(idx) + 1)]
    spec = ClassSpec(tuple(groups), background=True)
    cols, match = [], spectral.match_heads

    def recording(dist, pairing="cass"):
        m = match(dist, pairing)
        cols.append(m.dino_head.tolist())
        return m

    spectral.match_heads = recording
    try:
        with torch.no_grad():
            ori = tuple(image.shape[:2])
            state = seg.preprocess(image.numpy(), size=ori)
            low = seg.stitched_logits(state, seg_queries)
            logits = seg.refine(upsample(low, ori), state)
            labels = torch.as_tensor(seg.decide(low, state, spec).labels)
    finally:
        spectral.match_heads = match
    return logits, labels, cols


if __name__ == "__main__":
    main()
