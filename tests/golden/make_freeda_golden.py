"""Make the FreeDA golden from the reference code (run by hand; nothing of it is committed).

    pip install faiss-cpu scikit-image   # the reference's own search and superpixels
    PYTHONPATH=src python tests/golden/make_freeda_golden.py --freeda /path/to/aimagelab/freeda/src

The reference (aimagelab/freeda@bee96c5, `src/`) is imported with stand-ins for what does not run
with this CPU torch or is not installed; each stand-in is the behaviour the reference gets from
the real package for these calls:
- torchvision.transforms: Compose; Resize(size, interpolation, antialias=None) on a float tensor
  -> F.interpolate(mode, align_corners=False) (torchvision's tensor path: no antialias, no clamp
  for float); Normalize -> (x - mean) / std;
- einops.rearrange for the two patterns freeda.py uses ('n t l -> (n t) l', '(n t) c -> n t c');
- open_clip / timm: not imported models but the SAME ovss towers, wrapped: `clip_model` has
  `encode_image` = ovss tiny-synthetic CLIP's image embedding and `encode_text` = a lookup of
  seeded raw text embeddings (one template per class); `backbone_model.forward_features` = a
  small seeded random DINOv2-layout ViT (patch 14, width 32, 2 blocks, LayerScale) run by ovss,
  class token + patch tokens after the final norm (timm's forward_features). So the parity is of
  FreeDA's own arithmetic (retrieval, prototype mean, superpixels, patch / region scores,
  replacement, ensemble, slide averaging), given identical features;
- mmcv / mmseg (us/misc.py's test helpers), omegaconf (models/builder.py), cv2, utils.get_logger, datasets.get_template: not used
  on this path, stubbed; faiss and skimage are the real packages.
mmseg's slide inference is the harness's loop (crop 448, stride 224, overlap average), the same
arithmetic as mmseg 0.27 `EncoderDecoder.slide_inference` for one image.

Run: a 448 x 560 synthetic scene (2 windows), 4 classes, a random bank of 40 entries (keys in the
CLIP text space, 32-d prototypes) in the released layout (`faiss_index/knn.index` IndexFlatIP +
`prototype_embeddings/*.npy`), k_search 5, Felzenszwalb scale 100 / sigma 0.7 / min_size 20,
ensemble 0.8, max/mean 1.0, DINO input 518.
Stored (tests/golden/freeda_small.safetensors): `image_sum` (the scene is `scene()`, regenerated
by the test; its pixel sum checks it), `text_raw` (4, D),
`bank.keys`, `bank.prototypes`, `dino.*` (the random DINO's weights, ovss layout),
`ref.text_emb`, `ref.proto_emb` (4, 1, 32), per window w: `ref.region.<w>` (M, 4) region scores,
`ref.scores.<w>` every 4th row/column; `ref.labels_sp.0` (448x448 int16, window 0's superpixels);
`ref.scores` (4, H, W) every 4th row/column, `ref.label_map` (H, W) uint8 argmax.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
STEP = 4
SP = {"scale": 100, "sigma": 0.7, "min_size": 20}
K_SEARCH = 5


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class _Resize:
    def __init__(self, size, interpolation="bilinear", antialias=None):
        self.size = tuple(size) if not isinstance(size, int) else (size, size)
        self.interpolation = interpolation

    def __call__(self, x):
        return F.interpolate(x, self.size, mode=self.interpolation, align_corners=False)


class _Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, x):
        return (x - self.mean) / self.std


class _Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


def _rearrange(tensor, pattern, **kw):
    if pattern == "n t l -> (n t) l":
        return tensor.reshape(-1, tensor.shape[-1])
    if pattern == "(n t) c -> n t c":
        return tensor.reshape(kw["n"], kw["t"], tensor.shape[-1])
    raise NotImplementedError(pattern)


def stub_and_load(root: Path):
    _module("torchvision", ops=None)
    _module("torchvision.transforms", Compose=_Compose, Resize=_Resize)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    _module("einops", rearrange=_rearrange, repeat=None)
    _module("open_clip")
    _module("timm")
    _module("cv2")
    _module("utils", get_logger=lambda *a, **k: None)
    _module("datasets", get_template=lambda key: ["{}"])
    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls), build=None)
    models = _module("models")
    models.__path__ = [str(root / "models")]
    _module("models.builder", MODELS=registry)
    pkg = _module("models.freeda")
    pkg.__path__ = [str(root / "models/freeda")]
    mp = _module("models.freeda.mask_proposer")
    mp.__path__ = [str(root / "models/freeda/mask_proposer")]
    _module("mmcv")
    _module("mmcv.engine", collect_results_cpu=None, collect_results_gpu=None)
    _module("mmcv.image", tensor2imgs=None)
    _module("mmcv.runner", get_dist_info=None)
    _module("mmseg")
    _module("mmseg.apis")
    _module("mmseg.apis.test", np2tmp=None)
    _load("us", root / "us/misc.py")
    _load("models.freeda.gumbel", root / "models/freeda/gumbel.py")
    _load("models.freeda.modules", root / "models/freeda/modules.py")
    _load("models.freeda.pamr", root / "models/freeda/pamr.py")
    _load("models.freeda.mask_proposer.superpixel_configs", root / "models/freeda/mask_proposer/superpixel_configs.py")
    sup = _load("models.freeda.mask_proposer.superpixel", root / "models/freeda/mask_proposer/superpixel.py")
    masker = _load("models.freeda.masker", root / "models/freeda/masker.py")
    freeda = _load("models.freeda.freeda", root / "models/freeda/freeda.py")
    return freeda, masker, sup


def small_dino(seed: int = 0, width: int = 32, heads: int = 2):
    """A seeded random DINOv2-layout tower (ovss), weights perturbed so LayerNorms/LayerScales matter."""
    from ovss.backbones.configs import VisionCfg
    from ovss.backbones.dino_pretrained import _DINO
    from ovss.backbones.vit import VisionTransformer

    torch.manual_seed(seed)
    cfg = VisionCfg(width=width, layers=2, heads=heads, patch_size=14, image_size=518, layer_scale=True, **_DINO)
    m = VisionTransformer(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g) if p.ndim < 2 else 0.05 * torch.randn(p.shape, generator=g))
    return m


def tokens_with_cls(dino, x):
    """timm forward_features: all tokens after the final norm (class token first)."""
    out = dino.forward_tokens(x, upto=len(dino.blocks))
    return dino.ln_post(out.tokens)


def scene(h: int = 448, w: int = 560) -> np.ndarray:
    from ovss.data.synthetic import make_scene

    return np.ascontiguousarray(make_scene(7, size=w).image[:h])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--freeda", type=Path, required=True, help="aimagelab/freeda checkout's src/")
    ap.add_argument("--out", type=Path, default=HERE / "freeda_small.safetensors")
    ap.add_argument("--check-width", type=int, default=0,
                    help="store nothing: a DINO of this width (64-d heads; 1024 = ViT-L's) and as wide "
                         "prototypes, run through the reference and ovss; print the differences")
    args = ap.parse_args()
    import faiss
    from safetensors.torch import save_file

    import ovss
    from ovss.core.protocol import window_boxes

    freeda_mod, masker_mod, sup_mod = stub_and_load(args.freeda.resolve())
    seg = ovss.load("freeda", backbone="tiny-synthetic", device="cpu")
    clip_visual = seg.visual.eval()
    width = args.check_width or 32
    dino = small_dino(width=width, heads=max(width // 64, 2))
    g = torch.Generator().manual_seed(3)
    d_text = seg.clip.model.cfg.text.output_dim
    text_raw = torch.randn(4, d_text, generator=g)
    keys = F.normalize(torch.randn(40, d_text, generator=g), dim=-1)
    keys[:8] = F.normalize(text_raw[[0, 0, 1, 1, 2, 2, 3, 3]] + 0.3 * torch.randn(8, d_text, generator=g), dim=-1)
    protos = torch.randn(40, width, generator=g)

    tmp = Path(tempfile.mkdtemp())
    (tmp / "prototype_embeddings").mkdir()
    (tmp / "faiss_index").mkdir()
    for i in range(40):
        np.save(tmp / "prototype_embeddings" / f"{i:05d}.npy", protos[i].numpy())
    index = faiss.IndexFlatIP(d_text)
    index.add(keys.numpy())
    faiss.write_index(index, str(tmp / "faiss_index" / "knn.index"))

    ref = object.__new__(freeda_mod.FreeDA)
    torch.nn.Module.__init__(ref)
    ref.__dict__.update(
        collection_index=faiss.read_index(str(tmp / "faiss_index" / "knn.index")), ef_search=50000,
        k_search=K_SEARCH, k_clustering=1, collection_embeddings_path=str(tmp / "prototype_embeddings"),
        collection_embeddings=sorted((tmp / "prototype_embeddings").iterdir()), retrieval_threshold=None,
        k_parts=1, skip_clustering=False, prototype_mean=True, clustering_type="euclidean",
        use_mask_proposer=True, mask_proposer="superpixel",
        mask_proposer_algorithm=sup_mod.SuperpixelExtractor({"algorithm": "felzenszwalb", **SP}),
        use_category_pre_filtering=False, ensemble_dino_clip=0.8, ensemble_max_mean=1.0,
        save_clip_features=False, save_clip_features_dir=None, save_dino_features=False,
        save_dino_features_dir=None, last_attn_keys=False, use_k_nn=False, k_nn=None, region_pooling=True,
        similarity_type="cosine", ensemble_mode="arithmetic", visual_category_pre_filtering=None, dino_filenames={},
    )
    ref.masker = masker_mod.FreeDAMasker(1.0, "cosine").eval()
    ref.clip_model = types.SimpleNamespace(encode_image=lambda x: clip_visual(x),
                                           encode_text=lambda tok: text_raw[tok[:, 0]])
    ref.clip_image_preprocess = _Compose([_Resize((224, 224), "bicubic"), lambda x: x / 255,
                                          _Normalize((0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711))])
    ref.backbone_model = types.SimpleNamespace(forward_features=lambda x: tokens_with_cls(dino, x))
    ref.backbone_transforms = _Compose([_Resize((518, 518)), lambda x: x / 255,
                                        _Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    # the collection list holds file names (os.listdir); np.load joins them with the path
    ref.collection_embeddings = [p.name for p in ref.collection_embeddings]

    captured = {}
    orig = ref.get_backbone_region_similarities

    def spy(*a, **k):
        out = orig(*a, **k)
        captured["dense"] = out
        return out

    ref.get_backbone_region_similarities = spy

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        tokens = torch.arange(4)[:, None, None].expand(4, 1, 77).contiguous()  # [N, T=1, L]; row id in col 0
        text_emb, proto_emb = ref.build_proto_embedding(tokens)
        img = scene()
        H, W = img.shape[:2]
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()  # RGB float 0-255
        canvas = torch.zeros(1, 4, H, W)
        count = torch.zeros(1, 1, H, W)
        for wi, (y1, y2, x1, x2) in enumerate(window_boxes(H, W, 448, 224)):
            crop = x[:, [2, 1, 0], y1:y2, x1:x2]  # mmseg hands BGR; generate_masks flips it
            mask, _, _ = ref.generate_masks(crop, [{"ori_filename": "x.png"}], text_emb, proto_emb,
                                                     ["a", "b", "c", "d"])
            labels = sup_mod.SuperpixelExtractor({"algorithm": "felzenszwalb", **SP})(crop[:, [2, 1, 0]])[3][0]
            m = int(labels.max()) + 1
            dense = captured["dense"][0]  # (Q, H, W) region scores painted (sigmoid(-1e5) off-region)
            first = torch.stack([(labels == i).flatten().nonzero()[0, 0] for i in range(m)])
            out[f"ref.region.{wi}"] = dense.flatten(1)[:, first].T.contiguous()
            if wi == 0:
                out["ref.labels_sp.0"] = labels.to(torch.int16)
            out[f"ref.scores.{wi}"] = mask[0, :, ::STEP, ::STEP].contiguous()
            canvas[:, :, y1:y2, x1:x2] += mask
            count[:, :, y1:y2, x1:x2] += 1
        scores = canvas / count
    out.update({
        "image_sum": torch.tensor([int(img.astype(np.int64).sum())]), "text_raw": text_raw, "bank.keys": keys, "bank.prototypes": protos,
        "ref.text_emb": text_emb, "ref.proto_emb": proto_emb.float(),
        "ref.scores": scores[0, :, ::STEP, ::STEP].contiguous(), "ref.label_map": scores[0].argmax(0).to(torch.uint8),
    })
    if args.check_width:
        check(out, dino, scores, tmp)
        return
    out.update({f"dino.{k}": v.detach().contiguous() for k, v in dino.state_dict().items()})
    save_file(out, str(args.out))
    print("saved", args.out, {k: tuple(v.shape) for k, v in out.items() if not k.startswith("dino.")})


def check(out: dict, dino, scores: torch.Tensor, tmp: Path) -> None:
    """ovss on the same inputs (its own bank layout, exact torch kNN); print the differences."""
    import ovss
    from ovss.data.bank import save_bank
    from ovss.heads.vfm import register_vfm

    register_vfm("freeda-check-dino", dino)
    bank = save_bank(tmp / "ovss_bank", out["bank.keys"], out["bank.prototypes"], write_index=False)
    plug = (f"freeda:bank={bank},vfm=freeda-check-dino,dino_size=518,k_search={K_SEARCH},scale={float(SP['scale'])},"
            f"sigma={SP['sigma']},min_size={SP['min_size']},ensemble=0.8,knn=torch")
    seg = ovss.load("freeda", backbone="tiny-synthetic", device="cpu",
                    overrides={"plugins": plug, "protocol.short_side": 448, "protocol.crop": 448, "protocol.stride": 224})
    with seg.trace() as t, torch.no_grad():
        ours = seg.stitched_logits(seg.preprocess(scene()), F.normalize(out["text_raw"], dim=-1))
    for w in range(2):
        o, r = t["freeda.region"][w], out[f"ref.region.{w}"]
        ok = ~o.isnan().any(1)
        print(f"window {w}: region max abs diff {(o[ok] - r[ok]).abs().max().item():.3g} ({int(ok.sum())} regions), "
              f"scores {(t['freeda.scores'][w][:, ::STEP, ::STEP] - out[f'ref.scores.{w}']).abs().max().item():.3g}")
    print(f"stitched max abs diff {(ours - scores[0]).abs().max().item():.3g}; label maps equal: "
          f"{bool(torch.equal(ours.argmax(0), scores[0].argmax(0)))}")


if __name__ == "__main__":
    main()
