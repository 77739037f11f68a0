"""Where the published DINO and DINOv2 weights live, and their architectures (a leaf module: the
hub code and the DINO tower both read it)."""

from __future__ import annotations

from dataclasses import dataclass

from .configs import VisionCfg
from .pretrained import norm_alias

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DINO = dict(act="gelu", ln_eps=1e-6, output_dim=None, ln_pre=False, patch_bias=True)


def _v1(width: int, heads: int, patch: int) -> VisionCfg:
    return VisionCfg(width=width, layers=12, heads=heads, patch_size=patch, image_size=224, **_DINO)


def _v2(width: int, layers: int, heads: int, registers: int = 0) -> VisionCfg:
    return VisionCfg(width=width, layers=layers, heads=heads, patch_size=14, image_size=518,
                     layer_scale=True, registers=registers, **_DINO)


DINO_ARCHS: dict[str, VisionCfg] = {
    "dino-vits16": _v1(384, 6, 16),
    "dino-vits8": _v1(384, 6, 8),
    "dino-vitb16": _v1(768, 12, 16),
    "dino-vitb8": _v1(768, 12, 8),
    "dinov2-vits14": _v2(384, 12, 6),
    "dinov2-vitb14": _v2(768, 12, 12),
    "dinov2-vitl14": _v2(1024, 24, 16),
    "dinov2-vits14-reg": _v2(384, 12, 6, 4),
    "dinov2-vitb14-reg": _v2(768, 12, 12, 4),
    "dinov2-vitl14-reg": _v2(1024, 24, 16, 4),
}


@dataclass(frozen=True)
class DinoPretrained:
    """Where one published DINO / DINOv2 model lives.

    hf_hub_id: the transformers form (facebook/dino-*, facebook/dinov2-*), fetched by default.
    timm_hub_id: the timm form (timm/<model>.<tag>), `create_dino("timm:<name>")`.
    url: the official checkpoint (torch hub), for users who download it themselves.
    """

    name: str
    hf_hub_id: str
    timm_hub_id: str
    url: str
    aliases: tuple[str, ...] = ()
    weights: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")

    @property
    def cfg(self) -> VisionCfg:
        return DINO_ARCHS[self.name]


_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"

# Hub ids: facebook/dino-* (transformers ViTModel, config.json + model.safetensors +
# pytorch_model.bin, seen on the hub pages and their duplicates), facebook/dinov2-{small,base,large}
# and facebook/dinov2-with-registers-* (transformers docs, model_doc/dinov2_with_registers); timm
# names from timm's model registry (vit_*_patch{8,16}_224.dino, vit_*_patch14_dinov2.lvd142m,
# vit_*_patch14_reg4_dinov2.lvd142m); URLs from dino/hubconf.py and dinov2/hub/backbones.py.
DINO_PRETRAINED: dict[str, DinoPretrained] = {
    p.name: p
    for p in (
        DinoPretrained("dino-vits16", "facebook/dino-vits16", "timm/vit_small_patch16_224.dino",
                       f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth", ("dino_vits16",)),
        DinoPretrained("dino-vits8", "facebook/dino-vits8", "timm/vit_small_patch8_224.dino",
                       f"{_DINO_URL}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth", ("dino_vits8",)),
        DinoPretrained("dino-vitb16", "facebook/dino-vitb16", "timm/vit_base_patch16_224.dino",
                       f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth", ("dino_vitb16",)),
        DinoPretrained("dino-vitb8", "facebook/dino-vitb8", "timm/vit_base_patch8_224.dino",
                       f"{_DINO_URL}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth", ("dino_vitb8",)),
        DinoPretrained("dinov2-vits14", "facebook/dinov2-small", "timm/vit_small_patch14_dinov2.lvd142m",
                       f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_pretrain.pth", ("dinov2_vits14",)),
        DinoPretrained("dinov2-vitb14", "facebook/dinov2-base", "timm/vit_base_patch14_dinov2.lvd142m",
                       f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_pretrain.pth", ("dinov2_vitb14",)),
        DinoPretrained("dinov2-vitl14", "facebook/dinov2-large", "timm/vit_large_patch14_dinov2.lvd142m",
                       f"{_DINOV2_URL}/dinov2_vitl14/dinov2_vitl14_pretrain.pth", ("dinov2_vitl14",)),
        DinoPretrained("dinov2-vits14-reg", "facebook/dinov2-with-registers-small",
                       "timm/vit_small_patch14_reg4_dinov2.lvd142m",
                       f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth", ("dinov2_vits14_reg",)),
        DinoPretrained("dinov2-vitb14-reg", "facebook/dinov2-with-registers-base",
                       "timm/vit_base_patch14_reg4_dinov2.lvd142m",
                       f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth", ("dinov2_vitb14_reg",)),
        DinoPretrained("dinov2-vitl14-reg", "facebook/dinov2-with-registers-large",
                       "timm/vit_large_patch14_reg4_dinov2.lvd142m",
                       f"{_DINOV2_URL}/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth", ("dinov2_vitl14_reg",)),
    )
}


def resolve_dino_name(name: str) -> str | None:
    key = norm_alias(name)
    for p in DINO_PRETRAINED.values():
        if key in {norm_alias(a) for a in (p.name, p.hf_hub_id, p.timm_hub_id, *p.aliases)}:
            return p.name
    return None


def list_dino_backbones() -> list[str]:
    return sorted(DINO_PRETRAINED)
