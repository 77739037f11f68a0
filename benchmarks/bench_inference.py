"""Inference speed: seconds per image and text-bank time, with ViT-B/16-sized random weights.

    python benchmarks/bench_inference.py [--repeats 3] [--device cpu] \
        [--reference-sclip PATH] [--reference-clearclip PATH] [--reference-naclip PATH]

Random weights are enough for timing (the cost does not depend on the values). Prints a Markdown
table and writes it, with the raw numbers, to benchmarks/results/inference.{md,json}.
Ratios compare variants measured in the same process, since these machines are noisy.

With `--reference-<method> PATH` (a checkout of wangf3014/SCLIP, mc-lan/ClearCLIP or
sinahmr/NACLIP) the reference implementation's own inference is timed next to ovss's `<method>`
(its default recipe) on the same weights and image: the reference segmentor's model code and
forward_slide / predict (SCLIP, NACLIP: predict = windows, resize, PAMR where on, decision;
ClearCLIP: forward_slide + postprocess_result in float32, its predict would cast to fp16) on the
image ovss's preprocess produces, against ovss's full call on the 500x375 image. The references
are loaded as tests/golden/make_methods_golden.py loads them (mmseg etc. replaced by stand-ins);
their text side is replaced by random query embeddings and not timed (ovss's is cached).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ovss.backbones.clip import CLIP
from ovss.backbones.configs import ARCHS
from ovss.backbones.factory import LoadedClip
from ovss.backbones.tokenizer import Tokenizer
from ovss.pipeline import Segmenter
from ovss.text_bank import TextBank

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests/golden/tokenizer/small_vocab.txt.gz"  # any CLIP-format vocabulary times the same
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
               "train", "tv monitor"]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


REFERENCES = {"sclip": "wangf3014/SCLIP", "clearclip": "mc-lan/ClearCLIP", "naclip": "sinahmr/NACLIP"}


def reference_rows(model, clip, image, paths: dict, repeats: int, device: str) -> list[dict]:
    """ovss's sclip / clearclip / naclip next to each given reference implementation."""
    sys.path.insert(0, str(ROOT / "tests/golden"))
    import make_methods_golden as mg

    from ovss.inference import preprocess

    mg.stub_frameworks()
    sd = {k.removeprefix("text."): v for k, v in model.state_dict().items()}  # OpenAI layout
    class_file = Path(tempfile.mkdtemp()) / "cls_voc21.txt"
    class_file.write_text("\n".join(VOC_CLASSES))
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(len(VOC_CLASSES), sd["text_projection"].shape[1],
                                                        generator=g), dim=-1).to(device)
    rows = []
    for which, path in paths.items():
        if path is None:
            continue
        mod, build = mg.load_reference(which, Path(path))
        seg = Segmenter(which, device=device, clip=clip, tokenizer=VOCAB,
                        text_cache_dir="/tmp/ovss-bench-text")
        seg(image, VOC_CLASSES)  # fills the text cache
        r = seg.recipe
        settings = {"slide_crop": r.protocol.crop, "slide_stride": r.protocol.stride,
                    "pamr": bool(r.refiners), "logit_scale": r.decision.logit_scale,
                    "prob_thd": r.decision.prob_thd}
        if which == "sclip":
            settings["area_thd"] = r.decision.area_thd
        ref = mg.reference_segmentor(mod, which, build(sd), class_file, queries, settings).to(device)
        ref.query_idx = ref.query_idx.to(device)
        x = preprocess(image, r.protocol, device)
        t_ref = timed(lambda: mg.reference_predict(ref, which, x, image.shape[:2]), repeats)
        t_ovss = timed(lambda: seg(image, VOC_CLASSES, keep_image=False), repeats)
        rows.append({"what": f"{which}: 500x375 image, reference {REFERENCES[which]}", "seconds": t_ref,
                     "ratio": 1.0})
        rows.append({"what": f"{which}: 500x375 image, ovss (ratio = ovss / reference)", "seconds": t_ovss,
                     "ratio": t_ovss / t_ref})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="dense-clip,maskclip")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    for name, repo in REFERENCES.items():
        ap.add_argument(f"--reference-{name}", type=Path, metavar="PATH",
                        help=f"a {repo} checkout: time its own inference next to ovss's {name}")
    args = ap.parse_args()
    ref_paths = {name: getattr(args, f"reference_{name}") for name in REFERENCES}

    torch.manual_seed(0)
    model = CLIP(ARCHS["ViT-B-16"]).eval().to(args.device)
    clip = LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="bench-random")
    tok = Tokenizer.from_file(VOCAB)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    rows = []
    for method in args.methods.split(","):
        for label, wb in (("windows batched", 32), ("one window at a time", 1)):
            seg = Segmenter(method, device=args.device, clip=clip, tokenizer=VOCAB,
                            overrides={"protocol.window_batch": wb}, text_cache_dir="/tmp/ovss-bench-text")
            seg(image, VOC_CLASSES)  # fills the text cache, so only the image path is timed
            s = timed(lambda: seg(image, VOC_CLASSES, keep_image=False), args.repeats)
            rows.append({"what": f"{method}: 500x375 image, {label}", "seconds": s})
        rows[-1]["ratio"] = rows[-1]["seconds"] / rows[-2]["seconds"]
        rows[-2]["ratio"] = 1.0

    prompts = len(VOC_CLASSES) * 80
    for label, crop in (("context cropped to the longest prompt", True), ("full 77-token context", False)):
        def run(crop=crop):
            TextBank(model, tok, "bench", "imagenet80", use_cache=False, crop_context=crop).encode_queries(VOC_CLASSES)
        rows.append({"what": f"text bank, 21 classes x 80 templates ({prompts} prompts), {label}",
                     "seconds": timed(run, args.repeats)})
    rows[-2]["ratio"], rows[-1]["ratio"] = 1.0, rows[-1]["seconds"] / rows[-2]["seconds"]
    if any(ref_paths.values()):
        rows += reference_rows(model, clip, image, ref_paths, args.repeats, args.device)

    env = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "repeats": args.repeats}
    lines = ["| what | seconds (median) | ratio to first of pair |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['seconds']:.3f} | {r['ratio']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    refs = "".join(f" --reference-{n} <{REFERENCES[n]} checkout>" for n, p in ref_paths.items() if p)
    header = (f"# Inference speed (ViT-B/16-sized random weights)\n\nCommand: `python benchmarks/bench_inference.py"
              f" --repeats {args.repeats} --device {args.device}{refs}`\n\n"
              f"Environment: {json.dumps(env)}\n\n")
    (args.out / "inference.md").write_text(header + table + "\n")
    (args.out / "inference.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
