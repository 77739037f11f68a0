"""Train the tiny synthetic-world CLIP shipped in src/ovss/data/assets/tiny_synthetic/.

A demonstration model: a ~1.6M-parameter CLIP trained from scratch, on CPU, on (image, caption)
pairs of the procedural world in `ovss.data.synthetic`, saved in OpenAI's checkpoint layout so the
dense methods run it through the same code path as real CLIP weights. It is NOT a substitute for
real CLIP: it knows 11 classes of one synthetic world and nothing else.

    python -m tools.train_tiny_clip                      # the shipped model (defaults)
    python -m tools.train_tiny_clip --steps 300 --out /tmp/try --eval-every 50

(from the repository root, with ovss importable: `pip install -e .` or PYTHONPATH=src).

What it does:
1. generates a pool of train scenes (seeds 0..pool-1, 96 px) once, cached under /tmp;
2. trains a BPE vocabulary (`train_bpe`) on the pool's captions; SOT/EOT are the last two ids;
3. trains CLIP (symmetric InfoNCE, learnable logit scale clamped at 100, AdamW, 400-step cosine)
   on random batches of the pool, with horizontal flips (captions never say left/right) and the
   shapes' colour words dropped from captions with p 0.75 ('a red circle' -> 'a circle');
4. every `--eval-every` steps, evaluates dense segmentation on the first `--eval-images` val scenes
   (seeds 1_000_000+) with five last-block readouts through `ovss.heads.dense.patch_logits`, and keeps
   the checkpoint with the best selection score (mean mIoU of maskclip/sclip/clearclip/naclip);
5. writes tiny_clip.safetensors (OpenAI key layout), bpe_vocab.txt.gz, MODEL_CARD.md and
   training_log.json into `--out`, each atomically (`ovss.data.io.atomic_write`).

`--rewrite-card --out DIR` re-evaluates the weights in DIR and regenerates its card and log.
Optional recipe switches that were tried and are off by default: --crop, --patch-dropout, --group.

An interrupted run resumes from $TMPDIR (/tmp)/ovss_tiny_clip_resume/<run id>.pt when started again with
the same arguments (disable with --no-resume).

Modules: `options` (arguments, run id, sizes, file names), `data` (scene pool, captions and their
augmentations, batches), `model` (the tiny CLIP, optimiser groups, schedule, loss, OpenAI layout),
`evaluate` (dense validation mIoU that selects the checkpoint), `train` (the loop), `checkpoint`
(writing the files, `--rewrite-card`), `card` (the model card). It is a tool of this repository,
not part of the ovss package.
"""

