"""Make the ProxyCLIP golden from the reference segmentor (run by hand).

    python tests/golden/make_proxyclip_golden.py --proxyclip /path/to/mc-lan/ProxyCLIP \
        --dino /path/to/facebookresearch/dino [--full]

Nothing of the references is committed. ProxyCLIP's `proxyclip_segmentor.py` is imported with the
stand-ins of make_methods_golden.py (mmseg, mmengine, torchvision) plus empty `segment_anything`,
`mae`, `einops`, `openpyxl` modules and torchvision's `transforms.Normalize` (a plain
(x - mean) / std per channel, as torchvision computes it); its `myutils.UnNormalize` is the real
one. The segmentor object is made with `__new__` and given the attributes its `__init__` sets:
the CLIP model is ProxyCLIP's vendored open_clip `CLIP` (whose VisionTransformer takes
`ex_feats, beta, gamma`) with the weights of `clip_small.safetensors`, float32; the proxy is
facebookresearch/dino's `VisionTransformer` (what `torch.hub.load('facebookresearch/dino:main',
...)` builds) with the `dino` weights of `dino_small.safetensors` (width 128, patch 8, 2 blocks);
the queries are seeded random unit vectors. The reference's `.half()` casts are made no-ops
(float32 parity).

Run: `predict()` on a 224x336 uint8 image normalised as its SegDataPreProcessor does, with
slide_crop 224 / stride 112 (its Cityscapes windows: 2 crops), beta 1.2, gamma 3.0, logit_scale
40, prob_thd 0.2, ori_shape 200x300. Stored (tests/golden/proxyclip_small.safetensors): `image`,
`ori_shape`, `queries`, `query_to_class`, `logits` (what postprocess_result receives, every 5th
row/column; metadata logits_step) and `labels`. `--full`: ViT-B/16 CLIP and DINO ViT-B/8 sized
random weights at 336/112 on a 336x448 image, compared in memory (printed).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module
from make_methods_golden import (
    CLASS_LINES,
    MEAN,
    STD,
    _module,
    _Sample,
    capture_postprocess,
    clearclip_clip,
    load_clearclip_open_clip,
    stub_frameworks,
)

STEP = 5


class _Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x):
        m = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - m) / s


def load_proxyclip(root: Path):
    stub_frameworks()
    sys.modules["torchvision.transforms"].Normalize = _Normalize
    _module("segment_anything", sam_model_registry={})
    _module("mae")
    _module("mae.models_vit")
    _module("mae.pos_embed", interpolate_pos_embed=None)
    sys.modules["mae"].models_vit = sys.modules["mae.models_vit"]
    _module("einops", rearrange=None)
    _module("openpyxl")
    prompts = _module("prompts")
    prompts.__path__ = [str(root / "prompts")]
    load_module("prompts.imagenet_template", root / "prompts/imagenet_template.py")
    myutils = load_module("myutils", root / "myutils.py")
    cc_model = load_clearclip_open_clip(root)
    mod = load_module("ref_proxyclip_segmentor", root / "proxyclip_segmentor.py")
    return mod, cc_model, myutils


def make_segmentor(mod, myutils, clip, vfm, class_file: Path, queries, **attrs):
    cls = mod.ProxyCLIPSegmentation
    seg = cls.__new__(cls)
    torch.nn.Module.__init__(seg)
    seg.clip, seg.vfm, seg.vfm_model = clip, vfm, "dino"
    seg.unnorm = myutils.UnNormalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    seg.norm = _Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    words, idx = mod.get_cls_idx(str(class_file))
    seg.num_queries, seg.num_classes = len(words), max(idx) + 1
    seg.query_idx = torch.tensor(idx, dtype=torch.int64)
    seg.query_features = queries
    seg.dtype = queries.dtype
    for k, v in attrs.items():
        setattr(seg, k, v)
    return seg, idx


def run_reference(seg, image_u8: torch.Tensor, ori_shape) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (image_u8.permute(2, 0, 1)[None].float() - mean) / std
    box = capture_postprocess(seg)
    half = torch.Tensor.half
    torch.Tensor.half = lambda self: self  # float32 parity: the reference casts to fp16
    try:
        with torch.no_grad():
            out = seg.predict(x, [_Sample(ori_shape)])
    finally:
        torch.Tensor.half = half
    return box["logits"], out[0].pred_sem_seg.data[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxyclip", type=Path, required=True)
    ap.add_argument("--dino", type=Path, required=True)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    utils = types.ModuleType("utils")  # dino's vision_transformer.py takes trunc_normal_ from it
    utils.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules["utils"] = utils
    dino_mod = load_module("ref_dino_vit", args.dino / "vision_transformer.py")
    mod, cc_model, myutils = load_proxyclip(args.proxyclip)
    g = torch.Generator().manual_seed(20250610)
    class_file = Path("/tmp/proxyclip_golden_classes.txt")
    class_file.write_text("\n".join(line.replace(", ", "; ") for line in CLASS_LINES))
    if args.full:
        return run_full(dino_mod, mod, cc_model, myutils, class_file, g)
    clip_sd = load_file(str(HERE / "clip_small.safetensors"))
    clip = clearclip_clip(cc_model, clip_sd)
    dg = load_file(str(HERE / "dino_small.safetensors"))
    dino_sd = {k[len("dino.w."):]: v for k, v in dg.items() if k.startswith("dino.w.")}
    vfm = dino_mod.VisionTransformer(img_size=[32], patch_size=8, embed_dim=128, depth=2, num_heads=2, mlp_ratio=1,
                                     qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    vfm.load_state_dict(dino_sd)
    vfm.eval()
    n_q = sum(len(line.split(", ")) for line in CLASS_LINES)
    queries = torch.nn.functional.normalize(torch.randn(n_q, clip_sd["text_projection"].shape[1], generator=g), dim=-1)
    seg, idx = make_segmentor(mod, myutils, clip, vfm, class_file, queries, logit_scale=40, prob_thd=0.2,
                              beta=1.2, gamma=3.0, slide_stride=112, slide_crop=224)
    image = torch.randint(0, 256, (224, 336, 3), generator=g, dtype=torch.uint8)
    # smooth it a little so labels form regions
    image = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None].float(), 9, 1, 4)[0].permute(1, 2, 0)
    image = image.round().clamp(0, 255).to(torch.uint8)
    ori = (200, 300)
    logits, labels = run_reference(seg, image, ori)
    out = {"image": image.contiguous(), "ori_shape": torch.tensor(ori), "queries": queries,
           "query_to_class": torch.tensor(idx), "logits": logits[0, :, ::STEP, ::STEP].contiguous(),
           "labels": labels.to(torch.uint8).contiguous()}
    save_file(out, str(HERE / "proxyclip_small.safetensors"), metadata={"logits_step": str(STEP)})
    print({k: tuple(v.shape) for k, v in out.items()}, "labels", labels.unique().tolist())


def run_full(dino_mod, mod, cc_model, myutils, class_file, g) -> None:
    """ViT-B/16 CLIP + DINO ViT-B/8, random (perturbed), 336/112 windows on a 336x448 image:
    the reference's predict() against ovss's Segmenter, compared in memory."""
    from make_clip_golden import perturb_ as perturb_clip
    from make_dino_golden import perturb_ as perturb_dino

    from ovss.backbones.clip import CLIP
    from ovss.backbones.configs import ARCHS
    from ovss.backbones.dino import create_dino
    from ovss.backbones.factory import LoadedClip
    from ovss.core.resize import upsample
    from ovss.core.segmenter import Segmenter
    from ovss.heads.vfm import register_vfm
    from ovss.text.bank import ClassSpec

    torch.manual_seed(0)
    ours_clip = CLIP(ARCHS["ViT-B-16"]).eval()
    perturb_clip(ours_clip, 7)
    sd = {k.removeprefix("text."): v for k, v in ours_clip.state_dict().items()}
    clip = clearclip_clip(cc_model, sd)
    vfm = dino_mod.VisionTransformer(patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                     qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
    perturb_dino(vfm, 8)
    with torch.no_grad():  # keep random DINO tokens from collapsing (all-equal rows -> all -inf affinity)
        for b in vfm.blocks:
            b.attn.proj.weight.mul_(0.1)
            b.mlp.fc2.weight.mul_(0.1)
    n_q = sum(len(line.split(", ")) for line in CLASS_LINES)
    queries = torch.nn.functional.normalize(torch.randn(n_q, 512, generator=g), dim=-1)
    seg, idx = make_segmentor(mod, myutils, clip, vfm, class_file, queries, logit_scale=40, prob_thd=0.2,
                              beta=1.2, gamma=3.0, slide_stride=112, slide_crop=336)
    image = torch.randint(0, 256, (336, 448, 3), generator=g, dtype=torch.uint8)
    image = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None].float(), 9, 1, 4)[0].permute(1, 2, 0)
    image = image.round().clamp(0, 255).to(torch.uint8)
    ori = (300, 400)
    ref_logits, ref_labels = run_reference(seg, image, ori)
    register_vfm("full-dino", create_dino(weights={k: v.detach() for k, v in vfm.state_dict().items()}).model)
    lc = LoadedClip(model=ours_clip, tokenizer_dir=None, pretrained=None, weights_id="full-random")
    ours = Segmenter("proxyclip", clip=lc, preset="voc21", device="cpu",
                     tokenizer=HERE / "tokenizer" / "small_vocab.txt.gz",
                     overrides={"protocol.short_side": None, "plugins": "proxy:vfm=full-dino"})
    ours_queries = queries
    groups = [tuple(f"q{q}" for q, c in enumerate(idx) if c == k) for k in range(max(idx) + 1)]
    spec = ClassSpec(tuple(groups), background=True)
    with torch.no_grad():
        state = ours.preprocess(image.numpy(), size=ori)
        low = ours.stitched_logits(state, ours_queries)
        logits = ours.refine(upsample(low, ori), state)
        labels = torch.as_tensor(ours.decide(low, state, spec).labels)
    r = ref_logits[0]
    nan_ref, nan_ours = torch.isnan(r), torch.isnan(logits)
    fin = ~nan_ref & ~nan_ours
    print("full ProxyCLIP (ViT-B/16 + DINO ViT-B/8, 336/112 on 336x448): max abs logits diff",
          (logits[fin] - r[fin]).abs().max().item() if fin.any() else None,
          "NaN entries ref/ours/same", int(nan_ref.sum()), int(nan_ours.sum()), bool(torch.equal(nan_ref, nan_ours)),
          "label mismatches", int((labels != ref_labels.to(labels.dtype)).sum()), "of", labels.numel())


if __name__ == "__main__":
    main()
