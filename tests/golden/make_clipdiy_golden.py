"""Make the CLIP-DIY and FOUND goldens from the reference code (run by hand).

    python tests/golden/make_clipdiy_golden.py --clipdiy /path/to/wysoczanska/clip-diy \
        --found /path/to/valeoai/FOUND --dino /path/to/facebookresearch/dino [--full]

Nothing of the references is committed. Stand-ins (the references' own imports that do not
run here): `torchvision.transforms` (`ToPILImage` of a uint8 CHW tensor = `PIL.Image.fromarray`
of it in HWC; `ToTensor` = HWC uint8 -> CHW float / 255; `Normalize` = sub mean, div std, as
torchvision does them), `cv2` (imported by FOUND's misc.py, never called on this path), and
`transformers.CLIPImageProcessor` is the installed transformers' PIL backend
(`CLIPImageProcessorPil`: PIL bicubic resize of the PIL crop, centre crop, /255, normalise),
configured as laion/CLIP-ViT-B-32-laion2B-s34B-b79K's preprocessor_config.json.

Runs (all float32, seeded):
- `grid`: clip-diy's `ClipConv.forward` (src/clip_conv.py) with the HF image model and processor
  replaced by stand-ins that return FIXED crop embeddings (1 + 9 + 49 rows, unnormalised) for
  the crops they are given; the reference's own normalisation, cosine, grid regrouping, bilinear
  resize and scale averaging run; then the saliency fusion lines of eval_clipconv.py:49-64 on a
  seeded saliency map.
- `e2e`: the same with the real transformers `CLIPVisionModelWithProjection` holding the vision
  tower of tests/golden/clip_small.safetensors (converted to the HF layout) and the PIL
  processor, on a 256 x 256 uint8 image; the saliency is FOUND's (below) on that image.
- `found`: FOUND's `FoundModel.forward_step(for_eval=True)` + clip-diy
  thirdparty/extract_saliency.py:259-277 (`--drop-probs`), on a small DINO (patch 8, width 64,
  1 head, 2 blocks: `vit_small` swapped for it, the checkpoint download replaced by seeded
  weights) with a 64-channel decoder, on a 256 x 256 image and on a 60 x 90 image (padded to
  64 x 96). `--full` runs the real ViT-S/8 architecture with random weights in memory against
  ovss and prints the difference.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module
from make_dino_golden import perturb_

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def stub_modules() -> None:
    from PIL import Image

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")

    class ToPILImage:
        def __call__(self, t):
            return Image.fromarray(t.permute(1, 2, 0).numpy())

    class ToTensor:
        def __call__(self, pic):
            return torch.from_numpy(np.array(pic)).permute(2, 0, 1).contiguous().float().div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean), torch.tensor(std)

        def __call__(self, t):
            return t.sub(self.mean[:, None, None]).div(self.std[:, None, None])

    class Compose:
        def __init__(self, fs):
            self.fs = fs

        def __call__(self, x):
            for f in self.fs:
                x = f(x)
            return x

    tr.ToPILImage, tr.ToTensor, tr.Normalize, tr.Compose = ToPILImage, ToTensor, Normalize, Compose
    tv.transforms = tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr})
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # the real one when --cv2 loaded it


def clipconv(clip_diy: Path, image_model, processor, class_embeddings: torch.Tensor):
    """clip-diy's ClipConv with the configs' settings (cfg_clip_pascal.yaml:14-23), built without
    `_set_model` (no hub download): the model, processor and class embeddings are given."""
    sys.path.insert(0, str(clip_diy))
    from src.clip_conv import ClipConv

    cfg = types.SimpleNamespace(patch_sizes=[256, 128, 64], strides=[2], interpolate_logits=True,
                                img_size=[256, 256], align_corners=False, patch_w1=1.0, patch_w2=1.0, patch_w3=1.0)
    ClipConv._set_model = lambda self, config: None
    m = ClipConv(cfg, ["c"] * class_embeddings.shape[0])
    m.image_model, m.image_processor = image_model, processor
    m.register_buffer("class_embeddings", class_embeddings)
    return m


def fuse(out: torch.Tensor, saliency_map: torch.Tensor):
    """eval_clipconv.py:49-64, verbatim but for the names."""
    num_classes = out.shape[1]
    logits_mask = torch.cat([1 - saliency_map, saliency_map.repeat(1, num_classes - 1, 1, 1)], dim=1)
    fused = out * logits_mask
    out_ = fused.softmax(dim=1)
    return fused, out_, out_.argmax(dim=1)


class FixedEmbeddings:
    """Stand-in processor + image model: the i-th call with n crops returns `table[n]`."""

    def __init__(self, table: dict[int, torch.Tensor]):
        self.table, self.device = table, torch.device("cpu")

    def __call__(self, patches=None, return_tensors=None, n=None):
        if patches is not None:  # the processor
            return types.SimpleNamespace(to=lambda dev: {"n": len(patches)})
        return types.SimpleNamespace(image_embeds=self.table[n])


def hf_vision(clip_small: dict[str, torch.Tensor]):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    v = {k[7:]: t for k, t in clip_small.items() if k.startswith("visual.")}
    width, n_layers = v["conv1.weight"].shape[0], len({k.split(".")[2] for k in v if k.startswith("transformer.")})
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=v["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           projection_dim=v["proj"].shape[1], num_hidden_layers=n_layers, num_attention_heads=2,
                           image_size=224, patch_size=v["conv1.weight"].shape[-1], hidden_act="quick_gelu",
                           layer_norm_eps=1e-5)
    m = CLIPVisionModelWithProjection(cfg).eval()
    s = {"vision_model.embeddings.class_embedding": v["class_embedding"],
         "vision_model.embeddings.patch_embedding.weight": v["conv1.weight"],
         "vision_model.embeddings.position_embedding.weight": v["positional_embedding"],
         "vision_model.pre_layrnorm.weight": v["ln_pre.weight"], "vision_model.pre_layrnorm.bias": v["ln_pre.bias"],
         "vision_model.post_layernorm.weight": v["ln_post.weight"], "vision_model.post_layernorm.bias": v["ln_post.bias"],
         "visual_projection.weight": v["proj"].T.contiguous()}
    for i in range(n_layers):
        a, b = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for j, n in enumerate("qkv"):
                s[f"{b}self_attn.{n}_proj.{kind}"] = v[f"{a}attn.in_proj_{kind}"].chunk(3)[j]
            s[f"{b}self_attn.out_proj.{kind}"] = v[f"{a}attn.out_proj.{kind}"]
            s[f"{b}layer_norm1.{kind}"] = v[f"{a}ln_1.{kind}"]
            s[f"{b}layer_norm2.{kind}"] = v[f"{a}ln_2.{kind}"]
            s[f"{b}mlp.fc1.{kind}"] = v[f"{a}mlp.c_fc.{kind}"]
            s[f"{b}mlp.fc2.{kind}"] = v[f"{a}mlp.c_proj.{kind}"]
    missing, unexpected = m.load_state_dict(s, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return m


def found_model(found_root: Path, dino_root: Path, full: bool, seed: int):
    """FOUND's FoundModel (configs/found_DUTS-TR.yaml: vit_small, patch 8, dino, keys) with the
    DINO checkpoint download replaced by seeded weights (and, unless `full`, a small tower)."""
    utils = types.ModuleType("utils")
    utils.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules["utils"] = utils
    vits = load_module("dino.vision_transformer", dino_root / "vision_transformer.py")
    pkg = types.ModuleType("dino")
    pkg.vision_transformer = vits
    sys.modules["dino"] = pkg
    if not full:
        from functools import partial

        def small(patch_size=16, **kw):
            return vits.VisionTransformer(img_size=[32], patch_size=patch_size, embed_dim=64, depth=2, num_heads=1,
                                          mlp_ratio=2, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **kw)
        vits.vit_small = small
    ref = vits.vit_small(patch_size=8, num_classes=0)
    perturb_(ref, seed)
    torch.hub.load_state_dict_from_url = lambda url, **kw: ref.state_dict()
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(found_root))
    from model import FoundModel

    m = FoundModel(vit_model="dino", vit_arch="vit_small", vit_patch_size=8, enc_type_feats="k",
                   bkg_type_feats="k", bkg_th=0.3)
    m.decoder = torch.nn.Conv2d(m.vit_encoder.embed_dim, 1, (1, 1))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        m.decoder.weight.copy_(2.0 * torch.randn(m.decoder.weight.shape, generator=g) / m.decoder.weight.shape[1] ** 0.5)
        m.decoder.bias.copy_(0.1 * torch.randn(1, generator=g))
    return m.eval(), {"dino." + k: v for k, v in ref.state_dict().items()} | {
        "decoder." + k: v.detach().clone() for k, v in m.decoder.state_dict().items()}


def found_saliency_ref(model, img_u8: np.ndarray) -> torch.Tensor:
    """clip-diy thirdparty/extract_saliency.py:259-277 (--drop-probs), on one HWC uint8 image."""
    import torch.nn.functional as F
    from PIL import Image
    from torch import nn
    from torchvision import transforms as T

    NORMALIZE = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    img = Image.fromarray(img_u8).convert("RGB")
    t = T.Compose([T.ToTensor(), NORMALIZE])
    img_t = t(img)[None, :, :, :]
    with torch.no_grad():
        preds, _, _shape_f, _att = model.forward_step(img_t, for_eval=True)
    sigmoid = nn.Sigmoid()
    h, w = img_t.shape[-2:]
    preds_up = F.interpolate(preds, scale_factor=model.vit_patch_size, mode="bilinear", align_corners=False)[..., :h, :w]
    return sigmoid(preds_up.detach()).squeeze(0).float()[0], preds


def blocks_image(h: int, w: int, seed: int) -> np.ndarray:
    """Flat random-colour 16 x 16 blocks plus noise: structure for the crops to disagree on."""
    rs = np.random.RandomState(seed)
    base = rs.randint(0, 256, size=((h + 15) // 16, (w + 15) // 16, 3))
    img = np.kron(base, np.ones((16, 16, 1)))[:h, :w] + rs.randint(-20, 21, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def cv2_golden(folder: Path) -> None:
    """`cv2.resize(image, (W, H), interpolation=cv2.INTER_LINEAR)` of uint8 images, what
    albumentations' `A.Resize(H, W, interpolation=1)` runs (clip-diy load_dataset.py:26)."""
    sys.path.append(str(folder))
    import cv2

    out = {}
    for i, ((h, w), (H, W)) in enumerate((((150, 200), (64, 64)), ((37, 41), (64, 48)), ((120, 90), (50, 70)),
                                          ((30, 64), (97, 33)))):
        im = blocks_image(h, w, 100 + i)
        out[f"case{i}.image"] = torch.from_numpy(im)
        out[f"case{i}.resized"] = torch.from_numpy(cv2.resize(im, (W, H), interpolation=cv2.INTER_LINEAR))
    return out


def offsize_case(m, fm, text) -> dict[str, torch.Tensor]:
    """End to end on a 181 x 243 image, as the dataset does it: the uint8 image and FOUND's
    map at its own size, both through cv2's INTER_LINEAR to 256 x 256 (pascal_voc.py:166-176),
    ClipConv, fusion, the label map cv2 INTER_NEAREST back to the image (semseg/evaluate.py:55-56)."""
    import cv2

    h, w = 181, 243
    im = blocks_image(h, w, 5 + h)
    sal, _ = found_saliency_ref(fm, im)
    sal256 = torch.from_numpy(cv2.resize(sal.numpy(), (256, 256), interpolation=cv2.INTER_LINEAR))[None, None]
    img = torch.from_numpy(cv2.resize(im, (256, 256), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)[None]
    with torch.no_grad():
        scores = m.forward(img.contiguous())
    fused, _, labels = fuse(scores, sal256)
    lab = cv2.resize(labels[0].numpy().astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    print("offsize labels", np.bincount(lab.ravel(), minlength=text.shape[0]).tolist())
    return {"e2e181.image": torch.from_numpy(im), "e2e181.fused": fused[0, :, ::4, ::4].contiguous(),
            "e2e181.labels": torch.from_numpy(lab)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clipdiy", type=Path, required=True)
    ap.add_argument("--found", type=Path, required=True)
    ap.add_argument("--dino", type=Path, required=True)
    ap.add_argument("--full", action="store_true", help="also check the real ViT-S/8 size in memory")
    ap.add_argument("--out", type=Path, default=HERE / "clipdiy_small.safetensors")
    ap.add_argument("--cv2", type=Path, metavar="DIR",
                    help="a folder with opencv-python (pip install --target DIR opencv-python-headless): write "
                         "clipdiy_cv2_resize.safetensors, cv2 INTER_LINEAR on uint8 images (albumentations' Resize)")
    args = ap.parse_args()
    cv2_out = cv2_golden(args.cv2) if args.cv2 else None
    # transformers first: it probes for the real torchvision, which the stand-in would confuse
    from transformers import (  # noqa: F401
        CLIPImageProcessor,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPTextModelWithProjection,
        CLIPTokenizerFast,
        CLIPVisionModelWithProjection,
    )

    stub_modules()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(20261205)
    out: dict[str, torch.Tensor] = {}

    # ---- grid: fixed crop embeddings ----
    q, c = 5, 64
    text = torch.nn.functional.normalize(torch.randn(q, c, generator=g), dim=-1)
    table = {n: torch.randn(n, c, generator=g) * (1 + torch.rand(n, 1, generator=g)) for n in (1, 9, 49)}
    fixed = FixedEmbeddings(table)
    m = clipconv(args.clipdiy, lambda **kw: fixed(n=kw["n"]), fixed, text)
    m.image_model.device = torch.device("cpu")
    img = torch.from_numpy(blocks_image(256, 256, 2 + 256)).permute(2, 0, 1)[None]  # = found.256.image
    sal64 = torch.rand(64, 64, generator=g)  # stored small; the map is its 4x4 blocks
    sal = sal64.repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]
    with torch.no_grad():
        scores = m.forward(img)
    fused, _, labels = fuse(scores, sal)
    out |= {"grid.text": text, "grid.saliency64": sal64,
            "grid.scores": scores[0, :, ::4, ::4].contiguous(), "grid.fused": fused[0, :, ::4, ::4].contiguous(),
            "grid.labels": labels[0].to(torch.uint8)}
    print("grid labels", torch.bincount(labels.flatten(), minlength=q).tolist())
    out |= {f"grid.emb{n}": t for n, t in table.items()}

    # ---- found ----
    fm, fw = found_model(args.found, args.dino, False, seed=7)
    out |= {"found.w." + k: v for k, v in fw.items()}
    for name, (h, w) in {"256": (256, 256), "60x90": (60, 90)}.items():
        im = blocks_image(h, w, 2 + h)
        s, logits = found_saliency_ref(fm, im)
        out |= {f"found.{name}.image": torch.from_numpy(im), f"found.{name}.saliency": s[::2, ::2].contiguous(),
                f"found.{name}.logits": logits[0, 0]}
        print("found", name, "saliency range", s.min().item(), s.max().item())
        if name == "256":
            sal_e2e = s

    # ---- e2e: HF CLIP vision + PIL processor, FOUND saliency ----
    proc = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                                 image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    clip_small = load_file(str(HERE / "clip_small.safetensors"))
    hf = hf_vision(clip_small)
    im = out["found.256.image"]
    img = im.permute(2, 0, 1)[None].contiguous()
    # queries that tell crops apart: five 128-px crops' embeddings (this model), centred, orthogonal to their mean, unit
    crops = [Image.fromarray(im[y:y + 128, x:x + 128].numpy()) for y, x in ((0, 0), (64, 64), (128, 128), (0, 128), (128, 0))]
    with torch.no_grad():
        e = hf(**proc(crops, return_tensors="pt")).image_embeds
    u = torch.nn.functional.normalize(e.mean(0), dim=0)
    d = e - e.mean(0)
    text = torch.nn.functional.normalize(d - (d @ u)[:, None] * u, dim=-1)  # orthogonal to the mean embedding
    m = clipconv(args.clipdiy, hf, proc, text)
    with torch.no_grad():
        scores = m.forward(img)
    fused, _, labels = fuse(scores, sal_e2e[None, None])
    out |= {"e2e.text": text, "e2e.scores": scores[0, :, ::4, ::4].contiguous(),
            "e2e.fused": fused[0, :, ::4, ::4].contiguous(), "e2e.labels": labels[0].to(torch.uint8)}
    print("e2e labels", torch.bincount(labels.flatten(), minlength=q).tolist())
    save_file({k: v.contiguous() for k, v in out.items()}, str(args.out),
              metadata={"clip-diy": "f88932d9e001597f407ada7b02bad99a80ccbe92",
                        "FOUND": "1ad22bacf1a6854faff1b5d4be300d54cad6f277",
                        "dino": "7c446df5b9f45747937fb0d72314eb9f7b66930a"})
    print("wrote", args.out, sum(v.numel() * v.element_size() for v in out.values()), "bytes")
    if cv2_out is not None:
        import cv2

        cv2_out |= offsize_case(m, fm, text)
        save_file(cv2_out, str(HERE / "clipdiy_cv2_resize.safetensors"), metadata={"opencv-python": cv2.__version__})
        print("wrote", HERE / "clipdiy_cv2_resize.safetensors", "opencv", cv2.__version__)

    if args.full:
        from ovss.backbones.dino import create_dino
        from ovss.backbones.found import found_saliency

        for k in [k for k in sys.modules if k in ("model", "bkg_seg", "misc", "dino", "dino.vision_transformer")]:
            del sys.modules[k]
        fm, fw = found_model(args.found, args.dino, True, seed=11)
        dino = create_dino(weights={k[5:]: v for k, v in fw.items() if k.startswith("dino.")}).model
        for h, w in ((224, 224), (300, 452)):
            im = blocks_image(h, w, h)
            ref, _ = found_saliency_ref(fm, im)
            x = (torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255.0
                 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            ours = found_saliency(dino, fm.decoder, x)[0, 0]
            print(f"full ViT-S/8 {h}x{w}: max |ovss - FOUND| saliency = {(ours - ref).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
