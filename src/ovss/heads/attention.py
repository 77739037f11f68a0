"""Attention rules: which token-token similarity matrices mix CLIP's last-block tokens.

Training-free methods differ mostly here. A rule is a sum of softmax-normalised similarity
matrices built from the block's own projections (q-k is CLIP's; q-q, k-k, v-v are the
"self-self" variants of SCLIP/ClearCLIP/NACLIP), optionally with an additive prior on the logits
(NACLIP's Gaussian neighbourhood), or the identity (MaskCLIP's value path).

Matrices from outside the block enter through `Mix` (`attend(..., mixes=...)`), at one of three
places of the same computation:
    for each term t:  L_t = s * (a_t @ b_t^T)                      (t = qq, kk, ...)
                      L_t = scale * ((1 - weight) * L_t + weight * M)   for each "logits" mix M
                      A  += softmax(L_t + prior)
    for each "term" mix M:  A += weight * softmax(M)                (M: logits, -inf masks)
    A /= number of terms                                            (rule.combine == "mean")
    for each "attn" mix M:  A = scale * ((1 - weight) * A + weight * M)
e.g. ResCLIP's semantic-feedback prior ("logits") and its middle-layer attention ("attn"),
SC-CLIP's middle-layer similarity ("term", with combine="mean"), or another model's patch
affinity such as ProxyCLIP's DINO similarity ("term").
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
        to 2): "qk" (vanilla), "qq", "kk", "vv"; or ("id",) for identity attention (value path);
        or () for an affinity-only rule, whose attention comes from "term" mixes alone
        (ProxyCLIP's DINO affinity), written "affinity".
    prior: None or "gaussian": exp(-|p_i - p_j|^2 / (2 std^2)) over patch positions, added to
        every term's logits before the softmax, unscaled, zero on the class-token row/column.
    prior_std: the Gaussian's std in patches.
    combine: "sum" (rows of the summed softmaxes sum to the number of terms, as SCLIP) or "mean"
        (divided by the number of terms, external "term" mixes included, as SC-CLIP).
    """

    terms: tuple[str, ...] = ("qk",)
    prior: str | None = None
    prior_std: float = 5.0
    combine: str = "sum"

    def __post_init__(self) -> None:
        bad = [t for t in self.terms if t not in _TERMS]
        if bad:
            raise ValueError(f"unknown attention terms {bad}; choose from {sorted(_TERMS)}")
        if "id" in self.terms and len(self.terms) > 1:
            raise ValueError("identity attention ('id') cannot be combined with other terms")
        if self.prior not in (None, "gaussian"):
            raise ValueError(f"unknown attention prior {self.prior!r}; choose None or 'gaussian'")
        if self.combine not in ("sum", "mean"):
            raise ValueError(f"unknown attention combine {self.combine!r}; choose 'sum' or 'mean'")

    @classmethod
    def parse(cls, text: str) -> "AttentionRule":
        """'qq+kk', 'kk+gaussian:5', 'id', 'qk', 'kk+mean', 'affinity' (no terms) -> a rule (for
        the CLI and quick recipes)."""
        parts = [p.strip() for p in text.replace(" ", "").split("+") if p.strip()]
        terms, prior, std, combine = [], None, 5.0, "sum"
        if "affinity" in parts and any(p in _TERMS for p in parts):
            raise ValueError(f"attention {text!r}: 'affinity' means no q/k/v terms; it takes no other terms")
        for p in parts:
            if p == "affinity":  # no q/k/v terms: the attention comes from "term" mixes alone
                continue
            if p.startswith("gaussian"):
                prior = "gaussian"
                if ":" in p:
                    std = float(p.split(":", 1)[1])
            elif p == "mean":
                combine = "mean"
            else:
                terms.append(p)
        return cls(tuple(terms), prior, std, combine)

    def __str__(self) -> str:
        s = "+".join(self.terms) or "affinity"  # parse() reads every form back
        s += f"+gaussian:{self.prior_std:g}" if self.prior else ""
        return s + ("+mean" if self.combine == "mean" else "")

    def describe(self) -> str:
        """`str(self)`, plus a note on where an affinity-only rule takes its attention from."""
        if not self.terms:
            return f"{self} (no q/k/v terms: the attention is a plug-in's affinity, e.g. DINO's for ProxyCLIP)"
        return str(self)


_WHERE = ("logits", "term", "attn")


@dataclass(frozen=True, eq=False)
class Mix:
    """A matrix from outside the block mixed into an attention rule (see the module docstring).

    matrix: broadcastable to (B, heads, N, N) over the block's N tokens, in any float dtype
        (a "logits" mix keeps its dtype for `weight * matrix`, as ResCLIP's half-precision prior).
    where: "logits" (into every term's logits, before the prior and the softmax), "term" (its
        softmax is one more summed term) or "attn" (into the combined attention).
    weight, scale: "logits"/"attn": scale * ((1 - weight) * X + weight * matrix); "term": the
        softmax is multiplied by `weight` (scale unused). `weight` may be a tensor broadcastable
        to (B, heads, 1, 1): one weight per head (CASS weights each head's DINO graph by how
        different its spectrum is).
    """

    matrix: torch.Tensor
    where: str
    weight: float | torch.Tensor = 1.0
    scale: float = 1.0

    def __post_init__(self):
        if self.where not in _WHERE:
            raise ValueError(f"unknown mix place {self.where!r}; choose from {_WHERE}")


@lru_cache(maxsize=32)
def _gaussian_prior(h: int, w: int, std: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    d2 = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1)
    patch = torch.exp(-d2 / (2 * std**2))
    out = torch.zeros(h * w + 1, h * w + 1)
    out[1:, 1:] = patch
    return out


def attention_prior(rule: AttentionRule, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor | None:
    """The (1 + h*w, 1 + h*w) additive prior of a rule for a patch grid (h*w square without the
    class token), or None."""
    if rule.prior is None:
        return None
    prior = _gaussian_prior(grid[0], grid[1], float(rule.prior_std))
    return prior if cls_token else prior[1:, 1:]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Under a reduced-precision autocast, logits go to float32 before their softmax; outside it
    (the float32 path) x is returned as it is, whatever its dtype."""
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rule: AttentionRule,
           grid: tuple[int, int], mixes: tuple[Mix, ...] | list[Mix] = (), cls_token: bool = True) -> torch.Tensor:
    """Mix values with a rule. q, k, v: (B, heads, N, d_h) -> (B, heads, N, d_h)."""
    if rule.terms == ("id",) and not mixes:
        return v
    return attention_weights(q, k, rule, grid, mixes, v=v, cls_token=cls_token) @ v


def attention_weights(q: torch.Tensor, k: torch.Tensor, rule: AttentionRule, grid: tuple[int, int],
                      mixes: tuple[Mix, ...] | list[Mix] = (), v: torch.Tensor | None = None,
                      cls_token: bool = True) -> torch.Tensor:
    """The (B, heads, N, N) attention of `rule` with `mixes` (v is needed for a "vv" term only).

    cls_token: the tokens are the class token then h*w patches (N = 1 + h*w; the Gaussian prior
        is zero on the class token's row and column); False: patches only (N = h*w), as CASS."""
    if rule.terms == ("id",):
        if mixes:
            raise ValueError("identity attention ('id') takes no mixes")
        n = q.shape[-2]
        return torch.eye(n, dtype=q.dtype, device=q.device).expand(*q.shape[:-2], n, n)
    scale = 1.0 / math.sqrt(q.shape[-1])
    src = {"q": q, "k": k, "v": v}
    prior = attention_prior(rule, grid, cls_token)
    if prior is not None:
        prior = prior.to(device=q.device, dtype=q.dtype)
    pre = [m for m in mixes if m.where == "logits"]
    if not rule.terms and not any(m.where == "term" for m in mixes):
        raise ValueError("an affinity-only rule (no terms) needs at least one 'term' mix")
    attn, count = None, 0
    for m in mixes:  # external terms first (SC-CLIP's order)
        if m.where == "term":
            a = _upcast(m.matrix).softmax(dim=-1)
            a = a if isinstance(m.weight, float) and m.weight == 1.0 else a * m.weight
            attn = a if attn is None else attn + a
            count += 1
    for term in rule.terms:
        logits = _upcast(src[term[0]] @ src[term[1]].transpose(-2, -1)) * scale
        for m in pre:
            logits = m.scale * ((1 - m.weight) * logits + m.weight * m.matrix)
        if prior is not None:
            logits = logits + prior
        a = logits.softmax(dim=-1)
        attn = a if attn is None else attn + a
        count += 1
    if rule.combine == "mean" and count > 1:
        attn = attn / count
    for m in mixes:
        if m.where == "attn":
            attn = m.scale * ((1 - m.weight) * attn + m.weight * m.matrix)
    return attn
