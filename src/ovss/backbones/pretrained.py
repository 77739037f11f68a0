"""Registry of published CLIP weights: where each lives on the Hugging Face Hub and what it needs.

An entry names an architecture (a key of `configs.ARCHS`), the hub repo, the weight files in
order of preference (safetensors first; a `.bin` only where the safetensors file is absent), the
config and tokenizer files that go with them, and the activation the weights were trained with.

How the repo ids and file names were confirmed (search of stored hub pages and source, 2025):
- OpenAI weights in transformers layout: `openai/clip-vit-base-patch16`, `-base-patch32`,
  `-large-patch14`, `-large-patch14-336` (ids as used in transformers' CLIP docs and in timm's model
  cards, e.g. "see https://huggingface.co/openai/clip-vit-large-patch14-336 for use in Hugging Face
  Transformers"). Their file lists (seen on duplicates of these repos): config.json, vocab.json,
  merges.txt, tokenizer.json, preprocessor_config.json, pytorch_model.bin, and model.safetensors on
  the large-patch14 repo. Whether every OpenAI repo has model.safetensors on `main` was NOT
  confirmed (duplicates of base-patch32 show only pytorch_model.bin, and an open SFconvertbot
  "Adding safetensors variant" PR), hence the `.bin` fallback. config.json says
  hidden_act "quick_gelu".
- OpenCLIP LAION weights: repo ids from open_clip's `pretrained.py` (`_VITB16.laion2b_s34b_b88k ->
  hf_hub='laion/CLIP-ViT-B-16-laion2B-s34B-b88K/'`, `_VITH14.laion2b_s32b_b79k ->
  'laion/CLIP-ViT-H-14-laion2B-s32B-b79K/'`); file names from open_clip's constants
  (HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin", HF_SAFE_WEIGHTS_NAME =
  "open_clip_model.safetensors", HF_CONFIG_NAME = "open_clip_config.json"). The B-16 repo's
  open_clip_config.json (seen at commit 7288da5) has no `quick_gelu` flag -> exact GELU, and
  OpenAI mean/std. The H-14 repo holds open_clip_pytorch_model.bin, model.safetensors /
  pytorch_model.bin (transformers layout, hidden_act "gelu"), vocab.json, merges.txt,
  tokenizer.json; open_clip_model.safetensors there was not confirmed, hence the fallback.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PRETRAINED",
    "TOKENIZER_FILES",
    "PretrainedCfg",
    "list_backbones",
    "norm_alias",
    "resolve_name",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("vocab.json", "merges.txt")

_OPENAI_PAPER = ("Radford et al., Learning Transferable Visual Models From Natural Language "
                 "Supervision, ICML 2021 (arXiv:2103.00020)")
_LAION_PAPER = ("Cherti et al., Reproducible scaling laws for contrastive language-image learning, "
                "CVPR 2023 (arXiv:2212.07143); data: Schuhmann et al., LAION-5B, NeurIPS 2022")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class PretrainedCfg:
    """One published set of CLIP weights.

    weights: candidate weight files in the repo, best first; the first that exists is used.
    config: the config file shipped with the weights (it states the activation).
    aliases: other spellings users type (OpenAI / OpenCLIP names); matched ignoring case and
        punctuation, so "ViT-B/16", "openai/ViT-B-16" and "ViT-B-16.openai" are one alias.
    """

    name: str
    arch: str
    hf_hub_id: str
    weights: tuple[str, ...]
    config: str | None = None
    tokenizer: tuple[str, ...] = TOKENIZER_FILES
    act: str = "quick_gelu"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    description: str = ""
    licence: str = ""
    paper: str = ""
    aliases: tuple[str, ...] = ()
    package_file: str | None = None  # weights shipped inside the ovss package (path relative to it)
    # Recipe settings the weights need whatever the method (applied under presets and user
    # overrides), e.g. the input scale a small model was trained at.
    recipe_overrides: tuple[tuple[str, object], ...] = ()

    @property
    def local_path(self) -> Path | None:
        """The shipped weights file, for entries that come with the package."""
        if self.package_file is None:
            return None
        return Path(__file__).resolve().parents[1] / self.package_file

    @property
    def files(self) -> tuple[str, ...]:
        """Every file name this entry may fetch (weight candidates, config, tokenizer)."""
        return (*self.weights, *((self.config,) if self.config else ()), *self.tokenizer)

    @property
    def extra_files(self) -> tuple[str, ...]:
        return (*((self.config,) if self.config else ()), *self.tokenizer)


def _openai(name: str, arch: str, repo: str, desc: str, aliases: tuple[str, ...]) -> PretrainedCfg:
    return PretrainedCfg(
        name=name, arch=arch, hf_hub_id=repo, weights=_HF_WEIGHTS, config="config.json",
        act="quick_gelu", description=desc,
        licence="MIT (OpenAI CLIP code and weights)", paper=_OPENAI_PAPER,
        aliases=(arch, f"openai/{arch}", f"{arch}.openai", f"{arch}-openai", f"clip-{arch}", repo, *aliases),
    )


def _laion(name: str, arch: str, tag: str, repo: str, desc: str, aliases: tuple[str, ...]) -> PretrainedCfg:
    return PretrainedCfg(
        name=name, arch=arch, hf_hub_id=repo, weights=_OPEN_CLIP_WEIGHTS, config="open_clip_config.json",
        act="gelu", description=desc, licence="MIT (LAION / OpenCLIP)", paper=_LAION_PAPER,
        aliases=(f"{arch}.{tag}", f"{arch}/{tag}", f"laion/{arch}.{tag}", repo, *aliases),
    )


PRETRAINED: dict[str, PretrainedCfg] = {
    p.name: p
    for p in (
        _openai("clip-vit-b16", "ViT-B-16", "openai/clip-vit-base-patch16",
                "OpenAI CLIP ViT-B/16, 224px; the default backbone of most training-free OVSS papers",
                ("ViT-B/16",)),
        _openai("clip-vit-b32", "ViT-B-32", "openai/clip-vit-base-patch32",
                "OpenAI CLIP ViT-B/32, 224px (coarse 7x7 grid; cheap)", ("ViT-B/32",)),
        _openai("clip-vit-l14", "ViT-L-14", "openai/clip-vit-large-patch14",
                "OpenAI CLIP ViT-L/14, 224px", ("ViT-L/14",)),
        _openai("clip-vit-l14-336", "ViT-L-14-336", "openai/clip-vit-large-patch14-336",
                "OpenAI CLIP ViT-L/14 fine-tuned at 336px", ("ViT-L/14@336px", "ViT-L-14-336px")),
        _laion("openclip-vit-b16-laion2b", "ViT-B-16", "laion2b_s34b_b88k",
               "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
               "OpenCLIP ViT-B/16 trained on LAION-2B (34B samples seen), exact GELU", ()),
        _laion("openclip-vit-h14-laion2b", "ViT-H-14", "laion2b_s32b_b79k",
               "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
               "OpenCLIP ViT-H/14 trained on LAION-2B (32B samples seen), exact GELU",
               ("ViT-H-14", "ViT-H/14")),
        PretrainedCfg(
            name="tiny-synthetic", arch="tiny-synthetic", hf_hub_id="", weights=("tiny_clip.safetensors",),
            tokenizer=("bpe_vocab.txt.gz",), act="quick_gelu",
            description="DEMO ONLY: a 1.5M-parameter CLIP trained on ovss's synthetic scenes "
                        "(python -m tools.train_tiny_clip); meaningful on that world only, "
                        "not a substitute for CLIP",
            licence="Apache-2.0 (trained by this project)", paper="",
            aliases=("tiny", "synthetic"), package_file="data/assets/tiny_synthetic/tiny_clip.safetensors",
            # trained on 96 px scenes, read whole: feed it that scale, not CLIP's 336 px windows
            recipe_overrides=(("protocol.short_side", 96), ("protocol.crop", 0)),
        ),
    )
}


def norm_alias(s: str) -> str:
    """The one alias rule of every backbone family. Alias key: lower case, letters and digits only ("ViT-B/16" == "vit_b_16" == "vitb16")."""
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _alias_table() -> dict[str, str]:
    """Built on each call so entries added at run time (plugins, tests) are seen."""
    table: dict[str, str] = {}
    for p in PRETRAINED.values():
        for a in (p.name, *p.aliases):
            table.setdefault(norm_alias(a), p.name)
    return table


def resolve_name(name: str) -> str | None:
    """Registered name for `name` or one of its aliases; None when it is not a known backbone."""
    if name in PRETRAINED:
        return name
    return _alias_table().get(norm_alias(name))


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered CLIP backbone names (every family: `zoo.list_backbones`) matching a shell-style pattern (e.g. "clip-*", "*h14*")."""
    return sorted(n for n in PRETRAINED if fnmatch.fnmatch(n, pattern))
