"""Make the PAMR parity goldens from the reference implementations (run by hand, not by tests).

    python tests/golden/make_pamr_golden.py --sclip /path/to/wangf3014/SCLIP \
        --naclip /path/to/sinahmr/NACLIP

Each reference `pamr.py` is loaded from its checkout (nothing of theirs is committed), run on
seeded random inputs, and the two references' outputs are checked against each other (the max
difference is printed; the script stops if they differ by more than 1e-6). Writes
`pamr.safetensors` beside this script: inputs `<inputs>.guide`, `<inputs>.logits` (shared by
the cases that use them) and per case `<case>.out` (SCLIP's output); the metadata `cases` (JSON)
gives each case's steps, dilations, inputs name and the SCLIP-NACLIP difference. The `large`
inputs store the guide as a uint8 image plus the normalisation (`large.image`, `large.mean`,
`large.std`; guide = (image.float() - mean) / std in float32) and the output only at every 5th
row and column (`large.out` = out[..., ::5, ::5]) to keep the file small; its logits are at 1/8
of the guide size, so the reference's own bilinear (align_corners=True) resize inside PAMR is
exercised too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

try:  # optional: also print ovss's difference from the references
    from ovss.refine.pamr import PAMR
except ImportError:
    PAMR = None

HERE = Path(__file__).parent
# SCLIP / NACLIP's CLIP normalisation on the 0-255 scale (their SegDataPreProcessor)
MEAN = [122.771, 116.746, 104.094]
STD = [68.501, 66.632, 70.323]


def load_pamr(root: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, root / "pamr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.PAMR


def blocky_image(gen: torch.Generator, h: int, w: int) -> torch.Tensor:
    """A uint8 (1, 3, h, w) image of flat coloured blocks plus noise: edges for the affinity."""
    blocks = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=gen) * 255
    img = F.interpolate(blocks, scale_factor=16, mode="nearest")[..., :h, :w]
    img = img + 12 * torch.randn(1, 3, h, w, generator=gen)
    return img.round().clamp(0, 255).to(torch.uint8)


def make_inputs() -> dict[str, dict]:
    gen = torch.Generator().manual_seed(20240611)
    image = blocky_image(gen, 96, 128)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return {
        "small": {"guide": torch.randn(1, 3, 37, 53, generator=gen),
                  "logits": 0.2 + 0.05 * torch.randn(1, 5, 37, 53, generator=gen)},
        # smaller than the dilation: the reference's replicate padding clamps to the border
        "tiny": {"guide": torch.randn(1, 3, 5, 7, generator=gen),
                 "logits": 0.2 + 0.05 * torch.randn(1, 4, 5, 7, generator=gen)},
        "large": {"image": image, "mean": mean, "std": std, "guide": (image.float() - mean) / std,
                  "logits": 0.2 + 0.05 * torch.randn(1, 21, 12, 16, generator=gen)},
    }


# case -> (steps, dilations, inputs)
CASES = {
    "small_10_8x16": (10, [8, 16], "small"),
    "small_3_1x2": (3, [1, 2], "small"),
    "tiny_10_8x16": (10, [8, 16], "tiny"),
    "tiny_3_1x2": (3, [1, 2], "tiny"),
    "large_10_8x16": (10, [8, 16], "large"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sclip", type=Path, required=True, help="wangf3014/SCLIP checkout")
    ap.add_argument("--naclip", type=Path, required=True, help="sinahmr/NACLIP checkout")
    ap.add_argument("--out", type=Path, default=HERE / "pamr.safetensors")
    args = ap.parse_args()
    refs = {"sclip": load_pamr(args.sclip, "sclip_pamr"), "naclip": load_pamr(args.naclip, "naclip_pamr")}

    inputs = make_inputs()
    tensors, meta = {}, {}
    for name, inp in inputs.items():
        keys = ("image", "mean", "std", "logits") if "image" in inp else ("guide", "logits")
        tensors.update({f"{name}.{k}": inp[k] for k in keys})
    for case, (steps, dilations, inp_name) in CASES.items():
        inp = inputs[inp_name]
        outs = {}
        for ref, cls in refs.items():
            with torch.no_grad():
                outs[ref] = cls(steps, dilations=dilations)(inp["guide"], inp["logits"].clone())
        diff = (outs["sclip"] - outs["naclip"]).abs().max().item()
        ours = ""
        if PAMR is not None:  # the figures quoted in the golden README
            out = PAMR(steps, tuple(dilations))(inp["logits"], inp["guide"])
            ours = ", max |ovss - SCLIP| = {:.3g}, max |ovss - NACLIP| = {:.3g}".format(
                *((out - outs[r]).abs().max().item() for r in ("sclip", "naclip")))
        print(f"{case}: out {tuple(outs['sclip'].shape)}, max |SCLIP - NACLIP| = {diff:.3g}{ours}")
        if diff > 1e-6:
            raise SystemExit(f"{case}: the two references disagree by {diff}")
        meta[case] = {"steps": steps, "dilations": dilations, "inputs": inp_name, "sclip_vs_naclip": diff}
        out = outs["sclip"]
        if inp_name == "large":
            out = out[..., ::5, ::5]
            meta[case]["out_stride"] = 5
        tensors[f"{case}.out"] = out
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(args.out), metadata={"cases": json.dumps(meta)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
