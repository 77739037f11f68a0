"""Attention rules: which token-token similarity matrices mix CLIP's last-block tokens.

Training-free methods differ mostly here. A rule is a sum of softmax-normalised similarity
matrices built from the block's own projections (q-k is CLIP's; q-q, k-k, v-v are the
"self-self" variants of SCLIP/ClearCLIP/NACLIP), optionally with an additive prior on the logits
(NACLIP's Gaussian neighbourhood), or the identity (MaskCLIP's value path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

_TERMS = {"qk", "qq", "kk", "vv", "id"}


@dataclass(frozen=True)
class AttentionRule:
    """A last-block attention rule.

    terms: similarity matrices whose softmaxes are *summed* (SCLIP sums q-q and k-k, so rows sum
        to 2): "qk" (vanilla), "qq", "kk", "vv"; or ("id",) for identity attention (value path).
    prior: None or "gaussian": exp(-|p_i - p_j|^2 / (2 std^2)) over patch positions, added to
        every term's logits before the softmax, unscaled, zero on the class-token row/column.
    prior_std: the Gaussian's std in patches.
    """

    terms: tuple[str, ...] = ("qk",)
    prior: str | None = None
    prior_std: float = 5.0

    def __post_init__(self) -> None:
        bad = [t for t in self.terms if t not in _TERMS]
        if bad or not self.terms:
            raise ValueError(f"unknown attention terms {bad or '()'}; choose from {sorted(_TERMS)}")
        if "id" in self.terms and len(self.terms) > 1:
            raise ValueError("identity attention ('id') cannot be combined with other terms")
        if self.prior not in (None, "gaussian"):
            raise ValueError(f"unknown attention prior {self.prior!r}; choose None or 'gaussian'")

    @classmethod
    def parse(cls, text: str) -> "AttentionRule":
        """'qq+kk', 'kk+gaussian:5', 'id', 'qk' -> a rule (for the CLI and quick recipes)."""
        parts = [p.strip() for p in text.replace(" ", "").split("+") if p.strip()]
        terms, prior, std = [], None, 5.0
        for p in parts:
            if p.startswith("gaussian"):
                prior = "gaussian"
                if ":" in p:
                    std = float(p.split(":", 1)[1])
            else:
                terms.append(p)
        return cls(tuple(terms), prior, std)

    def __str__(self) -> str:
        s = "+".join(self.terms)
        return s + (f"+gaussian:{self.prior_std:g}" if self.prior else "")


@lru_cache(maxsize=32)
def _gaussian_prior(h: int, w: int, std: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    d2 = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1)
    patch = torch.exp(-d2 / (2 * std**2))
    out = torch.zeros(h * w + 1, h * w + 1)
    out[1:, 1:] = patch
    return out


def attention_prior(rule: AttentionRule, grid: tuple[int, int]) -> torch.Tensor | None:
    """The (1 + h*w, 1 + h*w) additive prior of a rule for a patch grid, or None."""
    if rule.prior is None:
        return None
    return _gaussian_prior(grid[0], grid[1], float(rule.prior_std))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rule: AttentionRule,
           grid: tuple[int, int]) -> torch.Tensor:
    """Mix values with a rule. q, k, v: (B, heads, N, d_h) -> (B, heads, N, d_h)."""
    if rule.terms == ("id",):
        return v
    scale = 1.0 / math.sqrt(q.shape[-1])
    src = {"q": q, "k": k, "v": v}
    prior = attention_prior(rule, grid)
    if prior is not None:
        prior = prior.to(device=q.device, dtype=q.dtype)
    attn = None
    for term in rule.terms:
        logits = (src[term[0]] @ src[term[1]].transpose(-2, -1)) * scale
        if prior is not None:
            logits = logits + prior
        a = logits.softmax(dim=-1)
        attn = a if attn is None else attn + a
    return attn @ v
