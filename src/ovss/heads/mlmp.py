"""MLMP (Osowiechi et al., NeurIPS 2025): test-time adaptation of CLIP's LayerNorms by a
multi-level, multi-template entropy objective, and its entropy-weighted multi-level readout.

Reference: dosowiechi/MLMP@2a887de0 (`adapt/mlmp.py`, `ovss/clip/model.py`, `ovss/__init__.py`,
`main.py`, `bash/<dataset>/mlmp.sh`, `prompts.yaml`). The method and the sources of its settings
are in `methods/mlmp.py`; this module holds the two pieces any recipe can use:

`MLMP` (a test-time adapter, `Recipe.tta`, "mlmp:steps=10,...", run by `core.tta` around a call):
    levels   the last `layers` blocks' attention outputs without the residual (vanilla q-k
             attention, computed explicitly in the reference's order, for every block but the
             last; the last block is the recipe's own: its attention rule and surgery, e.g.
             NACLIP's k-k + Gaussian prior without residual and FFN) (model.py:256-293)
    loss     the levels averaged before ln_post + proj, L2-normalised; per template tau of the
             7 (`templates`), logits = s * cos(f_i, t_c^tau) over every patch token; the softmax
             entropy over the queries (synonyms are queries of their own), averaged over
             templates, windows and tokens, + alpha_cls x the entropy of the class token of an
             ordinary run of the last block (residual and FFN on), per template
             (adapt/mlmp.py:170-183, model.py:275, 548-596)
    update   only the affine weight and bias of every LayerNorm of the image tower (ln_pre, every
             block's ln_1 and ln_2, ln_post), by Adam (lr, betas (0.9, 0.999), no weight decay),
             `steps` steps, from the source weights for every image (episodic: the reference
             resets model and optimiser before every batch) (adapt/mlmp.py:80-91, 115-120)
    windows  the loss covers every window of the image at once, as the reference adapts on all
             patches of its batch; the windows are run `window_batch` at a time with their
             gradients summed with each chunk's share of the mean (the same gradient, less memory),
             and each block's activations are recomputed in the backward pass (`checkpoint`)
    s        `logit_scale`, default the weights' own exp(logit_scale) (model.py:548; 100 for
             OpenAI's CLIP)

`MLMPReadout` (the head plug-in "mlmp", a `joint_slide` readout): per window, every level through
ln_post + proj, its patch logits with the (template-averaged) queries, each level weighted per
window by softmax over levels of minus its mean entropy, the weighted sum of the levels through
ln_post + proj again, cosine logits (model.py:601-651); windows stitched as every method's.

The adaptation needs gradients through the image tower; everything else (text, the readout) runs
without. `core.tta` gives the adapter a private copy of the LayerNorm parameters (the other
weights shared, never written), so nothing leaks between images or requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..core.protocol import _pad_to_multiple, slide_logits, window_boxes
from ..core.registry import ADAPTERS, PLUGINS
from ..core.trace import record
from ..core.tta import layernorm_params
from .dense import Surgery, last_block
from .plugin import HeadPlugin

_EXPLICIT = frozenset({"attn"})  # Attention.forward: softmax((q * s) @ k^T) @ v, the reference's order


def softmax_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """-(softmax * log_softmax).sum(dim) (adapt/mlmp.py:306-310)."""
    return -(logits.softmax(dim) * logits.log_softmax(dim)).sum(dim)


def _block(blk, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block the reference's way: (its attention output without the residual, its output)."""
    y, _ = blk.attn(blk.ln_1(tokens), keep=_EXPLICIT)
    y = blk.ls_1(y)
    tokens = tokens + y
    return y, tokens + blk.ls_2(blk.mlp(blk.ln_2(tokens)))


def multilevel_features(visual, x: torch.Tensor, layers: int, rule, surgery: Surgery, pos_resize: str | None,
                        vanilla_cls: bool = False, checkpoint: bool = False
                        ) -> tuple[list[torch.Tensor], torch.Tensor | None, tuple[int, int]]:
    """Images (B, 3, H, W) -> (levels: the last min(layers, L) blocks' outputs before ln_post,
    each (B, prefix + h*w, D) (module docstring), the class token of an ordinary last block
    (B, D) when `vanilla_cls`, grid). Differentiable; the caller picks no_grad or not.
    `checkpoint` (with gradients on): each block's inner activations are recomputed in the
    backward pass instead of kept (torch.utils.checkpoint): the same values and gradients, with
    the memory of one block's activations instead of every block's."""
    tokens, grid = visual.embed(x, pos_resize)
    blocks = visual.blocks
    first = max(0, len(blocks) - int(layers))
    levels = []
    recompute = checkpoint and torch.is_grad_enabled()
    for i, blk in enumerate(blocks[:-1]):
        if recompute:
            from torch.utils.checkpoint import checkpoint as ckpt

            y, tokens = ckpt(_block, blk, tokens, use_reentrant=False, preserve_rng_state=False)
        else:
            y, tokens = _block(blk, tokens)
        if i >= first:
            levels.append(y)
    last = blocks[-1]
    levels.append(last_block(last, tokens, rule, surgery, grid))
    cls = last(tokens)[:, 0] if vanilla_cls else None
    return levels, cls, grid


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def mlmp_loss(visual, crops: torch.Tensor, text: torch.Tensor, scale: float, layers: int, rule, surgery: Surgery,
              pos_resize: str | None, alpha_cls: float = 1.0, checkpoint: bool = False) -> torch.Tensor:
    """MLMP's objective on a batch of windows; text: (T, Q, C) unit per-template queries."""
    levels, cls, _ = multilevel_features(visual, crops, layers, rule, surgery, pos_resize, alpha_cls != 0,
                                         checkpoint)
    f = _unit(visual.project(torch.mean(torch.stack(levels), dim=0)))
    n0 = visual.n_prefix
    logits = scale * torch.einsum("bsd,tcd->tbsc", f, text.to(f.dtype))[:, :, n0:]
    loss = softmax_entropy(logits, -1).mean()
    if alpha_cls != 0:
        c = _unit(visual.project(cls))
        cls_logits = scale * torch.einsum("bd,tcd->tbc", c, text.to(c.dtype))
        loss = loss + alpha_cls * softmax_entropy(cls_logits, -1).mean()
    return loss


@torch.no_grad()
def mlmp_window_logits(visual, crops: torch.Tensor, queries: torch.Tensor, scale: float, layers: int, rule,
                       surgery: Surgery, pos_resize: str | None) -> torch.Tensor:
    """MLMP's entropy-weighted multi-level readout: crops (B, 3, H, W), unit queries (Q, C) ->
    cosine patch logits (B, Q, h, w) (times `scale` they are the reference's logits)."""
    levels, _, (h, w) = multilevel_features(visual, crops, layers, rule, surgery, pos_resize)
    n0 = visual.n_prefix
    q = queries.to(levels[0].dtype)
    stacked = torch.stack(levels)  # (L, B, N, D)
    per = _unit(visual.project(stacked))  # (L, B, N, C)
    ent = softmax_entropy(scale * torch.einsum("lbsd,cd->lbsc", per, q)[:, :, n0:], -1)  # (L, B, h*w)
    del per
    weights = F.softmax(-ent.mean(-1), dim=0)  # (L, B): confident levels weigh more
    record("mlmp.level_weights", weights)
    fused = torch.sum(stacked * weights[:, :, None, None], dim=0)
    f = _unit(visual.project(fused))[:, n0:]
    return (f @ q.T).transpose(1, 2).reshape(f.shape[0], -1, h, w)


def model_logit_scale(seg) -> float:
    """The weights' own exp(logit_scale), as MLMP's model reads it (model.py:548)."""
    ls = getattr(seg.text_bank.model, "logit_scale", None)
    return 100.0 if ls is None else float(ls.detach().exp())


def template_queries(seg, spec, templates: str) -> torch.Tensor:
    """(T, Q, C) unit query embeddings, one set per template of `templates` (`spec.queries`
    order), each template its own cached text bank."""
    from ..text.bank import TextBank, get_templates

    banks = seg.__dict__.setdefault("_mlmp_banks", {})
    base = seg.text_bank
    out = []
    for t in get_templates(templates):
        if t not in banks:
            cache = None if base.cache_dir is None else base.cache_dir.parent.parent
            banks[t] = TextBank(base.model, base.tokenizer, base.weights_id, (t,), cache_dir=cache,
                                use_cache=base.cache_dir is not None)
        out.append(banks[t].encode(spec))
    return torch.stack(out).to(seg.device)


def image_windows(x: torch.Tensor, protocol, patch_size: int) -> torch.Tensor:
    """Every window of a (1, 3, H, W) input as the readout cuts it: (n, 3, h, w)."""
    boxes = window_boxes(x.shape[-2], x.shape[-1], protocol.crop, protocol.stride)
    crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    if protocol.pad_to_patch:
        crops, _ = _pad_to_multiple(crops, protocol.pad_multiple or patch_size)
    return crops


@ADAPTERS.register("mlmp")
@dataclass(frozen=True)
class MLMP:
    """MLMP's test-time adaptation (module docstring).

    steps, lr: Adam steps and learning rate per image; layers: how many of the last blocks form
    the levels (all when the tower has fewer, as the reference's list does); alpha_cls: weight of
    the class-token entropy; templates: the per-template text set; logit_scale: None = the
    weights' own; window_batch: windows per forward/backward (memory only; 0 = the protocol's);
    checkpoint: recompute each block's activations in the backward pass (memory only, ~1.3x time).
    """

    steps: int = 10
    lr: float = 1e-3
    layers: int = 18
    alpha_cls: float = 1.0
    templates: str = "mlmp7"
    logit_scale: float | None = None
    window_batch: int = 4
    checkpoint: bool = True

    def __post_init__(self):
        if self.steps < 0 or self.layers < 1 or self.lr < 0:
            raise ValueError("mlmp needs steps >= 0, layers >= 1 and lr >= 0")

    def adapt(self, seg, visual: torch.nn.Module, state, queries: torch.Tensor, spec) -> dict[str, Any]:
        """Update `visual`'s LayerNorm parameters in place (`visual` is `core.tta`'s private copy)
        on the image of `state`; returns {"loss": [loss before each step]}."""
        r = seg.recipe
        with torch.no_grad():
            text = template_queries(seg, spec, self.templates)
            crops = image_windows(state.x, r.protocol, visual.patch_size)
        scale = model_logit_scale(seg) if self.logit_scale is None else float(self.logit_scale)
        params = layernorm_params(visual)
        opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999), weight_decay=0.0)
        n = crops.shape[0]
        nb = self.window_batch or r.protocol.window_batch or n
        losses = []
        for _ in range(self.steps):
            grads: list[torch.Tensor | None] = [None] * len(params)
            total = 0.0
            for s in range(0, n, nb):
                chunk = crops[s:s + nb]
                with torch.enable_grad():
                    loss = mlmp_loss(visual, chunk, text, scale, self.layers, r.attention, r.surgery,
                                     r.pos_resize, self.alpha_cls, self.checkpoint)
                    if chunk.shape[0] != n:  # each chunk's share of the mean over all windows
                        loss = loss * (chunk.shape[0] / n)
                    g = torch.autograd.grad(loss, params, allow_unused=True)
                total += float(loss)
                grads = [gi if acc is None else (acc if gi is None else acc + gi) for acc, gi in zip(grads, g)]
            for p, gi in zip(params, grads):
                p.grad = gi
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(total)
        return {"loss": losses}


@PLUGINS.register("mlmp")
@dataclass(frozen=True)
class MLMPReadout(HeadPlugin):
    """MLMP's entropy-weighted multi-level readout over the protocol's windows (module docstring).

    layers: how many of the last blocks are levels; logit_scale: for the entropies (None = the
    weights' own exp(logit_scale)); the logits it returns are cosines, as every readout's.
    """

    layers: int = 18
    logit_scale: float | None = None

    # per window batch: the (levels, windows) softmax weights of the levels' readouts
    trace_names: ClassVar[tuple[str, ...]] = ("mlmp.level_weights",)

    def joint_slide(self, seg, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        r = seg.recipe
        scale = model_logit_scale(seg) if self.logit_scale is None else float(self.logit_scale)
        visual = seg.visual

        def readout(crops: torch.Tensor) -> torch.Tensor:
            return mlmp_window_logits(visual, crops, queries, scale, self.layers, r.attention, r.surgery,
                                      r.pos_resize)

        return slide_logits(x, readout, r.protocol, visual.patch_size)

