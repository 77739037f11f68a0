"""Architecture configs for CLIP towers, as plain frozen dataclasses.

A config describes shapes and numerics only; where the weights live is `pretrained.py`'s job.
Configs can always be inferred from a state dict (`infer_clip_config`), so a user's file never
needs a config to load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class VisionCfg:
    width: int = 768  # token width D
    layers: int = 12  # number of residual blocks
    heads: int = 12  # attention heads (d_h = width / heads)
    patch_size: int = 16  # square patches, stride = patch size
    image_size: int = 224  # training resolution; sets the positional-embedding grid
    output_dim: int | None = 512  # projection width; None = no projection (DINO-style towers)
    act: str = "quick_gelu"  # "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP laion, exact erf GELU)
    ln_eps: float = 1e-5  # LayerNorm epsilon (OpenAI 1e-5; MaskCLIP's mmseg port uses 1e-6)
    mlp_ratio: float = 4.0  # hidden width of the FFN relative to width
    # DINO / DINOv2 towers (defaults are CLIP's): no LayerNorm after the patch embedding, a biased
    # patch conv, per-block LayerScale (DINOv2), register tokens after the class token (DINOv2
    # with registers). Their final `norm` is `ln_post` with no projection (output_dim None).
    ln_pre: bool = True
    patch_bias: bool = False
    layer_scale: bool = False
    registers: int = 0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextCfg:
    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77  # positions; prompts longer than this are truncated with a warning
    vocab_size: int = 49408
    output_dim: int = 512
    act: str = "quick_gelu"
    ln_eps: float = 1e-5
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ClipCfg:
    vision: VisionCfg
    text: TextCfg

    @property
    def embed_dim(self) -> int:
        return self.text.output_dim

    def with_act(self, act: str) -> "ClipCfg":
        return ClipCfg(replace(self.vision, act=act), replace(self.text, act=act))


# Image-tower widths whose published models do not use 64-wide heads (OpenCLIP ViT-H/14, bigG/14).
_VISION_HEADS_BY_WIDTH = {1280: 16, 1664: 16}


def default_heads(width: int, tower: str = "text") -> int:
    """Head count for a tower of this width, as the published CLIP/OpenCLIP models set it."""
    if tower == "vision" and width in _VISION_HEADS_BY_WIDTH:
        return _VISION_HEADS_BY_WIDTH[width]
    return max(width // 64, 1)


def _count_blocks(state: dict, prefix: str) -> int:
    ids = {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}
    return len(ids)


def infer_clip_config(state: dict, act: str = "quick_gelu", ln_eps: float = 1e-5) -> ClipCfg:
    """Read a CLIP architecture off a canonical (ovss / OpenAI-layout) state dict.

    Head counts follow the published models (`default_heads`: d_h = 64 except ViT-H/bigG); tiny
    models with other head widths pass an explicit config instead.
    """
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    n_pos = state["visual.positional_embedding"].shape[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid + 1 != n_pos:
        raise ValueError(f"visual.positional_embedding has {n_pos} rows, not a square grid + 1")
    proj = state.get("visual.proj")
    vision = VisionCfg(
        width=width,
        layers=_count_blocks(state, "visual.transformer.resblocks."),
        heads=default_heads(width, "vision"),
        patch_size=patch,
        image_size=grid * patch,
        output_dim=None if proj is None else proj.shape[1],
        act=act,
        ln_eps=ln_eps,
        mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
    )
    t_width = state["text.ln_final.weight"].shape[0]
    text = TextCfg(
        width=t_width,
        layers=_count_blocks(state, "text.transformer.resblocks."),
        heads=default_heads(t_width),
        context_length=state["text.positional_embedding"].shape[0],
        vocab_size=state["text.token_embedding.weight"].shape[0],
        output_dim=state["text.text_projection"].shape[1],
        act=act,
        ln_eps=ln_eps,
        mlp_ratio=state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / t_width,
    )
    return ClipCfg(vision, text)


# Named architectures (OpenAI's and OpenCLIP's published shapes).
ARCHS: dict[str, ClipCfg] = {
    "ViT-B-32": ClipCfg(VisionCfg(768, 12, 12, 32, 224, 512), TextCfg(512, 12, 8, output_dim=512)),
    "ViT-B-16": ClipCfg(VisionCfg(768, 12, 12, 16, 224, 512), TextCfg(512, 12, 8, output_dim=512)),
    "ViT-L-14": ClipCfg(VisionCfg(1024, 24, 16, 14, 224, 768), TextCfg(768, 12, 12, output_dim=768)),
    "ViT-L-14-336": ClipCfg(VisionCfg(1024, 24, 16, 14, 336, 768), TextCfg(768, 12, 12, output_dim=768)),
    "ViT-H-14": ClipCfg(
        VisionCfg(1280, 32, 16, 14, 224, 1024, act="gelu"),
        TextCfg(1024, 24, 16, output_dim=1024, act="gelu"),
    ),
}
