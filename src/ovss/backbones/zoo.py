"""One zoo of every backbone family ovss loads by name (CLIP, DINO, and each later family).

Each family keeps its own table next to its loader (`pretrained.PRETRAINED` for CLIP,
`dino_pretrained.DINO_PRETRAINED` for DINO / DINOv2); this module is the one place that lists
them together, resolves a name or alias in any family with one alias rule
(`pretrained.norm_alias`), and suggests the nearest names of every family for an unknown one.
`ovss backbones` prints `entries()`.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from .configs import ARCHS
from .dino_pretrained import DINO_PRETRAINED
from .pretrained import PRETRAINED, PretrainedCfg, norm_alias, resolve_name

FAMILIES = {
    "clip": "CLIP image-text models: the backbone of every method (`backbone=` / `--backbone`)",
    "dino": "DINO / DINOv2 vision models: the affinity or key source of ProxyCLIP, LPOSS and CASS "
            "(`dino=` / `--dino`)",
    "saliency": "saliency models: CLIP-DIY's foreground map (FOUND's decoder on DINO ViT-S/8; "
                "`--set plugins=clipdiy:decoder=NAME_OR_FILE`)",
}


@dataclass(frozen=True)
class ZooEntry:
    """One named backbone: its family, architecture, where its weights live, what it is."""

    name: str
    family: str
    arch: str
    source: str
    description: str
    aliases: tuple[str, ...] = ()


def entries(family: str | None = None) -> list[ZooEntry]:
    """Every registered backbone (of one family), CLIP first, each family sorted by name."""
    if family is not None and family not in FAMILIES:
        raise KeyError(f"unknown backbone family {family!r}; families: {', '.join(FAMILIES)}")
    out: list[ZooEntry] = []
    if family in (None, "clip"):
        for n in sorted(PRETRAINED):
            p = PRETRAINED[n]
            source = f"hf-hub:{p.hf_hub_id}" if p.hf_hub_id else f"shipped with ovss ({p.package_file})"
            out.append(ZooEntry(n, "clip", p.arch, source, p.description, p.aliases))
    if family in (None, "dino"):
        for n in sorted(DINO_PRETRAINED):
            d = DINO_PRETRAINED[n]
            size = {384: "S", 768: "B", 1024: "L"}.get(d.cfg.width, str(d.cfg.width))
            arch = f"ViT-{size}-{d.cfg.patch_size}" + ("-reg4" if d.cfg.registers else "")
            out.append(ZooEntry(n, "dino", arch, f"hf-hub:{d.hf_hub_id}",
                                f"{'DINOv2' if n.startswith('dinov2') else 'DINO'} {n.split('-', 1)[1]}; also "
                                f"timm:{n} ({d.timm_hub_id}) or the official file {d.url.rsplit('/', 1)[-1]}",
                                (d.hf_hub_id, d.timm_hub_id, *d.aliases)))
    if family in (None, "saliency"):
        from .found_pretrained import FOUND_PRETRAINED

        for n in sorted(FOUND_PRETRAINED):
            f = FOUND_PRETRAINED[n]
            out.append(ZooEntry(n, "saliency", "ViT-S-8 + 1x1 conv", f.url,
                                f"{f.description}; DINO {f.dino} (trained on {f.dino_url.rsplit('/', 1)[-1]})",
                                f.aliases))
    return out


def resolve_backbone(name: str, family: str | None = None) -> tuple[str, str] | None:
    """(family, registered name) for a name or alias of any family (or of `family`); else None."""
    key = norm_alias(name.removeprefix("timm:"))
    for e in entries(family):
        if key in {norm_alias(a) for a in (e.name, *e.aliases)}:
            return e.family, e.name
    return None


def list_backbones(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a shell-style pattern (e.g. "clip-*", "dino*"), every family."""
    return [e.name for e in entries(family) if fnmatch.fnmatch(e.name, pattern)]


def unknown_backbone_message(name: str, family: str | None = None) -> str:
    """The error for an unknown name: the nearest names of every family, then how else to name one."""
    es = entries()
    candidates = {**{e.name: e for e in es}, **{a: e for e in es for a in e.aliases}}
    close = difflib.get_close_matches(name, list(candidates), n=6, cutoff=0.5)
    near = list(dict.fromkeys(f"{candidates[c].name} ({candidates[c].family})" for c in close))
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    if "/" in name and not name.startswith(("hf-hub:", "local-dir:")):
        hint += f" For a Hugging Face repo write 'hf-hub:{name}'."
    kind = f"{family.upper()} backbone" if family else "backbone"
    valid = ", ".join(e.name for e in entries(family))
    return (f"unknown {kind} {name!r}.{hint} Valid names: {valid} (`ovss backbones` lists every family). "
            "A weights file or folder path, 'local-dir:/path' or 'hf-hub:org/repo' also works.")


def get_pretrained(name: str) -> PretrainedCfg:
    """The CLIP zoo entry for a name or alias.

    Raises:
        KeyError: unknown name; the message names the nearest backbones of every family first.
    """
    key = resolve_name(name)
    if key is None:
        raise KeyError(unknown_backbone_message(name, "clip"))
    cfg = PRETRAINED[key]
    if cfg.arch not in ARCHS and cfg.package_file is None:
        raise KeyError(f"backbone {key!r} names architecture {cfg.arch!r}, not in configs.ARCHS")
    return cfg
