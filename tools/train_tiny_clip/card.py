"""The model card written beside the weights."""

from __future__ import annotations

import argparse
import math

from ovss.backbones.clip import CLIP
from ovss.data.synthetic import CLASSES, STUFF, THINGS

from .data import CROP_MIN_AREA
from .evaluate import READOUTS
from .options import _RECIPE_KEYS, LOG_NAME, PROGRAM, TEMPLATE_SETS, VOCAB_NAME, WEIGHTS_NAME, parse_args

# What was tried before the shipped recipe (measured once each on the 2-core machine that trained
# it; mIoU on the first 200 val scenes, 'plain' templates, unless said otherwise).
RECIPE_NOTES = """\
All runs: this architecture, seed 0, batch 128, AdamW lr 1e-3 with 50 warm-up steps and a cosine
to 0, weight decay 0.1, horizontal flips. "mean4" = mean mIoU of maskclip, sclip, clearclip, naclip.

| run | change | best mean4 (step) | what happened later |
|---|---|---|---|
| r1 | captions as generated, 800 steps (eval on 100 scenes) | 33.7 (200) | maskclip/sclip held 32-37 to step 600; clearclip/naclip swung between 21 and 34; dense-clip fell 25 -> 20 (stopped at 650) |
| r2 | + random re-captioned crops (p 0.5) + 50% patch dropout, 800 steps | 32.4 (200) | drifted down to 27-33 per readout by steps 600-750; no gain, dropped |
| r3 | drop the colour word of each shape with p 0.75, 800 steps | 39.5 (200) | maskclip/sclip kept rising to 44-45 (steps 400-500), clearclip/naclip collapsed from ~40 (step 200) to ~20 (step 500 on) |
| r4 | colour drop 0.75, **400-step cosine** (shipped) | 41.6 (200) | end state at step 400 still 39.6 (r3 at 800: 31.1): the short cosine holds the residual-free readouts |
| r5 | r4 + hard-negative batches (groups of 4 scenes sharing their stuff classes) | 39.7 (200) | not better by step 200; stopped at ~250 |

What held dense quality: (1) removing the shapes' colour words from most captions (about +6 mean4
at step 200 over r1; the gain is in the stuff classes, shapes stay unrecognised, so why it helps
is not established: a guess is that colour words were the easiest thing to match and crowded out
per-region evidence); (2) a short cosine schedule, which ends training near the step where the
readouts peak instead of letting the residual-free readouts (clearclip, naclip) decay;
(3) selecting the checkpoint on dense validation mIoU every 50 steps. Crops, patch dropout and
hard-negative batches did not help in these short runs. Each row is one seed on a shared machine;
differences of ~2 mIoU between runs are within what neighbouring checkpoints of one run show.
"""


def model_card(rec: dict, model: CLIP, args: argparse.Namespace) -> str:
    v, t = model.cfg.vision, model.cfg.text
    ev = rec["final_eval"]
    sel = args.select_templates
    cols = [*READOUTS, "select"]
    table = ["| templates | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for ts in TEMPLATE_SETS:
        table.append(f"| {ts} | " + " | ".join(f"{ev[ts][c]:.2f}" for c in cols) + " |")
    classes = rec.get("classes", CLASSES)
    pc = ev[sel].get("per_class", {})
    per_class = ["| readout | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for r in READOUTS:
        if r in pc:
            per_class.append(f"| {r} | " + " | ".join("-" if math.isnan(x) else f"{x:.1f}" for x in pc[r]) + " |")
    hist = ["| step | loss | " + " | ".join(READOUTS) + " | select |", "|---" * (len(READOUTS) + 3) + "|"]
    for e in rec["eval"]:
        hist.append(f"| {e['step']} | {e['loss']:.3f} | "
                    + " | ".join(f"{e[sel][r]:.2f}" for r in [*READOUTS, "select"]) + " |")
    final_loss = rec["loss"][-1]["loss"]
    sel_loss = next((e["loss"] for e in rec["eval"] if e["step"] == rec["selected_step"]), float("nan"))
    ch = rec["chance_miou"]
    defaults = vars(parse_args([]))
    off = {k: rec["args"][k] for k in _RECIPE_KEYS if k in rec["args"] and rec["args"][k] != defaults[k]}
    same = (f"these flags are the script's current defaults, so `{PROGRAM}` "
            "retrains the same model" if not off else f"differs from the script defaults in {off}")
    best_ts = rec["best_template_set"]
    shapes = [classes.index(c) for c in THINGS]
    shape_iou = max((pc[r][i] for r in pc for i in shapes if not math.isnan(pc[r][i])), default=math.nan)
    data = [f"train scenes with seeds 0..{args.pool - 1} at 96 px (generated once), batches drawn by",
            f"  `numpy.random.Generator(PCG64([seed={args.seed}, step]))`, horizontal flip with p={args.flip}."]
    if args.drop_colour > 0:
        data.append(f"  Caption augmentation: each shape's colour word is removed with p={args.drop_colour} "
                    "('a red circle' -> 'a circle', a wording the generator itself uses).")
    if args.crop > 0:
        data.append(f"  Random square crops with p={args.crop} (side {args.crop_min}-1 of the image, resized "
                    f"to 96 px, re-captioned with the classes covering >= {CROP_MIN_AREA:.0%} of the crop).")
    if args.group > 1:
        data.append(f"  Hard-negative batches: groups of {args.group} scenes sharing their stuff classes.")
    if args.patch_dropout > 0:
        data.append(f"  Patch dropout {args.patch_dropout} in training forwards.")
    data.append("  Masks are never used as labels (only crops, when on, read them to caption the crop).")
    return f"""# tiny_synthetic: a tiny CLIP for the ovss synthetic world

**What it is.** A {rec['params'] / 1e6:.2f}M-parameter CLIP (ViT image tower + causal text transformer),
trained from scratch on CPU with CLIP's contrastive loss on (image, caption) pairs generated by
`ovss.data.synthetic` (7 stuff textures: {', '.join(STUFF)}; 4 shapes: {', '.join(THINGS)}).
It is saved in OpenAI's CLIP checkpoint layout and uses the same model classes
(`ovss.backbones.clip.CLIP`, QuickGELU, LayerNorm eps 1e-5) as real CLIP, so every dense method runs
it through exactly the code path real weights take. It exists to demonstrate and test that path
offline.

**What it is not.** It is NOT a substitute for real CLIP, and says nothing about how a method does
on real images. It has seen only 96x96 synthetic scenes and a vocabulary of about 30 caption words;
on anything else its outputs are meaningless. Numbers obtained with it are not comparable with
published results.

**Known limitation.** It does not tell the four shapes apart: their IoU is near zero for every
readout (best {shape_iou:.1f}) and the text embeddings of the four shape names are nearly identical
(cosine ~0.99). Its mIoU comes from the seven stuff classes; shapes mostly get a neighbouring stuff label.

## Files

- `{WEIGHTS_NAME}`: weights, {rec['dtype']}, OpenAI key layout (text tower at top level,
  `visual.*`, `logit_scale`, and OpenAI's scalar entries `input_resolution`, `context_length`,
  `vocab_size`). `ovss.backbones.configs.infer_clip_config` re-reads the architecture from it
  (64-wide heads), activation `quick_gelu`. fp16 was kept because no readout's validation mIoU
  moved by more than 0.1 against fp32 (else the script writes fp32).
- `{VOCAB_NAME}`: the BPE merges (OpenAI merges-file format; `Tokenizer(path)` or
  `Tokenizer.from_dir(folder)` reads it): {rec['merges']} merges learned by `train_bpe` on the pool's
  captions (it stops early once every caption word is one token), vocabulary {rec['vocab_size']} ids
  (512 byte symbols + merges + `<|startoftext|>`, `<|endoftext|>` = the largest id).
- `{LOG_NAME}`: loss curve, evaluation history and the per-class IoU of the shipped weights.

## Architecture

| | image tower | text tower |
|---|---|---|
| width / layers / heads | {v.width} / {v.layers} / {v.heads} (64-wide heads) | {t.width} / {t.layers} / {t.heads} (64-wide heads) |
| input | {v.image_size}x{v.image_size} px, patch {v.patch_size} (grid {v.grid}x{v.grid}) | context {t.context_length}, vocab {t.vocab_size} |
| output | projection to {v.output_dim} | projection to {t.output_dim} |

Activation `quick_gelu`, LayerNorm eps 1e-5, MLP ratio 4. Input normalisation: CLIP's mean/std on
the 0-255 scale (`ovss.core.protocol.CLIP_MEAN/CLIP_STD`), as at training time.

## Training

- Command: `{rec['command']}` (run id {rec['run_id']}); {same}.
- Data: {chr(10).join(data)}
- Loss: symmetric InfoNCE, learnable logit scale (init 1/0.07, clamped at 100).
- Optimiser: AdamW (betas 0.9/0.98, eps 1e-6), weight decay {args.weight_decay} on matrices,
  peak LR {args.lr}, {args.warmup} warm-up steps, cosine to {args.min_lr} at step {args.steps};
  batch {args.batch_size}; {args.steps} steps; seed {args.seed}; {rec['threads']} CPU threads, torch {rec['torch']}.
- Time on this machine ({rec['machine']}, shared with other jobs while it ran): {rec['train_seconds'] / 60:.1f} min
  of training, {rec['total_seconds'] / 60:.1f} min in all (pool generation {rec['pool_seconds']:.0f} s, evaluations included).
- Final training loss (mean of the last 50 steps): {final_loss:.3f}; at the selected step: {sel_loss:.3f}.

## Checkpoint selection

Dense validation mIoU is evaluated every {args.eval_every} steps and the checkpoint with the best
{rec['selection']} is kept: **step {rec['selected_step']}** of {args.steps}. This is model
selection on the synthetic validation split (seeds 1_000_000..{1_000_000 + args.eval_images - 1}), so
these numbers are optimistic for that split; dense readouts of models of this kind peak early and
decay with longer contrastive training while the loss keeps falling.

## Validation mIoU of the shipped weights

First {args.eval_images} val scenes, whole 96 px image (no resize, no windows), queries = the 11 class
names with a template set (`TextBank`: mean of normalised template embeddings), last-block readout
via `ovss.heads.dense.patch_logits`, bilinear upsampling to 96 px, argmax, mmseg-style mIoU
(`ovss.eval.metrics.IoUAccumulator`). Readouts: dense-clip = q-k attention, residual+FFN; maskclip =
identity attention, residual+FFN; sclip = q-q + k-k, residual+FFN; clearclip = q-q, no
residual/FFN; naclip = k-k + Gaussian prior (std 5), no residual/FFN. `select` = mean of the last four.

{chr(10).join(table)}

Chance level on the same scenes: uniform random labels {ch['uniform_random']:.2f} mIoU; the most
frequent class everywhere {ch['majority_class']:.2f} mIoU.

Template sets: `plain` = "{{}}", `single` = "a photo of a {{}}.", `imagenet80` = CLIP's 80 ImageNet
templates. Most ImageNet template words (and the final ".") never occur in the training captions,
so their tokens keep their random initial embeddings; the sets still give similar numbers, and the
best one for these weights is `{best_ts}`. The checkpoint was selected with `{sel}` (in-vocabulary).

Per-class IoU (`{sel}` templates; "-" = class absent from both prediction and labels):

{chr(10).join(per_class)}

### Evaluation history ({sel} templates)

{chr(10).join(hist)}

## How the recipe was chosen

{RECIPE_NOTES}"""
