"""Make the LPOSS / LPOSS+ method golden from the reference inferencer (run by hand).

    PYTHONPATH=<dir holding kornia 0.7.4> python tests/golden/make_lposs_golden.py \
        --lposs /path/to/vladan-stojnic/LPOSS --proxyclip /path/to/mc-lan/ProxyCLIP \
        --dino /path/to/facebookresearch/dino

Nothing of the references is committed. `segmentation/evaluation/lposs_eval.py` is loaded with
the CPU stand-ins of make_graphs_golden.py (cupy -> numpy, cupyx sparse -> scipy, cupy's cg
transcribed, FAISS kNN -> exact top-k; `perform_lp` without its final move to CUDA).
`models/lposs/lposs.py` (`LPOSS`) and `models/maskclip/maskclip.py` (`MaskClip`, `MaskClipHead`)
are the reference classes, made with `__new__` and given what their `__init__`s set:
- MaskClip's CLIP: an open_clip-style CLIP image tower with the weights of
  `clip_small.safetensors` (ProxyCLIP's vendored open_clip `VisionTransformer`, float32); the
  forward hook on `resblocks[-2]` stores its output batch-first, as open_clip 2.26.1 (LPOSS's pin)
  hands it over; decode head `proj` = visual.proj (1x1 conv), `class_embeddings` = the queries;
- LPOSS's DINO: facebookresearch/dino `VisionTransformer`, patch 16, width 128, 2 blocks of 2
  heads, FFN ratio 1, seeded perturbed weights (stored as `dino16.w.*`, official layout), the qkv
  hook on its last block, enc_type_feats "v";
- torchvision's Normalize -> (x - mean) / std; mmseg's resize -> F.interpolate.
Run: `LPOSS_Infrencer.slide_inference` on a 224x448 image in [0, 1] (3 windows of 224, stride
112: 588 patches), k 400, gamma 3, sigma 0.01, pix_dist_pow 1, alpha 0.95; `lposs`
(pixel_refine false) and `lposs+` (true, tau 0.01, r 13), ori_shape 200x400, num_classes =
number of queries (no reduction; the per-query scores are stored). 8 queries: class 0 = 4 stuff
words, then 4 classes; labels = reduce_to_true_classes(5 classes) + argmax.
Stored (tests/golden/lposs_small.safetensors): `image` (uint8), `queries`, `<run>.logits` every
4th row/column, `<run>.labels`.

`--full [--seed S]` stores nothing: ViT-B/16-sized CLIP and DINO (DINO drawn after
torch.manual_seed(S)) run through the reference and ovss; it prints, per run, the max abs
difference and label mismatches, the DINO features' difference, the smallest gap between the
reference's 400th and 401st similarity, the rows whose kNN differs, and the reference against
itself with its kNN ties sent to the lowest vs the highest index and with its similarities
rounded from float64 products.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module
from make_dino_golden import perturb_
from make_graphs_golden import load_lposs_eval, perform_lp_cpu
from make_methods_golden import _module, clearclip_clip, load_clearclip_open_clip, stub_frameworks
from make_proxyclip_golden import _Normalize

STEP = 4
N_QUERIES, N_CLASSES = 8, 5


def load_lposs_models(root: Path):
    stub_frameworks()
    sys.modules["torchvision.transforms"].Normalize = _Normalize
    _module("omegaconf", OmegaConf=None)
    reg = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    models = _module("models")
    models.__path__ = [str(root / "models")]
    _module("models.builder", MODELS=reg, build_model=None)
    mc = _module("models.maskclip")
    mc.__path__ = [str(root / "models/maskclip")]
    utils = _module("models.maskclip.utils")
    utils.__path__ = [str(root / "models/maskclip/utils")]
    load_module("models.maskclip.utils.prompt_templates", root / "models/maskclip/utils/prompt_templates.py",
                "models.maskclip.utils")
    sys.modules["open_clip"].get_tokenizer = None
    sys.modules["open_clip"].create_model_from_pretrained = None
    maskclip = load_module("models.maskclip.maskclip", root / "models/maskclip/maskclip.py", "models.maskclip")
    lposs = load_module("ref_lposs_model", root / "models/lposs/lposs.py")
    return maskclip, lposs


class _Backbone(torch.nn.Module):
    """What MaskClip calls `self.backbone`: the CLIP model; only its image path runs."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return self.visual(x)


def build_reference(maskclip, lposs_mod, cc_model, clip_sd, dino, queries):
    clip = clearclip_clip(cc_model, clip_sd)
    mc = maskclip.MaskClip.__new__(maskclip.MaskClip)
    torch.nn.Module.__init__(mc)
    head = maskclip.MaskClipHead.__new__(maskclip.MaskClipHead)
    torch.nn.Module.__init__(head)
    head.class_names = [f"q{i}" for i in range(queries.shape[0])]
    head.register_buffer("class_embeddings", queries.clone())
    head.proj = torch.nn.Conv2d(clip.visual.proj.shape[0], clip.visual.proj.shape[1], 1, bias=False)
    head.proj.weight = torch.nn.Parameter(clip.visual.proj.t()[:, :, None, None])
    mc.decode_head = head
    mc.patch_size, mc.img_size = 16, (224, 224)
    mc.clip_T = maskclip.OPENAI_NORMALIZE
    mc.hook_features = {}
    mc.backbone = _Backbone(clip.visual)
    mc.backbone.visual.transformer.resblocks[-2].register_forward_hook(
        lambda m, i, o: mc.hook_features.__setitem__("v", o.permute(1, 0, 2)))  # batch-first, open_clip 2.26
    mc._positional_embd = torch.nn.Parameter(clip.visual.positional_embedding.data.clone())
    model = lposs_mod.LPOSS.__new__(lposs_mod.LPOSS)
    torch.nn.Module.__init__(model)
    model.clip_backbone = mc
    model.dino_T = lposs_mod.DINO_NORMALIZE
    model.dino_arch, model.enc_type_feats, model.dino_patch_size = "vit_base", "v", 16
    model.dino_encoder = dino
    model.hook_features = {}
    dino.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: model.hook_features.__setitem__("qkv", o))
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lposs", type=Path, required=True)
    ap.add_argument("--proxyclip", type=Path, required=True)
    ap.add_argument("--dino", type=Path, required=True)
    ap.add_argument("--full", action="store_true",
                    help="ViT-B/16 CLIP + DINO ViT-B/16 random weights, in memory against ovss (printed)")
    ap.add_argument("--seed", type=int, default=0, help="--full: the seed of the random DINO weights")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ev = load_lposs_eval(args.lposs)
    ev.perform_lp = lambda L, preds: perform_lp_cpu(ev, L, preds.cpu())
    maskclip, lposs_mod = load_lposs_models(args.lposs)
    cc_model = load_clearclip_open_clip(args.proxyclip)
    utils = types.ModuleType("utils")
    utils.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules["utils"] = utils
    dino_mod = load_module("ref_dino_vit", args.dino / "vision_transformer.py")
    g = torch.Generator().manual_seed(20250620)
    if args.full:
        torch.manual_seed(args.seed)
        ref_feats = {}
        lap = ev.get_lposs_laplacian
        ev.get_lposs_laplacian = lambda feats, *a, **k: (ref_feats.__setitem__("dino", feats), lap(feats, *a, **k))[1]
        dino = dino_mod.VisionTransformer(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                          qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
        from make_clip_golden import perturb_ as perturb_clip

        from ovss.backbones.clip import CLIP
        from ovss.backbones.configs import ARCHS

        torch.manual_seed(0)
        ours_clip = CLIP(ARCHS["ViT-B-16"]).eval()
        perturb_clip(ours_clip, 9)
        clip_sd = {k.removeprefix("text."): v for k, v in ours_clip.state_dict().items()}
    else:
        dino = dino_mod.VisionTransformer(img_size=[32], patch_size=16, embed_dim=128, depth=2, num_heads=2,
                                          mlp_ratio=1, qkv_bias=True,
                                          norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
        clip_sd = load_file(str(HERE / "clip_small.safetensors"))
    perturb_(dino, 300)
    queries = F.normalize(torch.randn(N_QUERIES, clip_sd["text_projection"].shape[1], generator=g), dim=-1)
    model = build_reference(maskclip, lposs_mod, cc_model, clip_sd, dino, queries)
    image = torch.randint(0, 256, (224, 448, 3), generator=g, dtype=torch.uint8)
    image = F.avg_pool2d(image.permute(2, 0, 1)[None].float(), 9, 1, 4)[0].permute(1, 2, 0).round().to(torch.uint8)
    inputs = image.permute(2, 0, 1)[None].float() / 255.0
    ori = (200, 400)
    out = {"image": image.contiguous(), "queries": queries, "ori_shape": torch.tensor(ori)}
    out.update({f"dino16.w.{k}": v.detach().clone().contiguous() for k, v in dino.state_dict().items()})
    for run, plus in (("lposs", False), ("lposs+", True)):
        cfg = types.SimpleNamespace(sigma=0.01, pix_dist_pow=1.0, k=400, gamma=3.0, alpha=0.95,
                                    model=types.SimpleNamespace(vit_patch_size=16), pixel_refine=plus,
                                    tau=0.01, r=13)
        inf = ev.LPOSS_Infrencer.__new__(ev.LPOSS_Infrencer)
        torch.nn.Module.__init__(inf)
        inf.mode, inf.num_classes, inf.model, inf.config = "slide", N_QUERIES, model, cfg
        inf.test_cfg = types.SimpleNamespace(mode="slide", stride=(112, 112), crop_size=(224, 224))  # mmcv ConfigDict
        inf.align_corners = False
        with torch.no_grad():
            masks = inf.slide_inference(inputs, [{"ori_shape": ori}], True)
        inf.num_classes = N_CLASSES
        labels = inf.reduce_to_true_classes(masks)[0].argmax(0)
        out[f"{run}.logits"] = masks[0, :, ::STEP, ::STEP].float().contiguous()
        out[f"{run}.labels"] = labels.to(torch.uint8).contiguous()
        print(run, tuple(masks.shape), "labels", labels.unique().tolist())
        if args.full:
            compare_full(run, masks[0], labels, image, queries, dino, ours_clip, ori, ref_feats["dino"])
            # the reference against itself, its kNN's ties going to the lowest / the highest index
            faiss, knn = sys.modules["faiss"], sys.modules["faiss"].knn_gpu
            tied = []
            for flip in (False, True):
                def knn_sorted(res, xq, xb, k, metric=None, flip=flip):
                    s = xq @ xb.T
                    v, i = (s.flip(1) if flip else s).sort(dim=1, descending=True, stable=True)
                    return v[:, :k], (xb.shape[0] - 1 - i[:, :k]) if flip else i[:, :k]

                faiss.knn_gpu = knn_sorted
                inf.num_classes = N_QUERIES
                with torch.no_grad():
                    tied.append(inf.slide_inference(inputs, [{"ori_shape": ori}], True))
            # ... and with its similarities rounded from float64 products (another float32 order)
            faiss.knn_gpu = lambda res, xq, xb, k, metric=None: (xq.double() @ xb.double().T).float().topk(k, dim=1)
            with torch.no_grad():
                tied.append(inf.slide_inference(inputs, [{"ori_shape": ori}], True))
            faiss.knn_gpu = knn
            print(f"  reference vs itself, kNN ties to the lowest vs the highest index: max abs diff "
                  f"{(tied[0] - tied[1]).abs().max().item():.3g}; similarities from float64 products: "
                  f"{(tied[2] - masks).abs().max().item():.3g}")
    if args.full:
        return
    save_file(out, str(HERE / "lposs_small.safetensors"), metadata={"logits_step": str(STEP)})


def compare_full(run, ref, ref_labels, image, queries, dino, ours_clip, ori, ref_dino) -> None:
    import ovss.methods.lposs as ovss_lposs
    from ovss.backbones.dino import create_dino
    from ovss.backbones.factory import LoadedClip
    from ovss.core.decision import class_probabilities, decide
    from ovss.core.resize import upsample
    from ovss.core.segmenter import Segmenter
    from ovss.heads.vfm import register_vfm
    from ovss.text.bank import ClassSpec

    register_vfm("full-dino16", create_dino(weights={k: v.detach() for k, v in dino.state_dict().items()}).model)
    lc = LoadedClip(model=ours_clip, tokenizer_dir=None, pretrained=None, weights_id="full-random")
    seg = Segmenter(run, clip=lc, preset="voc21", device="cpu", tokenizer=HERE / "tokenizer" / "small_vocab.txt.gz",
                    overrides={"protocol.short_side": None, "plugins": "lposs:vfm=full-dino16"})
    seg_queries = queries
    spec_q = ClassSpec(tuple((f"q{i}",) for i in range(N_QUERIES)), background=False)
    ours = {}
    graph = ovss_lposs.lposs_patch_graph
    ovss_lposs.lposs_patch_graph = lambda feats, *a, **k: (ours.__setitem__("dino", feats), graph(feats, *a, **k))[1]
    try:
        with torch.no_grad():
            state = seg.preprocess(image.numpy(), size=ori)
            low = seg.stitched_logits(state, seg_queries)
            logits = upsample(seg.refine(low, state, spec_q, "network"), ori)
    finally:
        ovss_lposs.lposs_patch_graph = graph
    # the kNN at its boundary: rows whose k-th and (k+1)-th reference similarities are closer than
    # the float32 noise of the two DINO implementations can select another neighbour
    sims = (ref_dino @ ref_dino.T).topk(401, dim=1).values
    sets = [(f @ f.T).topk(400, dim=1).indices.sort(1).values for f in (ref_dino, ours["dino"])]
    print(f"  DINO features max abs diff {(ours['dino'] - ref_dino).abs().max().item():.2g}; smallest gap between "
          f"the 400th and 401st reference similarity {(sims[:, 399] - sims[:, 400]).min().item():.2g}; rows whose "
          f"kNN differs {int((sets[0] != sets[1]).any(1).sum())}")
    labels, _ = decide(class_probabilities(logits, [0, 0, 0, 0, 1, 2, 3, 4], N_CLASSES, 1.0),
                       seg.recipe.decision)
    diff = (logits.double() - ref.double()).abs().max().item()
    print(f"full {run} (ViT-B/16 CLIP + DINO ViT-B/16, 3 windows, 588 nodes, k 400): max abs diff {diff:.3g} "
          f"(scores up to {ref.abs().max().item():.3g}), label mismatches "
          f"{int((labels != ref_labels.to(labels.dtype)).sum())} of {labels.numel()}")


if __name__ == "__main__":
    main()
