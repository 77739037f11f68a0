"""Inference speed: seconds per image and text-bank time, with ViT-B/16-sized random weights.

    python benchmarks/bench_inference.py [--repeats 3] [--device cpu] \
        [--reference-sclip PATH] [--reference-clearclip PATH] [--reference-naclip PATH] \
        [--deep-methods resclip,scclip,cliptrase] [--reference-resclip PATH] \
        [--graph-methods proxyclip,lposs,lposs+]

ResCLIP, SC-CLIP and CLIPtrase (`--deep-methods`) are timed on the same 500x375 image with their
default recipes and with their VOC21 presets, each with its peak memory: the growth of the
process's peak resident set during the call above the resident set before it (Linux: VmHWM reset
through /proc/self/clear_refs; "-" elsewhere). ResCLIP's SFR is also run on a whole 336x500
input (a 21x31 patch grid, N = 651), where the reference builds an N^2 x 31 x 2 int64 path tensor;
with `--reference-resclip PATH` the reference's own `generate_attention_sfr` (CPU port: its
`.cuda()` calls as the identity) is measured on the same seed map next to ovss's.

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


def _proc_kb(key: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_mb(fn) -> float | None:
    """MB by which the process's peak resident set grows during fn() (None off Linux)."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _proc_kb("VmRSS")
    fn()
    peak = _proc_kb("VmHWM")
    return None if base is None or peak is None else (peak - base) / 1024


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


DEEP = {"resclip": "yvhangyang/ResCLIP", "scclip": "SuleBai/SC-CLIP", "cliptrase": "leaves162/CLIPtrase"}


def deep_rows(clip, image, methods: list[str], repeats: int, device: str, reference_resclip=None) -> list[dict]:
    """ResCLIP / SC-CLIP / CLIPtrase: seconds per image and peak memory, default recipe and the
    VOC21 preset, on the 500x375 image; ResCLIP's SFR on a whole 336x500 input."""
    rows = []
    for method in methods:
        for preset in (None, "voc21"):
            seg = Segmenter(method, device=device, clip=clip, tokenizer=VOCAB, preset=preset,
                            text_cache_dir="/tmp/ovss-bench-text")
            seg(image, VOC_CLASSES)  # fills the text cache
            mem = peak_mb(lambda: seg(image, VOC_CLASSES, keep_image=False))
            s = timed(lambda: seg(image, VOC_CLASSES, keep_image=False), repeats)
            p = seg.recipe.protocol
            how = "whole image" if p.crop == 0 else f"windows {p.crop}/{p.stride}"
            rows.append({"what": f"{method} ({preset or 'default'} recipe, {how}): 500x375 image", "seconds": s,
                         "peak_mb": mem})
    if "resclip" in methods:
        big = np.random.default_rng(1).integers(0, 256, (336, 500, 3), dtype=np.uint8)
        seg = Segmenter("resclip", device=device, clip=clip, tokenizer=VOCAB, preset="voc21",
                        overrides={"protocol.short_side": None}, text_cache_dir="/tmp/ovss-bench-text")
        seg(big, VOC_CLASSES)
        mem = peak_mb(lambda: seg(big, VOC_CLASSES, keep_image=False))
        s = timed(lambda: seg(big, VOC_CLASSES, keep_image=False), repeats)
        rows.append({"what": "resclip voc21 preset, whole 336x500 input (21x31 grid: SFR on N = 651 patches)",
                     "seconds": s, "peak_mb": mem})
        from ovss.feedback import SFR

        labels = torch.randint(0, 8, (1, 21, 31), generator=torch.Generator().manual_seed(0))
        sfr = SFR()
        mem = peak_mb(lambda: sfr.prior(labels))
        rows.append({"what": "resclip SFR prior alone (line of sight + smoothing), 21x31 grid: ovss",
                     "seconds": timed(lambda: sfr.prior(labels), repeats), "peak_mb": mem})
        if reference_resclip is not None:
            sys.path.insert(0, str(ROOT / "tests/golden"))
            import make_deep_methods_golden as dg

            dg.stub_frameworks()
            _, model_mod = dg.load_resclip(Path(reference_resclip))
            vis = model_mod.VisionTransformer(224, 16, 64, 1, 1, 32)

            def ref():
                with dg.cuda_as_cpu():
                    vis.generate_attention_sfr(labels[0], (21, 31), gaussian_std=5.0, delete_same_entity=True)

            mem = peak_mb(ref)
            rows.append({"what": "resclip SFR prior alone, 21x31 grid: reference generate_attention_sfr",
                         "seconds": timed(ref, repeats), "peak_mb": mem})
    return rows


def graph_rows(clip, image, methods: list[str], repeats: int, device: str) -> list[dict]:
    """ProxyCLIP / LPOSS / LPOSS+ (issue 5): seconds per image and peak memory with their default
    recipes on the 500x375 image, with ViT-B-sized random DINO proxies (DINO ViT-B/8 for
    ProxyCLIP, ViT-B/16 for LPOSS: registered in place of the published weights), and LPOSS+ on a
    2048x1024 image (resized by its protocol to 896x448: 21 windows, 4116 graph nodes, a
    401k-pixel graph applied without an edge list)."""
    from ovss.backbones.dino import DINO_ARCHS
    from ovss.backbones.vit import VisionTransformer
    from ovss.methods.proxyclip import register_vfm

    torch.manual_seed(1)
    for name in ("dino-vitb8", "dino-vitb16"):
        register_vfm(name, VisionTransformer(DINO_ARCHS[name]).eval().to(device))
    rows = []
    for method in methods:
        seg = Segmenter(method, device=device, clip=clip, tokenizer=VOCAB, text_cache_dir="/tmp/ovss-bench-text")
        seg(image, VOC_CLASSES)
        mem = peak_mb(lambda: seg(image, VOC_CLASSES, keep_image=False))
        s = timed(lambda: seg(image, VOC_CLASSES, keep_image=False), repeats)
        p = seg.recipe.protocol
        rows.append({"what": f"{method} (default recipe, short side {p.short_side}, windows {p.crop}/{p.stride}): "
                             "500x375 image", "seconds": s, "peak_mb": mem})
    if "lposs+" in methods:
        big = np.random.default_rng(2).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
        seg = Segmenter("lposs+", device=device, clip=clip, tokenizer=VOCAB, text_cache_dir="/tmp/ovss-bench-text")
        mem = peak_mb(lambda: seg(big, VOC_CLASSES, keep_image=False))
        s = timed(lambda: seg(big, VOC_CLASSES, keep_image=False), max(1, repeats - 2))
        rows.append({"what": "lposs+ (default recipe): 2048x1024 image (network input 896x448)", "seconds": s,
                     "peak_mb": mem})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="dense-clip,maskclip")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--out-name", default="inference", help="results file stem (<out>/<name>.{md,json})")
    ap.add_argument("--no-text", action="store_true", help="skip the text-bank rows")
    for name, repo in REFERENCES.items():
        ap.add_argument(f"--reference-{name}", type=Path, metavar="PATH",
                        help=f"a {repo} checkout: time its own inference next to ovss's {name}")
    ap.add_argument("--deep-methods", default="resclip,scclip,cliptrase",
                    help="ResCLIP / SC-CLIP / CLIPtrase rows (seconds and peak memory); '' for none")
    ap.add_argument("--reference-resclip", type=Path, metavar="PATH",
                    help="a yvhangyang/ResCLIP checkout: measure its SFR prior next to ovss's")
    ap.add_argument("--graph-methods", default="proxyclip,lposs,lposs+",
                    help="ProxyCLIP / LPOSS / LPOSS+ rows (seconds and peak memory); '' for none")
    args = ap.parse_args()
    ref_paths = {name: getattr(args, f"reference_{name}") for name in REFERENCES}

    torch.manual_seed(0)
    model = CLIP(ARCHS["ViT-B-16"]).eval().to(args.device)
    clip = LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="bench-random")
    tok = Tokenizer.from_file(VOCAB)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        for label, wb in (("windows batched", 32), ("one window at a time", 1)):
            seg = Segmenter(method, device=args.device, clip=clip, tokenizer=VOCAB,
                            overrides={"protocol.window_batch": wb}, text_cache_dir="/tmp/ovss-bench-text")
            seg(image, VOC_CLASSES)  # fills the text cache, so only the image path is timed
            s = timed(lambda: seg(image, VOC_CLASSES, keep_image=False), args.repeats)
            rows.append({"what": f"{method}: 500x375 image, {label}", "seconds": s})
        rows[-1]["ratio"] = rows[-1]["seconds"] / rows[-2]["seconds"]
        rows[-2]["ratio"] = 1.0

    prompts = len(VOC_CLASSES) * 80
    for label, crop in (() if args.no_text else (("context cropped to the longest prompt", True),
                                                   ("full 77-token context", False))):
        def run(crop=crop):
            TextBank(model, tok, "bench", "imagenet80", use_cache=False, crop_context=crop).encode_queries(VOC_CLASSES)
        rows.append({"what": f"text bank, 21 classes x 80 templates ({prompts} prompts), {label}",
                     "seconds": timed(run, args.repeats)})
    if not args.no_text:
        rows[-2]["ratio"], rows[-1]["ratio"] = 1.0, rows[-1]["seconds"] / rows[-2]["seconds"]
    if any(ref_paths.values()):
        rows += reference_rows(model, clip, image, ref_paths, args.repeats, args.device)
    deep = [m for m in args.deep_methods.split(",") if m]
    if deep:
        rows += deep_rows(clip, image, deep, args.repeats, args.device, args.reference_resclip)

    graph = [m for m in args.graph_methods.split(",") if m]
    if graph:
        rows += graph_rows(clip, image, graph, args.repeats, args.device)

    env = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "repeats": args.repeats}
    lines = ["| what | seconds (median) | ratio to first of pair | peak MB above baseline |", "|---|---|---|---|"]
    fmt = (lambda v, f: "-" if v is None else format(v, f))
    lines += [f"| {r['what']} | {r['seconds']:.3f} | {fmt(r.get('ratio'), '.2f')}{'x' if r.get('ratio') else ''} "
              f"| {fmt(r.get('peak_mb'), '.0f')} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    refs = "".join(f" --reference-{n} <{REFERENCES[n]} checkout>" for n, p in ref_paths.items() if p)
    refs += f" --deep-methods {args.deep_methods}" if args.deep_methods != "resclip,scclip,cliptrase" else ""
    refs += " --reference-resclip <yvhangyang/ResCLIP checkout>" if args.reference_resclip else ""
    refs += f" --graph-methods {args.graph_methods}" if args.graph_methods != "proxyclip,lposs,lposs+" else ""
    refs += f" --methods {args.methods}" if args.methods != "dense-clip,maskclip" else ""
    refs += " --no-text" if args.no_text else ""
    refs += f" --out-name {args.out_name}" if args.out_name != "inference" else ""
    header = (f"# Inference speed (ViT-B/16-sized random weights)\n\nCommand: `python benchmarks/bench_inference.py"
              f" --repeats {args.repeats} --device {args.device}{refs}`\n\n"
              f"Environment: {json.dumps(env)}\n\n")
    (args.out / f"{args.out_name}.md").write_text(header + table + "\n")
    (args.out / f"{args.out_name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
