"""Vision foundation models (DINO, DINOv2) that heads borrow affinities or keys from.

Loaded once per name on first use (`create_dino`: hub, cache or file), or put here by
`register_vfm` (tests, users with a model already in memory).
"""

from __future__ import annotations

import torch

# the proxy models, by name: loaded on first use (create_dino) or put here by `register_vfm`
_VFMS: dict[str, torch.nn.Module] = {}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet's 0-1 statistics, every DINO model's input
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_vfm(name: str, model: torch.nn.Module) -> None:
    """Use `model` (a DINO-layout `VisionTransformer`) whenever a recipe names proxy `name`."""
    _VFMS[name] = model.eval()


def get_vfm(name: str, device: torch.device | str) -> torch.nn.Module:
    if name not in _VFMS:
        from ..backbones.dino import create_dino

        _VFMS[name] = create_dino(name).model
    return _VFMS[name].to(device)


def to_dino_input(crops: torch.Tensor, mean, std, scale: float = 255.0, round_uint8: bool = False) -> torch.Tensor:
    """Normalised crops -> a DINO model's input: un-normalised with `mean`/`std` (on the `scale`
    of the image: 255 for the 0-255 statistics, 1 for 0-1 ones), optionally rounded back to the
    uint8 image they came from, to [0, 1], then normalised with ImageNet's statistics.

    The one conversion every head that feeds DINO uses (ProxyCLIP: 0-1 constants; LPOSS: the
    image's statistics, rounded; CASS "exact": the image's statistics); the arithmetic order is
    the references', so each matches its reference bit for bit."""
    dev, dt = crops.device, crops.dtype
    m = torch.tensor(mean, device=dev, dtype=dt).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev, dtype=dt).view(1, 3, 1, 1)
    im = torch.tensor(IMAGENET_MEAN, device=dev, dtype=dt).view(1, 3, 1, 1)
    ist = torch.tensor(IMAGENET_STD, device=dev, dtype=dt).view(1, 3, 1, 1)
    v = crops * s + m
    if round_uint8:
        v = v.round()
    if scale != 1.0:
        v = v / scale
    return (v - im) / ist
