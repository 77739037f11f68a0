"""Make the MLMP golden from the reference's own adaptation and model code (run by hand).

    PYTHONPATH=src python tests/golden/make_mlmp_golden.py --mlmp /path/to/dosowiechi/MLMP [--fp16]

The reference checkout stays outside this repository; nothing of it is committed. Its
`ovss/clip/model.py` (the CLIP with MLMP's multi-level forward) and `adapt/mlmp.py` (the `MLMP`
class) are loaded by path. `adapt/mlmp.py` imports `ovss.load_ovss` and three printing helpers of
`utils.misc` at its top: those are stand-ins while it loads (the reference's package is also named
`ovss`; ours is put back right after). The `MLMP` object is made with `__new__` and given what its
`__init__` sets (`__init__` would call `clip.load`, which downloads OpenAI weights), in the same
order: text tower frozen, `set_ln_grads`, `collect_ln_params`, Adam(lr, (0.9, 0.999), 0), the
saved source state, `extract_text_embeddings(classes, templates, average=True)`. Its `tokenize`
is ovss's tokenizer on the golden small vocabulary (tests/golden/tokenizer), so the reference's
own text tower encodes exactly the token rows ovss encodes. The templates are the checkout's
`prompts.yaml`.

Model: the reference `CLIP` class (ViT: 224 px, patch 16 so a 14x14 grid, width 64, 6 blocks, 1
head of 64; text: width 64, 2 blocks, 1 head, the small vocabulary, context 77; embedding 64),
`visual.set_params("reduced", "naclip", 5.0)` (MLMP's NACLIP, ovss/__init__.py:34-36), every
parameter perturbed as `make_clip_golden.perturb_` does (seed 3), then rounded to float16 and back
(the reference's loader rounds its weights the same way; the file stores them in float16).
exp(logit_scale) is 14.30 here (not 100): the reference reads it from the weights, as ovss does.

Queries: 6 queries of 4 classes (`kitten` and `puppy` are synonyms; `CLASS_LINES`), each query
its own class in the entropy, as the reference's class extensions. Settings: lr 1e-3, 10 steps,
alpha_cls 1.0, vision_outputs -1..-4 (4 levels of the 6 blocks) for case `one`, -1..-18 (all 6
blocks, as the ViT-L list on a shorter tower) for `two`.

Cases (float32, CPU, seeded uint8 images normalised with MLMP's CLIP_MEAN / CLIP_STD as its
ToTensorAndNormalize does):
    one    one 224 x 224 image: the batch the reference adapts on is that one window.
    two    one 224 x 336 image cut into its two 224 x 224 windows at x = 0 and 112 (the reference's
           ResizeAndPatchify grid with patch 224, stride 112), adapted on jointly (a batch of 2);
           the evaluated windows averaged back onto the image as `aggregate_pred_patches` does.
Stored per case: `<case>.image` (uint8 HWC), `<case>.loss` (the loss before each step),
`<case>.ln` (every LayerNorm weight and bias of the image tower after the steps, concatenated in
`collect_ln_params` order, names in the metadata), `<case>.logits` (the adapted `evaluate`
logits, scaled by exp(logit_scale), stitched, every 4th row and column), `<case>.noadapt` (the same
readout before any step), `<case>.labels` (softmax, max over synonyms, argmax as main.py:346-358,
full size). Weights: `w.<OpenAI key>` (float16).

--fp16 also runs case `one` with the weights the reference's GPU path uses (`convert_weights`:
linear/conv/attention/projection weights in float16, LayerNorms float32, input float16; on the
CPU here) and prints how far that lands from the float32 run: the bound the reference's mixed
precision puts on any float32 parity (tests/golden/README.md).
Output: tests/golden/mlmp_small.safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module, perturb_

VOCAB = HERE / "tokenizer" / "small_vocab.txt.gz"
MEAN = [122.7709, 116.7460, 104.0937]  # MLMP utils/segmentation_datasets.py:353-354
STD = [68.5005, 66.6322, 70.3232]
CLASS_LINES = [["cat", "kitten"], ["dog", "puppy"], ["sky"], ["grass"]]
QUERIES = [q for line in CLASS_LINES for q in line]
Q2C = [c for c, line in enumerate(CLASS_LINES) for _ in line]
STEP = 4
CASES = {"one": ((224, 224), tuple(range(-1, -5, -1))), "two": ((224, 336), tuple(range(-1, -19, -1)))}


def load_reference(root: Path):
    """(model.py module, MLMP class, yaml templates)."""
    model_mod = load_module("ref_mlmp_model", root / "ovss/clip/model.py")
    saved = {k: sys.modules.get(k) for k in ("ovss", "utils", "utils.misc")}
    stub = types.ModuleType("ovss")
    stub.load_ovss = None
    utils = types.ModuleType("utils")
    misc = types.ModuleType("utils.misc")
    misc.load_prompts_from_yaml = misc.print_clip_parameters = misc.print_optimizer_parameters = None
    utils.misc = misc
    sys.modules.update({"ovss": stub, "utils": utils, "utils.misc": misc})
    try:
        mlmp_mod = load_module("ref_mlmp_adapt", root / "adapt/mlmp.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    import yaml

    templates = yaml.safe_load((root / "prompts.yaml").read_text())["prompt_templates"]
    return model_mod, mlmp_mod.MLMP, templates


def make_model(model_mod, vocab: int):
    torch.manual_seed(0)
    m = model_mod.CLIP(64, 224, 6, 64, 16, 77, vocab, 64, 1, 2).eval()
    perturb_(m, 3)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    m.visual.set_params("reduced", "naclip", 5.0)
    return m


def make_mlmp(MLMP, model, tokenize, templates, vision_outputs):
    """The reference object, as its __init__ builds it (adapt/mlmp.py:24-107) minus clip.load."""
    obj = MLMP.__new__(MLMP)
    obj.ovss_type, obj.ovss_backbone, obj.lr = "naclip", "golden", 1e-3
    obj.classes, obj.vision_outputs, obj.alpha_cls, obj.steps = list(QUERIES), vision_outputs, 1.0, 10
    obj.prompt_dir, obj.runtime, obj.device = "prompts.yaml", False, "cpu"
    obj.model, obj.tokenize, obj.prompt_templates, obj.prompt_integration = model, tokenize, templates, "loss"
    model.transformer.requires_grad_(False)
    model.ln_final.requires_grad_(False)
    model.token_embedding.requires_grad_(False)
    model.visual = obj.set_ln_grads(model.visual)
    params, names = obj.collect_ln_params(model.visual)
    obj.optimizer = torch.optim.Adam(params, lr=obj.lr, betas=(0.9, 0.999), weight_decay=0.0)
    obj.model_state, obj.optimizer_state = obj.copy_model_and_optimizer(model, obj.optimizer)
    with torch.no_grad():
        obj.text_x = obj.extract_text_embeddings(obj.classes, obj.prompt_templates, average=True).squeeze()
    return obj, names


def windows(image: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """ResizeAndPatchify's grid (patch 224, stride 112) of an image already at its size, then
    ToTensorAndNormalize (RGB here, so no channel flip)."""
    h, w = image.shape[:2]
    crops = [image[y:y + 224, x:x + 224] for y in range(0, h - 224 + 1, 112) for x in range(0, w - 224 + 1, 112)]
    t = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    return ((t - mean) / std).to(dtype)


def stitch(pred: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """aggregate_pred_patches (utils/misc.py:230-280) for one image."""
    out = torch.zeros(pred.shape[1], h, w)
    cnt = torch.zeros(1, h, w)
    i = 0
    for y in range(0, h - 224 + 1, 112):
        for x in range(0, w - 224 + 1, 112):
            out[:, y:y + 224, x:x + 224] += pred[i].float()
            cnt[:, y:y + 224, x:x + 224] += 1
            i += 1
    return out / cnt


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    pd = logits.softmax(dim=0)
    onehot = torch.nn.functional.one_hot(torch.tensor(Q2C)).T.view(len(CLASS_LINES), len(QUERIES), 1, 1)
    return (pd.unsqueeze(0) * onehot).max(1)[0].argmax(0)


def run_case(model_mod, MLMP, templates, tokenize, vocab, size, outs, dtype=torch.float32, image=None):
    model = make_model(model_mod, vocab)
    if dtype == torch.float16:
        model_mod.convert_weights(model)
    obj, names = make_mlmp(MLMP, model, tokenize, templates, outs)
    if image is None:
        image = np.random.default_rng(size[1]).integers(0, 256, (*size, 3), dtype=np.uint8)
    x = windows(image, dtype)
    with torch.no_grad():
        noadapt = stitch(obj.evaluate(x), *size)
    obj.reset()
    losses = obj.adapt(x)
    ln = torch.cat([p.detach().float().flatten() for p in obj.collect_ln_params(obj.model.visual)[0]])
    with torch.no_grad():
        logits = stitch(obj.evaluate(x), *size)
    return image, names, losses, ln, logits, noadapt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlmp", type=Path, required=True)
    ap.add_argument("--fp16", action="store_true", help="also measure the reference's fp16 path (prints)")
    ap.add_argument("--out", type=Path, default=HERE / "mlmp_small.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from ovss.text.tokenizer import Tokenizer  # ovss's, before the reference's stand-in `ovss`

    tok = Tokenizer.from_file(VOCAB)
    model_mod, MLMP, templates = load_reference(args.mlmp)
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"queries": json.dumps(QUERIES), "query_to_class": json.dumps(Q2C), "step": str(STEP)}
    for case, (size, outs) in CASES.items():
        image, names, losses, ln, logits, noadapt = run_case(model_mod, MLMP, templates, tok, tok.vocab_size,
                                                             size, outs)
        out[f"{case}.image"] = torch.from_numpy(image)
        out[f"{case}.loss"] = torch.tensor(losses, dtype=torch.float64)
        out[f"{case}.ln"] = ln
        out[f"{case}.logits"] = logits[:, ::STEP, ::STEP].contiguous()
        out[f"{case}.noadapt"] = noadapt[:, ::STEP, ::STEP].contiguous()
        out[f"{case}.labels"] = labels_of(logits).to(torch.uint8)
        meta["ln_names"] = json.dumps(names)
        meta[f"{case}.levels"] = str(len(outs))
        src = torch.cat([p.detach().flatten() for p in MLMP.collect_ln_params(
            make_model(model_mod, tok.vocab_size).visual)[0]])
        print(case, "loss", [round(v, 5) for v in losses], "max |ln - source|", (ln - src).abs().max().item())
    model = make_model(model_mod, tok.vocab_size)
    out.update({f"w.{k}": v.half().contiguous() for k, v in model.state_dict().items()})
    save_file(out, str(args.out), metadata=meta)
    print("wrote", args.out, "exp(logit_scale) =", model.logit_scale.exp().item())

    if args.fp16:
        size, outs = CASES["one"]
        img = out["one.image"].numpy()
        _, _, l32, ln32, lg32, na32 = run_case(model_mod, MLMP, templates, tok, tok.vocab_size, size, outs, image=img)
        try:
            _, _, l16, ln16, lg16, na16 = run_case(model_mod, MLMP, templates, tok, tok.vocab_size, size, outs,
                                                   torch.float16, image=img)
        except RuntimeError as e:  # an op without a CPU half kernel
            print("fp16 path not runnable on this CPU:", e)
            return
        src = torch.cat([p.detach().flatten() for p in MLMP.collect_ln_params(
            make_model(model_mod, tok.vocab_size).visual)[0]])
        print(f"fp16 vs fp32 reference: max |LN params| {(ln16 - ln32).abs().max():.3g} (largest change by the "
              f"steps {(ln32 - src).abs().max():.3g}), max |logits| {(lg16 - lg32).abs().max():.3g} (largest "
              f"{lg32.abs().max():.3g}), before adaptation {(na16 - na32).abs().max():.3g}, labels equal on "
              f"{(labels_of(lg16) == labels_of(lg32)).float().mean():.4f} of the pixels; losses "
              f"{[round(v, 4) for v in l16]} vs {[round(v, 4) for v in l32]}")


if __name__ == "__main__":
    main()
