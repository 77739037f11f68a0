"""The training loop (`main`): pool, tokenizer, model, AdamW steps, evaluations, the best
checkpoint written out."""

from __future__ import annotations

import copy
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ovss.backbones.configs import infer_clip_config
from ovss.data.synthetic import CLASSES, SEED_BASE
from ovss.text.tokenizer import Tokenizer, train_bpe, write_merges

from .checkpoint import rewrite_card, save_merges, save_resume, save_weights, write_record
from .data import drop_colours, make_pool, normalise, random_crops, sample_batch, stuff_groups, tokenize_all
from .evaluate import READOUTS, SELECT_READOUTS, DenseEval, chance_miou, fmt_table
from .model import build_model, clip_loss, load_shipped, lr_at, openai_state, param_groups
from .options import CONTEXT, TEMPLATE_SETS, VOCAB_NAME, WEIGHTS_NAME, command_line, parse_args, run_id


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rewrite_card:
        return rewrite_card(Path(args.out))
    torch.manual_seed(args.seed)
    t_start = time.time()
    rid = run_id(args)
    resume_path = Path(tempfile.gettempdir()) / "ovss_tiny_clip_resume" / f"{rid}.pt"  # /tmp unless $TMPDIR
    print(f"run {rid}: {vars(args)}", flush=True)

    # ---- data and tokenizer
    t0 = time.time()
    images, masks, captions = make_pool(args.pool, SEED_BASE["train"], args.threads, args.pool_cache)
    groups = group_of = None
    if args.group > 1:  # the masks only say which stuff classes a scene has (as its caption does)
        groups = stuff_groups(masks)
        group_of = np.empty(len(masks), np.int64)
        for g, members in enumerate(groups):
            group_of[members] = g
    if args.crop <= 0:
        del masks  # only crops need masks (to caption what a crop shows); never used as dense labels
    t_pool = time.time() - t0
    merges = train_bpe(captions, args.merges)
    vocab_tmp = Path(tempfile.gettempdir()) / f"ovss_tiny_vocab_{rid}.txt.gz"
    write_merges(merges, vocab_tmp)
    tok = Tokenizer(vocab_tmp)
    assert tok.eot_token == tok.vocab_size - 1 and tok.sot_token == tok.vocab_size - 2
    tokens = tokenize_all(tok, captions)
    words = sorted({w for c in captions for w in c.replace(",", " , ").split()})
    pieces = {w: len(tok.encode(w)) for w in words}
    print(f"pool: {len(captions)} scenes in {t_pool:.1f}s; BPE: {len(merges)} merges, vocab {tok.vocab_size}, "
          f"{len(words)} caption words, max pieces/word {max(pieces.values())}, "
          f"longest caption {int((tokens > 0).sum(1).max())} tokens", flush=True)
    images_t = torch.from_numpy(images)  # uint8 (N, 96, 96, 3); normalised per batch

    model = build_model(args, tok.vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; {model.cfg}", flush=True)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    evaluator = DenseEval(args.eval_images)

    log = {"loss": [], "eval": [], "time": []}
    best = {"score": -1.0, "step": -1, "state": None, "eval": None}
    step, train_time = 0, 0.0
    if not args.no_resume and resume_path.is_file():
        ck = torch.load(resume_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, log, best, train_time = ck["step"], ck["log"], ck["best"], ck["train_time"]
        print(f"resumed from {resume_path} at step {step}", flush=True)

    model.train()
    window: list[float] = []  # losses since the last loss print
    recent: list[float] = []  # the last 50 losses, for the eval log
    if step > 0:
        window, recent = ck.get("window", []), ck.get("recent", [])
    t_seg = time.time()
    while step < args.steps:
        rng = np.random.Generator(np.random.PCG64([args.seed, step]))  # batch = f(seed, step): resumable
        idx = sample_batch(rng, len(images_t), args.batch_size, args.group, groups, group_of)
        flip = torch.from_numpy(rng.random(args.batch_size) < args.flip)
        x = images_t[torch.from_numpy(idx)]
        y = tokens[torch.from_numpy(idx)]
        caps: dict[int, str] = {}
        if args.drop_colour > 0:
            for r, i in enumerate(idx):
                c = drop_colours(captions[i], rng, args.drop_colour)
                if c != captions[i]:
                    caps[r] = c
        if args.crop > 0:
            x, crop_caps = random_crops(x, masks[idx], rng, args.crop, args.crop_min)
            caps.update(crop_caps)
        if caps:
            rows = sorted(caps)
            y = y.clone()
            y[rows] = tok([caps[r] for r in rows], context_length=CONTEXT, truncate=False)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
        x = normalise(x)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        loss = clip_loss(model, x, y, args.patch_dropout, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        window.append(loss.item())
        recent = (recent + [window[-1]])[-50:]
        if step % 50 == 0 or step == args.steps:
            now = time.time()
            train_time += now - t_seg
            t_seg = now
            m = float(np.mean(window))
            log["loss"].append({"step": step, "loss": round(m, 4), "lr": lr_at(step - 1, args),
                                "logit_scale": round(model.logit_scale.exp().item(), 3),
                                "train_s": round(train_time, 1)})
            print(f"step {step:5d}  loss {m:.4f}  lr {lr_at(step - 1, args):.2e}  "
                  f"scale {model.logit_scale.exp().item():6.2f}  {train_time:7.1f}s", flush=True)
            window = []
        if step % args.eval_every == 0 or step == args.steps:
            te = time.time()
            ev = evaluator(model, tok)
            score = ev[args.select_templates]["select"]
            log["eval"].append({"step": step, "loss": round(float(np.mean(recent)), 4), **ev})
            if score > best["score"]:
                best = {"score": score, "step": step, "state": copy.deepcopy(model.state_dict()), "eval": ev}
            print(f"eval @ {step} ({time.time() - te:.1f}s; best so far: step {best['step']}, "
                  f"{args.select_templates} select {best['score']:.2f})\n{fmt_table(ev)}", flush=True)
            t_seg = time.time()
            if not args.no_resume:
                save_resume({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                             "log": log, "best": best, "train_time": train_time,
                             "window": window, "recent": recent}, resume_path)

    # ---- pick, check fp16, write
    model.load_state_dict(best["state"])
    ev32 = best["eval"]
    dtype, ev_ship = torch.float32, ev32
    if args.fp16 == "auto":
        half = build_model(args, tok.vocab_size)
        half.load_state_dict({k: v.half().float() for k, v in best["state"].items()})
        ev16 = evaluator(half, tok)
        worst = max(abs(ev16[ts][r] - ev32[ts][r]) for ts in TEMPLATE_SETS for r in READOUTS)
        print(f"fp16 check: largest |mIoU change| over readouts and template sets = {worst:.2f}", flush=True)
        if worst <= 0.1:
            dtype, ev_ship = torch.float16, ev16
    total_time = time.time() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = openai_state(model, dtype)
    # Round trip: the shipped file re-reads to the same architecture.
    canon = {("text." + k if not k.startswith(("visual.", "logit_scale")) else k): v
             for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    assert infer_clip_config(canon) == model.cfg, "config inference would not re-read this model"
    meta = {"format": "pt", "act": "quick_gelu", "arch": "tiny-synthetic-vit-p8-96",
            "trained_by": "tools/train_tiny_clip", "selected_step": str(best["step"])}
    save_weights(state, out / WEIGHTS_NAME, meta)
    save_merges(merges, out / VOCAB_NAME)

    shipped = load_shipped(out)
    ev_ship = evaluator(shipped, Tokenizer(out / VOCAB_NAME), per_class=True)  # the files as written
    best_ts = max(TEMPLATE_SETS, key=lambda ts: ev_ship[ts]["select"])
    record = {
        "run_id": rid, "command": command_line(argv), "args": {k: str(v) if isinstance(v, Path) else v
                                                               for k, v in vars(args).items()},
        "params": n_params, "config": repr(model.cfg), "vocab_size": tok.vocab_size, "merges": len(merges),
        "selected_step": best["step"], "selection": f"mean mIoU of {', '.join(SELECT_READOUTS)} "
        f"with '{args.select_templates}' templates", "dtype": str(dtype).replace("torch.", ""),
        "final_eval": ev_ship, "best_template_set": best_ts, "loss": log["loss"], "eval": log["eval"],
        "pool_seconds": round(t_pool, 1), "train_seconds": round(train_time, 1),
        "total_seconds": round(total_time, 1), "torch": torch.__version__, "threads": args.threads,
        "machine": " ".join(x for x in (platform.machine(), platform.processor(), f"{os.cpu_count()} cpus") if x),
        "classes": CLASSES,
        "chance_miou": chance_miou(evaluator),
    }
    write_record(out, record, model, args)
    print(f"selected step {best['step']} ({record['dtype']}); shipped eval:\n{fmt_table(ev_ship)}\n"
          f"per-class IoU ({args.select_templates}, maskclip): {ev_ship[args.select_templates]['per_class']['maskclip']}\n"
          f"wrote {out}; total {total_time / 60:.1f} min (pool {t_pool:.0f}s, train {train_time / 60:.1f} min)",
          flush=True)
    if not args.no_resume and resume_path.is_file():
        resume_path.unlink()
    return record
