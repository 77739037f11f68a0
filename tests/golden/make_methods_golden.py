"""Make the SCLIP / ClearCLIP / NACLIP method goldens from the reference segmentors (run by hand).

    python tests/golden/make_methods_golden.py --sclip /path/to/wangf3014/SCLIP \
        --clearclip /path/to/mc-lan/ClearCLIP --naclip /path/to/sinahmr/NACLIP [--full]

The reference checkouts stay outside this repository; nothing of theirs is committed. Each
reference's segmentor module (`clip_segmentor.py`, `clearclip_segmentor.py`, `naclip.py`) is
imported with stand-ins for what it imports but never uses here (mmseg's BaseSegmentor becomes
`torch.nn.Module`, the registry decorator the identity, SegDataPreProcessor a no-op, PixelData a
holder; torchvision, open_clip's factory, BLIP and gem empty modules), and its segmentor object is
made with `__new__` and given the attributes its `__init__` would set: the reference's own CLIP
model class (SCLIP/NACLIP `clip/model.py`, ClearCLIP's vendored `open_clip/model.py`) loaded in
float32 with the weights of `clip_small.safetensors`, and seeded random unit query embeddings in
place of the text encoder (the text side is covered by the CLIP goldens). The class-to-query map
comes from the reference's own `get_cls_idx` on a small class file with synonyms.

The network input is a seeded uint8 image at the network resolution, normalised with CLIP's
mean/std as the reference's SegDataPreProcessor does; `ori_shape` (the "original" image size the
logits are resized to) differs from it, so the final resize is exercised. Runs:

    sclip           predict(): forward_slide 224/112 + postprocess (logit_scale 65, prob_thd 0.1,
                    area_thd 0.1: the voc21 config)
    clearclip       forward_slide 224/224 (its Cityscapes windows; 171 px high crops are padded
                    2 top / 3 bottom) + postprocess (logit_scale 50, prob_thd 0.15: context60); its
                    predict() is not used because it casts the input to half precision
    naclip_slide    predict(): forward_slide 224/112, resize, PAMR(10, (8, 16)), postprocess
                    (logit_scale 40, prob_thd 0.1: the v1 voc21 config)
    naclip_nopamr   the same without PAMR (logits only)
    naclip_whole    predict() with slide_crop=0 (the v2 voc21 config), PAMR on

Stored (tests/golden/methods_small.safetensors): `image` (H, W, 3) uint8, `ori_shape`, `queries`
(Q, 64), `query_to_class`, and per run `<run>.logits` = the logits the reference hands to
postprocess_result (original size, after PAMR where on) at every 5th row and column, and
`<run>.labels` (full original size, uint8). `--full` instead runs ViT-B/16-sized random weights
(in memory) through the references and ovss at VOC-like sizes and prints the max differences.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_clip_golden import load_module, perturb_, stub_torchvision, to_ovss

MEAN = (122.771, 116.746, 104.094)
STD = (68.501, 66.632, 70.323)
# a class file for the references' get_cls_idx: 6 classes, 16 queries (class 0 with 8 synonyms)
CLASS_LINES = ["bg a, bg b, bg c, bg d, bg e, bg f, bg g, bg h", "c1", "c2, c2 b", "c3", "c4",
               "c5, c5 b, c5 c"]
STEP = 5  # logits are stored at every STEP-th row and column


# ---- stand-ins for the modules the segmentors import ------------------------------------------
class _PixelData:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Sample:
    """What mmseg's SegDataSample offers the segmentors: metainfo and set_data."""

    def __init__(self, ori_shape):
        self.metainfo = {"ori_shape": tuple(ori_shape), "img_path": "golden.png"}

    def set_data(self, d):
        self.__dict__.update(d)


class _BaseSegmentor(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def stub_frameworks() -> None:
    stub_torchvision()
    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    _module("mmseg")
    _module("mmseg.models")
    _module("mmseg.models.segmentors", BaseSegmentor=_BaseSegmentor)
    _module("mmseg.models.data_preprocessor", SegDataPreProcessor=lambda *a, **k: None)
    _module("mmseg.registry", MODELS=registry)
    _module("mmengine")
    _module("mmengine.structures", PixelData=_PixelData)
    # ClearCLIP's segmentor module imports these at the top; nothing of them is used here.
    _module("open_clip", tokenizer=types.SimpleNamespace(tokenize=None), create_model=None)
    _module("BLIP")
    _module("BLIP.models")
    _module("BLIP.models.blip_retrieval", blip_retrieval=None)
    _module("gem")


def load_segmentor_module(root: Path, filename: str, name: str, pamr: bool = True):
    """Import a reference segmentor module with its own top-level helpers (prompts, pamr)."""
    _module("clip")  # SCLIP/NACLIP's `import clip` (clip.load / tokenize are not called)
    prompts = _module("prompts")
    prompts.__path__ = [str(root / "prompts")]
    load_module("prompts.imagenet_template", root / "prompts/imagenet_template.py")
    if pamr:
        load_module("pamr", root / "pamr.py")
    return load_module(name, root / filename)


def load_clearclip_open_clip(root: Path):
    """ClearCLIP's vendored open_clip model.py (and what it imports), as package `cc_open_clip`."""
    pkg = types.ModuleType("cc_open_clip")
    pkg.__path__ = [str(root / "open_clip")]
    sys.modules["cc_open_clip"] = pkg
    # hf_model / timm_model import transformers / timm inside try-except; keep them out (an
    # installed transformers trips over the torchvision stand-in)
    saved = {k: sys.modules.get(k) for k in ("transformers", "timm")}
    sys.modules.update({"transformers": None, "timm": None})
    for sub in ("utils", "pos_embed", "transformer", "hf_configs", "hf_model", "modified_resnet",
                "timm_model", "model"):
        mod = load_module(f"cc_open_clip.{sub}", root / f"open_clip/{sub}.py", "cc_open_clip")
        sys.modules.setdefault(f"open_clip.{sub}", mod)  # modified_resnet.py imports open_clip.utils
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    return mod


# ---- the reference models -----------------------------------------------------------------
def dims_of(sd: dict) -> dict:
    """Architecture of an OpenAI-layout state dict (as the references' build_model reads it)."""
    vis_layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tw = sd["ln_final.weight"].shape[0]
    return {"embed": sd["text_projection"].shape[1], "res": patch * grid, "vl": vis_layers,
            "vw": sd["visual.conv1.weight"].shape[0], "patch": patch,
            "ctx": sd["positional_embedding"].shape[0], "vocab": sd["token_embedding.weight"].shape[0],
            "tw": tw, "th": max(tw // 64, 1),
            "tl": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")})}


def openai_style_clip(model_mod, sd: dict):
    """SCLIP / NACLIP `clip/model.py` CLIP in float32 (their build_model would cast to fp16)."""
    d = dims_of(sd)
    order = ("embed", "res", "vl", "vw", "patch", "ctx", "vocab", "tw", "th", "tl")  # CLIP.__init__'s
    m = model_mod.CLIP(*(d[k] for k in order))
    m.load_state_dict(sd)
    return m.eval()


def clearclip_clip(cc_model, sd: dict):
    """ClearCLIP's open_clip CLIP as build_model_from_openai_state_dict makes it, minus its fp16
    conversion (precision='fp16' in the reference; float32 here)."""
    d = dims_of(sd)
    vision = cc_model.CLIPVisionCfg(layers=d["vl"], width=d["vw"], patch_size=d["patch"], image_size=d["res"])
    text = cc_model.CLIPTextCfg(context_length=d["ctx"], vocab_size=d["vocab"], width=d["tw"], heads=d["th"],
                                layers=d["tl"])
    m = cc_model.CLIP(d["embed"], vision_cfg=vision, text_cfg=text, quick_gelu=True, cast_dtype=None)
    m.load_state_dict(sd)
    return m.eval()


def make_segmentor(mod, cls_name: str, net, class_file: Path, queries: torch.Tensor, **attrs):
    """The reference segmentor without its __init__ (no clip.load, no text encoder): the
    attributes its __init__ sets, with `queries` as its query_features."""
    cls = getattr(mod, cls_name)
    seg = cls.__new__(cls)
    torch.nn.Module.__init__(seg)
    seg.net = net
    words, idx = mod.get_cls_idx(str(class_file))
    seg.num_queries = len(words)
    seg.num_classes = max(idx) + 1
    seg.query_idx = torch.tensor(idx, dtype=torch.int64)
    seg.query_features = queries
    seg.dtype = queries.dtype
    seg.align_corners = False
    for k, v in attrs.items():
        setattr(seg, k, v)
    return seg, idx


def capture_postprocess(seg) -> dict:
    """Record the logits the segmentor hands to its postprocess_result."""
    box = {}
    original = seg.postprocess_result

    def wrapped(seg_logits, data_samples):
        box["logits"] = seg_logits.clone()
        return original(seg_logits, data_samples)

    seg.postprocess_result = wrapped
    return box


def blocky_image(gen: torch.Generator, h: int, w: int) -> torch.Tensor:
    """(h, w, 3) uint8: flat coloured 16 px blocks plus noise (edges for PAMR's affinities)."""
    blocks = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=gen) * 255
    img = F.interpolate(blocks, scale_factor=16, mode="nearest")[..., :h, :w]
    img = img + 12 * torch.randn(1, 3, h, w, generator=gen)
    return img.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()


def normalise(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W): (x - mean) / std, as SegDataPreProcessor (and ovss) do."""
    x = image.permute(2, 0, 1)[None].float()
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ---- runs -----------------------------------------------------------------------------------
# run -> (reference, reference settings, ovss method, ovss preset, ovss overrides)
def runs(full: bool) -> dict:
    clear_crop = 448 if full else 224  # full: ClearCLIP's default 448/224; small: its Cityscapes 224/224
    naclip = {"slide_crop": 224, "slide_stride": 112, "logit_scale": 40, "prob_thd": 0.1, "pamr": True}
    return {
        "sclip": ("sclip", {"slide_crop": 224, "slide_stride": 112, "logit_scale": 65, "prob_thd": 0.1,
                            "area_thd": 0.1}, "sclip", "voc21", {}),
        "clearclip": ("clearclip", {"slide_crop": clear_crop, "slide_stride": 224, "logit_scale": 50,
                                    "prob_thd": 0.15},
                      "clearclip", "context60", {"protocol.crop": clear_crop}),
        "naclip_slide": ("naclip", naclip, "naclip", "voc21-v1", {}),
        "naclip_nopamr": ("naclip", {**naclip, "pamr": False}, "naclip", "voc21-v1", {"refiners": ""}),
        "naclip_whole": ("naclip", {**naclip, "slide_crop": 0}, "naclip", "voc21", {}),
    }


def load_reference(which: str, root: Path):
    """Import one reference: (its segmentor module, a function state dict -> its float32 CLIP).
    Call `stub_frameworks()` first."""
    if which == "clearclip":
        mod = load_segmentor_module(root, "clearclip_segmentor.py", "ref_clearclip_segmentor", pamr=False)
        cc_model = load_clearclip_open_clip(root)
        return mod, (lambda sd: clearclip_clip(cc_model, sd))
    filename = {"sclip": "clip_segmentor.py", "naclip": "naclip.py"}[which]
    mod = load_segmentor_module(root, filename, f"ref_{which}_segmentor")
    model_mod = load_module(f"ref_{which}_model", root / "clip/model.py")

    def build(sd):
        net = openai_style_clip(model_mod, sd)
        if which == "naclip":
            net.visual.set_params("reduced", "naclip", 5.0)  # naclip.py:44 with its defaults
        return net

    build.model_mod = model_mod
    return mod, build


def reference_segmentor(mod, which: str, net, class_file, queries, settings: dict):
    """The reference segmentor object with `settings` (slide_crop, slide_stride, logit_scale,
    prob_thd, area_thd, pamr) and `queries` as its text side."""
    s = dict(settings)
    pamr = s.pop("pamr", False)
    if which == "sclip":
        seg, _ = make_segmentor(mod, "CLIPForSegmentation", net, class_file, queries, pamr=None, **s)
    elif which == "naclip":
        seg, _ = make_segmentor(mod, "NACLIP", net, class_file, queries,
                                pamr=mod.PAMR(10, dilations=(8, 16)) if pamr else None, **s)
    else:
        seg, _ = make_segmentor(mod, "ClearCLIPSegmentation", net, class_file, queries, clip_type="CLIP",
                                vit_type="ViT-B/16", model_type="ClearCLIP", ignore_residual=True,
                                patch_size=net.visual.patch_size, **s)
    return seg


@torch.no_grad()
def reference_predict(seg, which: str, x: torch.Tensor, ori):
    """The reference's inference on a normalised input: (its label map (H, W), data samples)."""
    samples = [_Sample(ori)]
    if which == "clearclip":  # predict() minus its inputs.half()
        logits = seg.forward_slide(x, [samples[0].metainfo], seg.slide_stride, seg.slide_crop)
        seg.postprocess_result(logits, samples)
    else:
        seg.predict(x, samples)
    return samples[0].pred_sem_seg.data[0], samples


def reference_run(refs: dict, which: str, settings: dict, x: torch.Tensor, ori, class_file, queries):
    mod, net = refs[which]
    seg = reference_segmentor(mod, which, net, class_file, queries, settings)
    box = capture_postprocess(seg)
    labels, _ = reference_predict(seg, which, x, ori)
    return box["logits"][0], labels


def ovss_run(clip, method, preset, overrides, image, queries, q2c, ori):
    """The same run through ovss's Segmenter, the queries injected in place of the text bank."""
    from ovss.core.resize import upsample
    from ovss.core.segmenter import Segmenter
    from ovss.text.bank import ClassSpec

    vocab = HERE / "tokenizer" / "small_vocab.txt.gz"
    seg = Segmenter(method, clip=clip, preset=preset, device="cpu", tokenizer=vocab,
                    overrides={"protocol.short_side": None, **overrides})
    seg_queries = queries
    groups = [[f"q{q}" for q, c in enumerate(q2c) if c == k] for k in range(max(q2c) + 1)]
    spec = ClassSpec(tuple(tuple(g) for g in groups), background=True)
    with torch.no_grad():
        state = seg.preprocess(image.numpy(), size=tuple(ori))
        low = seg.stitched_logits(state, seg_queries)
        logits = seg.refine(upsample(low, tuple(ori)), state)
        labels = seg.decide(low, state, spec).labels
    return logits, torch.from_numpy(labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sclip", type=Path, required=True)
    ap.add_argument("--clearclip", type=Path, required=True)
    ap.add_argument("--naclip", type=Path, required=True)
    ap.add_argument("--full", action="store_true", help="ViT-B/16-sized check, prints only")
    args = ap.parse_args()

    stub_frameworks()
    loaded = {k: load_reference(k, getattr(args, k)) for k in ("sclip", "naclip", "clearclip")}

    if args.full:  # ViT-B/16 image tower (text tower small: the text side is not used)
        torch.manual_seed(0)
        base = loaded["sclip"][1].model_mod.CLIP(512, 224, 12, 768, 16, 77, 500, 64, 1, 1).eval()
        perturb_(base, 1)
        sd = {k: v.clone() for k, v in base.state_dict().items()}
        del base
    else:
        from safetensors.torch import load_file

        sd = load_file(str(HERE / "clip_small.safetensors"))
    refs = {k: (mod, build(sd)) for k, (mod, build) in loaded.items()}

    import tempfile

    tmp = Path(tempfile.mkdtemp())
    class_file = tmp / "cls_golden.txt"
    class_file.write_text("\n".join(CLASS_LINES))  # no trailing newline, like the repos' files
    q2cs = {k: mod.get_cls_idx(str(class_file))[1] for k, (mod, _) in refs.items()}
    assert q2cs["sclip"] == q2cs["naclip"] == q2cs["clearclip"], q2cs
    q2c = q2cs["sclip"]

    gen = torch.Generator().manual_seed(7)
    embed = sd["text_projection"].shape[1]
    # unit queries around a shared direction: flat enough softmaxes for the thresholds to bite
    base = torch.randn(1, embed, generator=gen)
    queries = F.normalize(base + 0.25 * torch.randn(len(q2c), embed, generator=gen), dim=-1)
    # small: 171 x 230 network input (crops of 171 rows: pos-embed resized, remainder or padding),
    # original size 200 x 270 (upsampled). full: VOC's 500x375 after the configs' resize.
    if args.full:
        shapes = {"sclip": (336, 448), "naclip": (336, 448), "clearclip": (448, 597)}
        ori = (375, 500)
    else:
        shapes = {k: (171, 230) for k in ("sclip", "naclip", "clearclip")}
        ori = (200, 270)
    by_shape = {hw: blocky_image(gen, *hw) for hw in sorted(set(shapes.values()))}
    images = {k: by_shape[hw] for k, hw in shapes.items()}

    out: dict[str, torch.Tensor] = {}
    for run, (which, settings, *_rest) in runs(args.full).items():
        x = normalise(images[which])
        logits, labels = reference_run(refs, which, settings, x, ori, class_file, queries)
        out[f"{run}.logits"], out[f"{run}.labels"] = logits, labels
        counts = torch.bincount(labels.flatten(), minlength=len(CLASS_LINES)).tolist()
        print(f"{run}: logits {tuple(logits.shape)} labels per class {counts}")

    if args.full:
        from ovss.backbones.clip import CLIP
        from ovss.backbones.configs import infer_clip_config
        from ovss.backbones.factory import LoadedClip

        state = to_ovss(sd)
        model = CLIP(infer_clip_config(state)).eval()
        model.load_state_dict(state)
        clip = LoadedClip(model=model, tokenizer_dir=None, pretrained=None, weights_id="methods-golden-full")
        for run, (which, _s, method, preset, overrides) in runs(True).items():
            logits, labels = ovss_run(clip, method, preset, overrides, images[which], queries, q2c, ori)
            diff = (logits - out[f"{run}.logits"]).abs().max().item()
            same = (labels == out[f"{run}.labels"]).float().mean().item()
            print(f"ViT-B/16 {run}: max |logit diff| {diff:.3g}, labels equal on {100 * same:.4f}% of pixels")
        return

    from safetensors.torch import save_file

    tensors = {
        "image": images["sclip"],  # one image for all runs in the small golden
        "ori_shape": torch.tensor(ori),
        "queries": queries,
        "query_to_class": torch.tensor(q2c),
    }
    for run in runs(False):
        tensors[f"{run}.logits"] = out[f"{run}.logits"][:, ::STEP, ::STEP].contiguous()
        if run != "naclip_nopamr":
            tensors[f"{run}.labels"] = out[f"{run}.labels"].to(torch.uint8)
    path = HERE / "methods_small.safetensors"
    save_file(tensors, str(path), metadata={"logits_step": str(STEP), "class_lines": "\n".join(CLASS_LINES)})
    print("wrote", path, f"({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
