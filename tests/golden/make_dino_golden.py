"""Make the DINO / DINOv2 backbone goldens from the reference model code (run by hand).

    python tests/golden/make_dino_golden.py --dino /path/to/facebookresearch/dino \
        --dinov2 /path/to/facebookresearch/dinov2 [--full]

The reference checkouts stay outside this repository; nothing of theirs is committed. DINO's
`vision_transformer.py` is loaded by path with a stand-in `utils` module (it only takes
`trunc_normal_` from it); DINOv2's `dinov2.models.vision_transformer.DinoVisionTransformer` is
imported from the checkout (no xFormers: its plain SDPA attention runs).

Small models (2 blocks, FFN ratio 1, heads of width 64: width 128 / 2 heads, except `dinov2`
width 64 / 1 head; float32), every parameter perturbed with seeded
noise (norm weights 1 + 0.1 N, biases and 1-d tensors 0.02 N, LayerScale 0.5 + 0.1 N, matrices
+ 0.02 N), each run on a seeded image whose patch grid is not the training grid (so the
positional embedding is resized):

    dino      vit_small-like, patch 8, img_size 32 (4x4 grid), input 48x40 (6x5)
    dinov2    patch 14, img_size 56 (4x4), LayerScale, input 70x84 (5x6)
    dinov2r   the same with 4 register tokens

Stored (tests/golden/dino_small.safetensors): `<run>.w.<key>` the weights in the official key
layout, `<run>.image`, `<run>.last` = get_intermediate_layers(x, 1)[0] (final norm applied; DINO:
all tokens, DINOv2: patch tokens only, as each reference returns them), `<run>.prenorm` = the tokens after the last block before the norm, `<run>.qkv` = the
last block's attn.qkv output (B, N, 3D), as ProxyCLIP hooks it. `--full` runs ViT-B-sized random
weights (dino_vitb8 at 224 and 448x336, dinov2_vitb14_reg at 518 and 336x448) in memory through
both and prints the max differences.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module


def perturb_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ("norm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("gamma"):
                p.copy_(0.5 + 0.1 * noise)
            elif p.dim() == 1 or name.endswith("bias"):
                p.copy_(0.02 * noise)
            elif name in ("cls_token", "pos_embed", "register_tokens"):
                p.copy_(0.1 * noise)
            else:
                p.add_(0.02 * noise)


def load_refs(dino_root: Path, dinov2_root: Path):
    utils = types.ModuleType("utils")
    utils.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules["utils"] = utils
    dino = load_module("ref_dino_vit", dino_root / "vision_transformer.py")
    sys.path.insert(0, str(dinov2_root))
    from dinov2.models.vision_transformer import DinoVisionTransformer

    return dino, DinoVisionTransformer


def run_ref(model, image: torch.Tensor) -> dict[str, torch.Tensor]:
    feat = {}
    blk = model.blocks[-1]
    h = blk.attn.qkv.register_forward_hook(lambda m, i, o: feat.__setitem__("qkv", o))
    with torch.no_grad():
        last = model.get_intermediate_layers(image, 1)[0]
        if hasattr(model, "forward_features"):
            prenorm = model.forward_features(image)["x_prenorm"]
        else:
            x = model.prepare_tokens(image)
            for b in model.blocks:
                x = b(x)
            prenorm = x
    h.remove()
    return {"last": last, "prenorm": prenorm, "qkv": feat["qkv"]}


def build(dino, Dv2, kind: str, full: bool):
    if kind == "dino":
        if full:
            return dino.VisionTransformer(patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                          qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
        return dino.VisionTransformer(img_size=[32], patch_size=8, embed_dim=128, depth=2, num_heads=2,
                                      mlp_ratio=1, qkv_bias=True,
                                      norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    reg = 4 if kind == "dinov2r" else 0
    if full:
        return Dv2(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                   init_values=1.0, block_chunks=0, num_register_tokens=reg)
    width = 128 if reg else 64  # 2 heads / 1 head of 64
    return Dv2(img_size=56, patch_size=14, embed_dim=width, depth=2, num_heads=width // 64, mlp_ratio=1,
               init_values=1.0, block_chunks=0, num_register_tokens=reg)


def ours(state: dict, image: torch.Tensor) -> dict[str, torch.Tensor]:
    from ovss.backbones.dino import create_dino
    from ovss.backbones.vit import Tap

    m = create_dino(weights=state).model
    with torch.no_grad():
        out = m.forward_tokens(image, upto=len(m.blocks), taps={"x": Tap("qkv", (-1,))})
        q, k, v = out.taps["x"][len(m.blocks) - 1]
        b, nh, n, dh = q.shape
        qkv = torch.cat([t.transpose(1, 2).reshape(b, n, nh * dh) for t in (q, k, v)], -1)
    return {"last": m.ln_post(out.tokens), "prenorm": out.tokens, "qkv": qkv}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dino", type=Path, required=True)
    ap.add_argument("--dinov2", type=Path, required=True)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dino, Dv2 = load_refs(args.dino, args.dinov2)
    g = torch.Generator().manual_seed(20250607)
    sizes = {"dino": [(48, 40)], "dinov2": [(70, 84)], "dinov2r": [(70, 84)]}
    if args.full:
        sizes = {"dino": [(224, 224), (448, 336)], "dinov2": [(518, 518)], "dinov2r": [(518, 518), (336, 448)]}
    out = {}
    for i, (kind, shapes) in enumerate(sizes.items()):
        model = build(dino, Dv2, kind, args.full).eval()
        perturb_(model, 100 + i)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        for hw in shapes:
            image = torch.randn((1, 3, *hw), generator=g)
            ref = run_ref(model, image)
            got = ours(state, image)
            got["last"] = got["last"][:, -ref["last"].shape[1]:]  # DINOv2's drops class + registers
            diffs = {k: (ref[k] - got[k]).abs().max().item() for k in ref}
            print(kind, hw, diffs)
            if not args.full:
                out[f"{kind}.image"] = image
                out.update({f"{kind}.{k}": v.contiguous() for k, v in ref.items()})
                out.update({f"{kind}.w.{k}": v for k, v in state.items()})
    if not args.full:
        save_file(out, str(HERE / "dino_small.safetensors"))
        print("wrote", HERE / "dino_small.safetensors")


if __name__ == "__main__":
    main()
