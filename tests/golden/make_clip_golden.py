"""Make the CLIP parity goldens from the reference implementations (run by hand, not by tests).

    python tests/golden/make_clip_golden.py --openai /path/to/openai/CLIP \
        --sclip /path/to/wangf3014/SCLIP --clearclip /path/to/mc-lan/ClearCLIP [--full]

The reference repositories are fetched checkouts outside this repository; nothing of theirs is
committed. The script builds each reference model class with the same random weights (every
parameter perturbed, so LayerNorm and biases are not at their trivial init), runs it on fixed
random inputs, and writes:
    clip_small.safetensors     the weights, OpenAI key layout (what the tests load)
    clip_small_io.safetensors  inputs and reference outputs
With --full it instead checks ViT-B/16-sized weights in memory against ovss and prints the max
differences (nothing written): the figures quoted in the golden README.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).parent


def load_module(name: str, path: Path, package: str | None = None):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    if package:
        mod.__package__ = package
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def stub_torchvision() -> None:
    """The reference model files import torchvision for things the model never calls."""
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    misc.FrozenBatchNorm2d = torch.nn.BatchNorm2d
    tv.ops, ops.misc, tv.transforms, tr.functional = ops, misc, tr, fn
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.misc": misc,
                        "torchvision.transforms": tr, "torchvision.transforms.functional": fn})


def load_clearclip_transformer(root: Path):
    """ClearCLIP's vendored open_clip transformer.py, loaded as a bare package."""
    pkg = types.ModuleType("cc_open_clip")
    pkg.__path__ = [str(root / "open_clip")]
    sys.modules["cc_open_clip"] = pkg
    load_module("cc_open_clip.utils", root / "open_clip/utils.py", "cc_open_clip")
    load_module("cc_open_clip.pos_embed", root / "open_clip/pos_embed.py", "cc_open_clip")
    return load_module("cc_open_clip.transformer", root / "open_clip/transformer.py", "cc_open_clip")


def perturb_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1 or name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:
                p.add_(0.02 * noise)


def to_ovss(sd: dict) -> dict:
    return {
        (k if k.startswith("visual.") or k == "logit_scale" else "text." + k): v
        for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--openai", type=Path, required=True)
    ap.add_argument("--sclip", type=Path, required=True)
    ap.add_argument("--clearclip", type=Path, required=True)
    ap.add_argument("--full", action="store_true", help="ViT-B/16-sized check, prints only")
    args = ap.parse_args()

    stub_torchvision()
    ref_openai = load_module("ref_openai_model", args.openai / "clip/model.py")
    ref_sclip = load_module("ref_sclip_model", args.sclip / "clip/model.py")
    cc = load_clearclip_transformer(args.clearclip)

    if args.full:  # ViT-B/16: embed 512, 224px, 12 layers, width 768, patch 16; text 512 wide, 8 heads
        dims = dict(embed=512, res=224, vl=12, vw=768, patch=16, vocab=49408, tw=512, th=8, tl=12)
    else:  # small: 1-2 heads of 64, 2 image blocks, still a 14x14 grid so resizing is exercised
        dims = dict(embed=64, res=224, vl=2, vw=128, patch=16, vocab=500, tw=64, th=1, tl=2)
    torch.manual_seed(0)
    ref = ref_openai.CLIP(dims["embed"], dims["res"], dims["vl"], dims["vw"], dims["patch"], 77,
                          dims["vocab"], dims["tw"], dims["th"], dims["tl"]).eval()
    perturb_(ref, 1)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}

    # SCLIP's modified ViT (adds the +0.1 scale-factor positional resize) on the same weights.
    vis = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    heads = dims["vw"] // 64
    sclip = ref_sclip.VisionTransformer(dims["res"], dims["patch"], dims["vw"], dims["vl"], heads, dims["embed"]).eval()
    sclip.load_state_dict(vis)
    clear = cc.VisionTransformer(dims["res"], dims["patch"], dims["vw"], dims["vl"], heads, 4.0,
                                 output_dim=dims["embed"], act_layer=ref_openai.QuickGELU,
                                 norm_layer=cc.LayerNorm).eval()
    clear.load_state_dict(vis)

    g = torch.Generator().manual_seed(2)
    io: dict[str, torch.Tensor] = {
        "image_224": torch.randn(1, 3, 224, 224, generator=g),
        "image_160x288": torch.randn(1, 3, 160, 288, generator=g),
    }
    # Token rows: start token 0... end-of-text = the largest id, as in CLIP; varied lengths.
    eot = dims["vocab"] - 1
    tokens = torch.zeros(4, 77, dtype=torch.long)
    for i, n in enumerate([3, 9, 20, 77]):
        tokens[i, 0] = eot - 1
        tokens[i, 1 : n - 1] = torch.randint(1, eot - 2, (n - 2,), generator=g)
        tokens[i, n - 1] = eot
    io["tokens"] = tokens
    with torch.no_grad():
        io["ref_image_embed_224"] = ref.encode_image(io["image_224"])
        io["ref_text_embed"] = ref.encode_text(tokens)
        for key in ("224", "160x288"):
            x = io[f"image_{key}"]
            io[f"ref_dense_clip_{key}"] = sclip(x, return_all=True, csa=False)  # all tokens, vanilla block
            io[f"ref_sclip_{key}"] = sclip(x, return_all=True, csa=True)
            io[f"ref_maskclip_{key}"] = clear(x, model_type="MaskCLIP", ignore_residual=False)
            io[f"ref_clearclip_{key}"] = clear(x, model_type="ClearCLIP", ignore_residual=True)

    if args.full:
        from ovss.backbones.clip import CLIP
        from ovss.backbones.configs import infer_clip_config
        from ovss.heads.attention import AttentionRule
        from ovss.heads.dense import Surgery, last_block

        state = to_ovss(sd)
        m = CLIP(infer_clip_config(state)).eval()
        m.load_state_dict(state)
        with torch.no_grad():
            print("image embed 224", (m.encode_image(io["image_224"]) - io["ref_image_embed_224"]).abs().max().item())
            print("text embed", (m.encode_text(tokens) - io["ref_text_embed"]).abs().max().item())
            rules = {"dense_clip": (("qk",), True, True), "maskclip": (("id",), True, True),
                     "sclip": (("qq", "kk"), True, True), "clearclip": (("qq",), False, False)}
            for key in ("224", "160x288"):
                t = m.visual.forward_tokens(io[f"image_{key}"])
                for name, (terms, res, ffn) in rules.items():
                    y = last_block(m.visual.blocks[-1], t.tokens, AttentionRule(terms), Surgery(res, ffn), t.grid)
                    out = m.visual.project(y)
                    ref_out = io[f"ref_{name}_{key}"]
                    if ref_out.shape[1] != out.shape[1]:
                        out = out[:, 1:]
                    print(f"{name} {key}", (out - ref_out).abs().max().item())
        return

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(HERE / "clip_small.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, str(HERE / "clip_small_io.safetensors"))
    print("wrote", HERE / "clip_small.safetensors", HERE / "clip_small_io.safetensors")


if __name__ == "__main__":
    main()
