"""Inference speed: seconds per image and text-bank time, with ViT-B/16-sized random weights.

    python benchmarks/bench_inference.py [--repeats 3] [--device cpu] [--threads N] [--out-name NAME] \
        [--methods dense-clip,maskclip] [--no-text] [--reference-sclip PATH] [--reference-clearclip PATH] [--reference-naclip PATH] \
        [--deep-methods resclip,scclip,cliptrase] [--reference-resclip PATH] \
        [--graph-methods proxyclip,lposs,lposs+,cass] [--reference-cass PATH --reference-pydeps DIR]

CLIP-DIY and FreeDA are timed with `--graph-methods clipdiy,freeda` (not in the default list): its default recipe
(59 crops through the ViT-B/16 here, FOUND on a random ViT-S/8 + decoder at 500x375).

ResCLIP, SC-CLIP and CLIPtrase (`--deep-methods`) are timed on the same 500x375 image with their
default recipes and with their VOC21 presets, each with its peak memory: the growth of the
process's peak resident set during the call above the resident set before it (Linux: VmHWM reset
through /proc/self/clear_refs; "-" elsewhere). ResCLIP's SFR is also run on a whole 336x500
input (a 21x31 patch grid, N = 651), where the reference builds an N^2 x 31 x 2 int64 path tensor;
with `--reference-resclip PATH` the reference's own segmentor (ResCLIPSegmentation.predict with its
clip/model.py, the same weights, the voc21 preset's numbers, random query embeddings; CPU port: its
`.cuda()` calls as the identity) runs on the same 336x500 network input, and its
`generate_attention_sfr` alone on the same seed map, each next to ovss's with time and peak-memory
ratios ovss / reference (the two calls alternate, so a change in the machine's load touches both).
Peaks are taken after glibc's malloc_trim, so rows do not hide in memory an earlier row freed.
Results of the ViT-B/16 rows: benchmarks/results/deep_methods.md (`--methods '' --no-text
--graph-methods '' --out-name deep_methods`).

Random weights are enough for timing (the cost does not depend on the values). Rows timed here
also give the minimum over the repeats next to the median ("-" where only the median is kept): on a
shared machine it is the figure least disturbed by other processes. Prints a Markdown
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
import shlex
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
from ovss.core.segmenter import Segmenter
from ovss.text.bank import TextBank
from ovss.text.tokenizer import Tokenizer

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


def _trim() -> None:
    """glibc's malloc_trim(0): without it, memory an earlier row freed stays resident and a later
    row that reuses it shows no growth (peaks would depend on the order of the rows)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_mb(fn) -> float | None:
    """MB by which the process's peak resident set grows during fn() (None off Linux)."""
    import gc

    gc.collect()
    _trim()  # hand freed heap pages back, so that reusing them shows in the resident set again
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _proc_kb("VmRSS")
    fn()
    peak = _proc_kb("VmHWM")
    return None if base is None or peak is None else (peak - base) / 1024


def timings(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def timed(fn, repeats: int) -> float:
    return statistics.median(timings(fn, repeats))


def timed_row(row: dict, fn, repeats: int) -> dict:
    """Fill row["seconds"] (median) and row["seconds_min"]: on a shared machine the minimum is the
    least disturbed by other processes (two threads wait for each other when one is descheduled)."""
    times = timings(fn, repeats)
    row["seconds"], row["seconds_min"] = statistics.median(times), min(times)
    return row


def timed_pair(ra: dict, fa, rb: dict, fb, repeats: int) -> None:
    """Seconds (median, min) of fa into row ra and of fb into rb, their calls alternating (a, b, a,
    b, ...), so that a change in the machine's load touches both sides of the ratio alike."""
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    for row, times in ((ra, ta), (rb, tb)):
        row["seconds"], row["seconds_min"] = statistics.median(times), min(times)


REFERENCES = {"sclip": "wangf3014/SCLIP", "clearclip": "mc-lan/ClearCLIP", "naclip": "sinahmr/NACLIP"}


def reference_rows(model, clip, image, paths: dict, repeats: int, device: str) -> list[dict]:
    """ovss's sclip / clearclip / naclip next to each given reference implementation."""
    sys.path.insert(0, str(ROOT / "tests/golden"))
    import make_methods_golden as mg

    from ovss.core.protocol import preprocess

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
            mem = peak_mb(lambda seg=seg: seg(image, VOC_CLASSES, keep_image=False))
            p = seg.recipe.protocol
            how = "whole image" if p.crop == 0 else f"windows {p.crop}/{p.stride}"
            rows.append(timed_row({"what": f"{method} ({preset or 'default'} recipe, {how}): 500x375 image",
                                   "peak_mb": mem}, lambda seg=seg: seg(image, VOC_CLASSES, keep_image=False),
                                  repeats))
    if "resclip" in methods:
        big = np.random.default_rng(1).integers(0, 256, (336, 500, 3), dtype=np.uint8)
        seg = Segmenter("resclip", device=device, clip=clip, tokenizer=VOCAB, preset="voc21",
                        overrides={"protocol.short_side": None}, text_cache_dir="/tmp/ovss-bench-text")
        seg(big, VOC_CLASSES)
        whole = {"what": "resclip voc21 preset, whole 336x500 input (21x31 grid: SFR on N = 651 patches)"}

        def ours_whole():
            seg(big, VOC_CLASSES, keep_image=False)

        whole["peak_mb"] = peak_mb(ours_whole)
        if reference_resclip is not None:
            ref_whole, ref_run = reference_resclip_whole(clip, seg, big, Path(reference_resclip), device)
            ref_whole["peak_mb"] = peak_mb(ref_run)
            timed_pair(ref_whole, ref_run, whole, ours_whole, repeats)
            rows.append(ref_whole)
            whole["what"] += ": ovss (ratios = ovss / reference)"
            pair(ref_whole, whole)
        else:
            timed_row(whole, ours_whole, repeats)
        rows.append(whole)
        from ovss.heads.feedback import SFR

        labels = torch.randint(0, 8, (1, 21, 31), generator=torch.Generator().manual_seed(0))
        sfr = SFR()

        def ours_prior():
            sfr.prior(labels)

        ours = {"what": "resclip SFR prior alone (line of sight + smoothing), 21x31 grid: ovss",
                "peak_mb": peak_mb(ours_prior)}
        if reference_resclip is not None:
            sys.path.insert(0, str(ROOT / "tests/golden"))
            import make_deep_methods_golden as dg

            dg.stub_frameworks()
            _, model_mod = dg.load_resclip(Path(reference_resclip))
            vis = model_mod.VisionTransformer(224, 16, 64, 1, 1, 32)

            def ref():
                with dg.cuda_as_cpu():
                    vis.generate_attention_sfr(labels[0], (21, 31), gaussian_std=5.0, delete_same_entity=True)

            theirs = {"what": "resclip SFR prior alone, 21x31 grid: reference generate_attention_sfr",
                      "peak_mb": peak_mb(ref)}
            timed_pair(theirs, ref, ours, ours_prior, max(repeats, 5))
            rows.append(theirs)
            ours["what"] += " (ratios = ovss / reference)"
            pair(theirs, ours)
        else:
            timed_row(ours, ours_prior, repeats)
        rows.append(ours)
    return rows


def pair(ref: dict, ours: dict) -> None:
    """Time and peak-memory ratios ovss / reference on a pair of rows (reference first)."""
    ref["ratio"] = ref["peak_ratio"] = 1.0
    ours["ratio"] = ours["seconds"] / ref["seconds"]
    if ours.get("peak_mb") is not None and ref.get("peak_mb"):
        ours["peak_ratio"] = ours["peak_mb"] / ref["peak_mb"]


@torch.no_grad()
def reference_resclip_whole(clip, seg, image, root: Path, device: str):
    """The reference ResCLIPSegmentation (yvhangyang/ResCLIP resclip_segmentor.py, its
    clip/model.py with RCS and SFR) with the numbers of ovss's `seg` recipe (the voc21 preset:
    whole image, slide_crop=0), on the same ViT-B/16 weights and the network input ovss's
    preprocess makes of `image`; its text side replaced by random query embeddings (not timed)
    and its `.cuda()` calls run as the identity (CPU port, as tests/golden/make_deep_methods_golden.py).
    Returns its row (the description) and the call to measure."""
    sys.path.insert(0, str(ROOT / "tests/golden"))
    import make_deep_methods_golden as dg
    import make_methods_golden as mg

    from ovss.core.protocol import preprocess

    dg.stub_frameworks()
    seg_mod, model_mod = dg.load_resclip(root)
    state = {k: v for k, v in clip.model.state_dict().items() if k.startswith("visual.")}
    vc = ARCHS["ViT-B-16"].vision  # the tower main() builds
    dims = {"width": vc.width, "layers": vc.layers, "heads": vc.heads, "patch": vc.patch_size,
            "image": vc.image_size, "out": vc.output_dim}
    net = dg.ref_net(model_mod, state, dims).to(device)
    class_file = Path(tempfile.mkdtemp()) / "cls_voc21.txt"
    class_file.write_text("\n".join(VOC_CLASSES))
    g = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(len(VOC_CLASSES), dims["out"], generator=g), dim=-1).to(device)
    ref, _ = dg.resclip_reference(seg_mod, net, class_file, queries, seg.recipe, "wo_resi", "resclip")
    ref.query_idx = ref.query_idx.to(device)
    x = preprocess(image, seg.recipe.protocol, device)
    h, w = image.shape[:2]

    def run():
        with dg.cuda_as_cpu():
            ref.predict(x, [mg._Sample((h, w))])

    return {"what": f"resclip voc21 preset, whole {h}x{w} input: reference yvhangyang/ResCLIP "
                    f"(network input {x.shape[-2]}x{x.shape[-1]})"}, run


def graph_rows(clip, image, methods: list[str], repeats: int, device: str) -> list[dict]:
    """ProxyCLIP / LPOSS / LPOSS+ (issue 5): seconds per image and peak memory with their default
    recipes on the 500x375 image, with ViT-B-sized random DINO proxies (DINO ViT-B/8 for
    ProxyCLIP, ViT-B/16 for LPOSS: registered in place of the published weights), and LPOSS+ on a
    2048x1024 image (resized by its protocol to 896x448: 21 windows, 4116 graph nodes, a
    401k-pixel graph applied without an edge list)."""
    from ovss.backbones.dino import DINO_ARCHS
    from ovss.backbones.vit import VisionTransformer
    from ovss.heads.vfm import register_vfm

    torch.manual_seed(1)
    for name in ("dino-vitb8", "dino-vitb16"):
        register_vfm(name, VisionTransformer(DINO_ARCHS[name]).eval().to(device))
    if "clipdiy" in methods:  # FOUND: a random ViT-S/8 and decoder in place of the released weights
        from ovss.heads.clipdiy import register_found_decoder

        register_vfm("dino-vits8", VisionTransformer(DINO_ARCHS["dino-vits8"]).eval().to(device))
        register_found_decoder("found-duts-tr", torch.nn.Conv2d(384, 1, (1, 1)).eval().to(device), device=device)
    if "freeda" in methods:  # FreeDA: a random DINOv2 ViT-L/14 and a random 20k-entry bank in place of the released ones
        import os

        from ovss.data.bank import save_bank

        register_vfm("dinov2-vitl14", VisionTransformer(DINO_ARCHS["dinov2-vitl14"]).eval().to(device))
        gb = torch.Generator().manual_seed(3)
        text_dim = clip.model.text.text_projection.shape[1]
        keys = torch.nn.functional.normalize(torch.randn(20000, text_dim, generator=gb), dim=-1)
        bank = save_bank(Path(tempfile.mkdtemp(prefix="ovss-bench-bank-")), keys,
                         torch.randn(20000, 1024, generator=gb), write_index=False)
        os.environ["OVSS_FREEDA_BANK"] = str(bank)
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


def cass_rows(clip, model, image, repeats: int, device: str, reference=None, pydeps=None) -> list[dict]:
    """CASS (issue 5): seconds per image and peak memory of the default recipe (short side 336,
    224/112 windows: 6 windows on the 500x375 image) with a random DINO ViT-B/8; with
    `--reference-cass PATH --reference-pydeps DIR` (SciPy and scikit-learn, which the reference
    imports) also the reference's own predict() on the same network input, weights and text
    embeddings, seeded alike, calls alternating. Per window the reference runs DINO twice and
    the whole image through CLIP once (for its class-token prior); ovss computes that prior once
    per image."""
    from ovss.backbones.dino import DINO_ARCHS, create_dino
    from ovss.backbones.vit import VisionTransformer
    from ovss.core.protocol import preprocess
    from ovss.heads.vfm import register_vfm
    from ovss.text.bank import parse_classes

    torch.manual_seed(1)
    if reference is None:
        register_vfm("dino-vitb8", VisionTransformer(DINO_ARCHS["dino-vitb8"]).eval().to(device))
    else:
        sys.path.insert(0, str(ROOT / "tests/golden"))
        sys.path.append(str(pydeps))
        import make_cass_golden as cg

        seg_mod, model_mod, vits, dino_att = cg.load_cass(Path(reference))
        vit = vits.VisionTransformer(patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                     qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
        register_vfm("dino-vitb8", create_dino(weights={k: v.detach() for k, v in vit.state_dict().items()})
                     .model.to(device))
    seg = Segmenter("cass", device=device, clip=clip, tokenizer=VOCAB, text_cache_dir="/tmp/ovss-bench-text")
    seg(image, VOC_CLASSES)
    mem = peak_mb(lambda: seg(image, VOC_CLASSES, keep_image=False))
    p = seg.recipe.protocol
    what = f"cass (default recipe, short side {p.short_side}, windows {p.crop}/{p.stride}): 500x375 image"
    if reference is None:
        return [timed_row({"what": what, "peak_mb": mem}, lambda: seg(image, VOC_CLASSES, keep_image=False), repeats)]
    sd = {k.removeprefix("text."): v for k, v in model.state_dict().items()}
    class_file = Path(tempfile.mkdtemp()) / "cls_voc21.txt"
    class_file.write_text("\n".join(VOC_CLASSES))
    queries = seg.text_bank.encode(parse_classes(VOC_CLASSES)).to(device)
    head = seg.recipe.plugins[0]
    ref, _ = cg.make_segmentor(seg_mod, cg.cass_clip(model_mod, sd).to(device), cg.dino_wrapper(dino_att, vit.to(device)),
                               class_file, queries, "context60", slide_crop=p.crop, slide_stride=p.stride,
                               prob_thd=seg.recipe.decision.prob_thd, global_semantics_weight=head.prior_weight,
                               mean_vector_weight=head.text_weight, h_threshold=head.cluster_threshold)
    ref.query_idx = ref.query_idx.to(device)
    x = preprocess(image, p, device)

    def run_ref():
        torch.manual_seed(0)
        with torch.no_grad():
            return ref.predict(x, [cg._Sample(image.shape[:2])])

    run_ref()
    mem_ref = peak_mb(run_ref)
    r_ref = {"what": what.replace("500x375 image", "500x375 image, reference MICV-yonsei/CASS"), "ratio": 1.0,
             "peak_mb": mem_ref, "peak_ratio": 1.0}
    r_ours = {"what": what + ", ovss (ratios = ovss / reference)", "peak_mb": mem}
    timed_pair(r_ref, run_ref, r_ours, lambda: seg(image, VOC_CLASSES, keep_image=False), repeats)
    r_ours["ratio"] = r_ours["seconds"] / r_ref["seconds"]
    if mem is not None and mem_ref:
        r_ours["peak_ratio"] = mem / mem_ref
    return [r_ref, r_ours]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
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
    ap.add_argument("--graph-methods", default="proxyclip,lposs,lposs+,cass",
                    help="ProxyCLIP / LPOSS / LPOSS+ / CASS rows (seconds and peak memory); '' for none")
    ap.add_argument("--reference-cass", type=Path, metavar="PATH",
                    help="a MICV-yonsei/CASS checkout: time its own predict() next to ovss's cass")
    ap.add_argument("--reference-pydeps", type=Path, metavar="DIR",
                    help="a folder with SciPy and scikit-learn (pip install --target DIR ...), which CASS imports")
    args = ap.parse_args()
    ref_paths = {name: getattr(args, f"reference_{name}") for name in REFERENCES}
    if args.threads:
        torch.set_num_threads(args.threads)

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

    graph = [m for m in args.graph_methods.split(",") if m and m != "cass"]
    if graph:
        rows += graph_rows(clip, image, graph, args.repeats, args.device)
    if "cass" in args.graph_methods.split(","):
        if args.reference_cass and not args.reference_pydeps:
            ap.error("--reference-cass needs --reference-pydeps (SciPy and scikit-learn for the reference)")
        rows += cass_rows(clip, model, image, args.repeats, args.device, args.reference_cass, args.reference_pydeps)

    env = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "repeats": args.repeats}
    lines = [("| what | seconds (median) | seconds (min) | ratio to first of pair | peak MB above baseline | "
              "peak MB ratio |"), "|---|---|---|---|---|---|"]
    fmt = (lambda v, f: "-" if v is None else format(v, f))
    lines += [f"| {r['what']} | {r['seconds']:.3f} | {fmt(r.get('seconds_min'), '.3f')} | {fmt(r.get('ratio'), '.2f')}{'' if r.get('ratio') is None else 'x'} "
              f"| {fmt(r.get('peak_mb'), '.0f')} | {fmt(r.get('peak_ratio'), '.2f')}{'' if r.get('peak_ratio') is None else 'x'} |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    refs = "".join(f" --reference-{n} <{REFERENCES[n]} checkout>" for n, p in ref_paths.items() if p)
    refs += f" --deep-methods {shlex.quote(args.deep_methods)}" if args.deep_methods != "resclip,scclip,cliptrase" else ""
    refs += " --reference-resclip <yvhangyang/ResCLIP checkout>" if args.reference_resclip else ""
    refs += f" --graph-methods {shlex.quote(args.graph_methods)}" if args.graph_methods != "proxyclip,lposs,lposs+,cass" else ""
    refs += (" --reference-cass <MICV-yonsei/CASS checkout> --reference-pydeps <scipy+sklearn folder>"
             if args.reference_cass else "")
    refs += f" --methods {shlex.quote(args.methods)}" if args.methods != "dense-clip,maskclip" else ""
    refs += " --no-text" if args.no_text else ""
    refs += f" --threads {args.threads}" if args.threads else ""
    refs += f" --out-name {args.out_name}" if args.out_name != "inference" else ""
    header = (f"# Inference speed (ViT-B/16-sized random weights)\n\nCommand: `python benchmarks/bench_inference.py"
              f" --repeats {args.repeats} --device {args.device}{refs}`\n\n"
              f"Environment: {json.dumps(env)}\n\n")
    (args.out / f"{args.out_name}.md").write_text(header + table + "\n")
    (args.out / f"{args.out_name}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
