"""Where FOUND's released decoders live (valeoai/FOUND), apart from the loader (`found.py`) so
that the hub (`hub.download`) and the zoo list them without importing the model code."""

from __future__ import annotations

from dataclasses import dataclass

FOUND_DECODER_URL = "https://github.com/valeoai/FOUND/raw/main/data/weights/decoder_weights.pt"
FOUND_DINO_URL = ("https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/"
                  "dino_deitsmall8_300ep_pretrain.pth")


@dataclass(frozen=True)
class FoundPretrained:
    """A released FOUND decoder: where it lives and which DINO it was trained on."""

    name: str
    url: str
    filename: str
    dino: str  # the DINO zoo name the decoder sits on by default
    dino_url: str  # the exact DINO checkpoint FOUND trained with
    description: str
    aliases: tuple[str, ...] = ()


FOUND_PRETRAINED: dict[str, FoundPretrained] = {
    "found-duts-tr": FoundPretrained(
        "found-duts-tr", FOUND_DECODER_URL, "decoder_weights.pt", "dino-vits8", FOUND_DINO_URL,
        "FOUND saliency decoder (1x1 conv on DINO ViT-S/8 last-block keys), trained on DUTS-TR "
        "(valeoai/FOUND data/weights/decoder_weights.pt)", ("found",)),
}


def resolve_found_name(name: str) -> str | None:
    from .pretrained import norm_alias

    key = norm_alias(name)
    for n, p in FOUND_PRETRAINED.items():
        if key in {norm_alias(a) for a in (n, *p.aliases)}:
            return n
    return None
