"""`ovss build-bank`: make a FreeDA prototype bank offline from a folder of images with masks.

    ovss build-bank FOLDER --out BANK [--backbone clip-vit-l14] [--dino dinov2-vitl14]

FOLDER is the plain layout `ovss eval` reads (classes.txt, images/, masks/). Each (image, class
in its mask) becomes one entry: the DINO features of the image (resized to --dino-size square,
ImageNet-normalised, final norm, as FreeDA's test-time features) pooled in the class's mask, keyed
by the CLIP text embedding of the class name with FreeDA's templates (the embedding its test time
queries the bank with). Resumable: each image's entries are written as it finishes (BANK/parts/),
a re-run skips those; a progress bar shows the images.

The paper's bank comes from Stable-Diffusion images of COCO captions and the cross-attention
masks of their nouns; that generator is not released. Feed this command generated images with
their masks to follow the recipe, or any annotated photos.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_build_bank_parser", "cmd_build_bank", "dino_pooler"]


def dino_pooler(vfm: str, size: int, device: str = "cpu"):
    """A DINO model by name/file -> (HxWx3 uint8 -> (C, h, w) features), FreeDA's test-time input
    (`heads/freeda.py` `crop_scores`: bilinear to size x size, /255, ImageNet statistics)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..backbones.dino import dino_features
    from ..heads.vfm import IMAGENET_MEAN, IMAGENET_STD, get_vfm

    model = get_vfm(vfm, device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().to(device)
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False) / 255
        return dino_features(model, (x - mean) / std, kind="tokens")[0]

    return features


def cmd_build_bank(args: argparse.Namespace) -> int:
    import torch

    from ..core.segmenter import Segmenter
    from ..data.bank import build_bank

    seg = Segmenter("freeda", backbone=args.backbone, weights=args.weights, tokenizer=args.tokenizer,
                    device=args.device, overrides={"templates": args.templates})

    def text_keys(names: list[str]) -> torch.Tensor:
        return seg.queries([[n] for n in names])[1].cpu()

    out = build_bank(args.folder, args.out, text_keys, dino_pooler(args.dino, args.dino_size, str(seg.device)),
                     meta={"clip": args.backbone, "dino": args.dino, "dino_size": args.dino_size,
                           "templates": args.templates},
                     min_pixels=args.min_pixels, progress=not args.quiet)
    print(f"bank written to {out} (use it with Segmenter('freeda', bank=...) or OVSS_FREEDA_BANK={out})")
    return 0


def add_build_bank_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `ovss build-bank FOLDER --out BANK ...` to an argparse subparsers object."""
    p = subparsers.add_parser("build-bank", help="make a FreeDA prototype bank from a folder of images with masks "
                                                 "(resumable)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="classes.txt, images/, masks/ (the layout `ovss eval` reads)")
    p.add_argument("--out", required=True, help="the bank folder (re-running continues where it stopped)")
    p.add_argument("--backbone", default="clip-vit-l14", help="CLIP for the text keys (FreeDA: ViT-L/14 openai)")
    p.add_argument("--weights", help="the CLIP's weights file, if not the named backbone's")
    p.add_argument("--tokenizer", help="tokenizer vocabulary, if not next to the weights")
    p.add_argument("--dino", default="dinov2-vitl14", help="DINO model for the prototypes (name or file)")
    p.add_argument("--dino-size", type=int, default=518, help="DINO's square input (FreeDA: 518)")
    p.add_argument("--templates", default="freeda7", help="prompt template set of the keys (FreeDA's 7)")
    p.add_argument("--min-pixels", type=int, default=16, help="skip class regions smaller than this")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_bank)
    return p
