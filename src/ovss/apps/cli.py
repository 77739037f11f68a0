"""The `ovss` command: segment | methods | backbones | download."""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_USER_ERROR = 2


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["protocol.crop=0", "attention=qq+kk"] -> {"protocol.crop": 0, "attention": "qq+kk"}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _stems(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    return [p.name.replace(".", "_") if p.stem in dup else p.stem for p in paths]


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..core.segmenter import Segmenter
    from ..data.io import list_images
    from ..text.bank import parse_classes, read_class_file

    spec = None
    if args.classes or args.classes_file:
        classes: Any = read_class_file(args.classes_file) if args.classes_file else args.classes
        spec = parse_classes(classes, background=args.background or None)
    else:  # the preset's class file, if it has one
        from ..methods import get_method

        preset = get_method(args.method).presets.get(args.preset) if args.preset else None
        if preset is None or not preset.classes:
            raise ValueError("give the classes: --classes \"cat, sofa, wooden floor\" or --classes-file FILE "
                             "(or a --preset that has a class file)")
    paths: list[Path] = []
    for item in args.inputs:
        paths.extend(list_images(item))
    out = Path(args.out)
    stems = _stems(paths)
    todo = [(p, s) for p, s in zip(paths, stems) if args.overwrite or not (out / f"{s}.json").exists()]
    skipped = len(paths) - len(todo)
    if not todo:
        print(f"all {len(paths)} image(s) already done in {out} (use --overwrite to redo)")
        return 0
    seg = Segmenter(args.method, backbone=args.backbone, weights=args.weights, preset=args.preset,
                    device=args.device, overrides=parse_overrides(args.set), tokenizer=args.tokenizer,
                    cache_dir=args.cache_dir)
    if spec is None:
        spec = seg.preset_class_spec()
        if args.background:
            spec = parse_classes(spec, background=True)
    formats = tuple(args.save.split(","))
    bar = tqdm(todo, desc="segment", unit="img", disable=args.quiet or len(todo) < 2)
    for path, stem in bar:
        bar.set_postfix_str(path.name)
        result = seg(path, spec)
        result.settings["image"] = str(path)
        result.save(out, stem, formats)
    print(f"wrote {len(todo)} image(s) to {out}" + (f", skipped {skipped} already done" if skipped else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import create_dataset, ensure_synthetic
    from ..methods import list_methods

    if args.dataset == "synthetic-scenes" and not Path(args.root, "classes.txt").exists():
        print(f"writing the synthetic validation split to {args.root}")
        ensure_synthetic(args.root, n=args.synthetic_n, progress=not args.quiet)
    dataset = create_dataset(args.dataset, args.root)
    methods = list_methods() if args.method == "all" else [m.strip() for m in args.method.split(",")]
    base = Path(args.out) if args.out else Path("results") / dataset.name
    rows, skipped = [], []
    for name in methods:
        out = base / name if len(methods) > 1 or not args.out else base
        try:
            results = _eval_one(args, name, dataset, out)
        except (ValueError, FileNotFoundError) as e:
            if args.method != "all":
                raise
            # e.g. a method that needs middle layers a small backbone lacks, or a second model's weights
            skipped.append((name, str(e).split("\n")[0]))
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        if results is not None:
            rows.append((name, results))
    if len(rows) > 1:
        from ..eval.runner import summary_table

        table = summary_table(rows, skipped)
        (base / "summary.md").write_text(table)
        print(table)
        print(f"summary written to {base / 'summary.md'}")
    return 0


def _eval_one(args: argparse.Namespace, method_name: str, dataset, out: Path):
    from ..core.segmenter import Segmenter
    from ..eval.runner import evaluate, markdown_table
    from ..methods import get_method

    method = get_method(method_name)
    preset = args.preset
    if preset is None and dataset.name in method.presets:
        preset = dataset.name  # the method's published settings for this benchmark
        print(f"using {method.name}'s preset {preset!r} (pass --preset none to run without it)")
    if preset == "none" or (preset is not None and preset not in method.presets and args.method == "all"):
        preset = None
    overrides = {**getattr(dataset, "default_overrides", {}), **parse_overrides(args.set)}
    seg = Segmenter(method, backbone=args.backbone, weights=args.weights, preset=preset, device=args.device,
                    overrides=overrides, tokenizer=args.tokenizer, cache_dir=args.cache_dir)
    classes, background = None, bool(getattr(dataset, "background", False))
    if args.classes_file:
        classes = Path(args.classes_file)
    elif seg.preset_class_spec() is not None:
        classes = seg.preset_class_spec()
        background = classes.background
    protocol = args.protocol or (method.presets[preset].eval_protocol if preset is not None else "mmseg")
    if protocol != "mmseg":
        print(f"evaluation protocol: {protocol}" + ("" if args.protocol else f" (preset {preset!r}; --protocol mmseg "
                                                                            "for the standard one)"))
    results = evaluate(seg, dataset, out, classes=classes, background=background or args.background,
                       limit=args.limit, save_predictions=args.save_predictions, progress=not args.quiet,
                       protocol=protocol, size=args.protocol_size)
    if results is not None:
        print(markdown_table(results))
        print(f"results written to {out}/results.json and results.md")
    return results


def _no_match(kind: str, pattern: str, valid: list[str]) -> int:
    import difflib

    close = difflib.get_close_matches(pattern, valid, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    print(f"no {kind} matches {pattern!r}.{hint} Known: {', '.join(valid)}", file=sys.stderr)
    return 2


def _table(rows: list[tuple[str, ...]]) -> None:
    """Rows in aligned columns (the last column runs free)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip())


def cmd_methods(args: argparse.Namespace) -> int:
    from ..core.registry import METHODS
    from ..methods import get_method

    names = METHODS.list(args.pattern)
    if not names:
        return _no_match("method", args.pattern, METHODS.list())
    if args.json:
        print(json.dumps({n: _method_dict(get_method(n)) for n in names}, indent=2))
        return 0
    if args.pattern == "*" and not args.verbose:  # one line per method; details with a name or -v
        _table([("method", "presets", "summary")] + [
            (n, str(len(get_method(n).presets)), get_method(n).summary) for n in names])
        print("\n`ovss methods NAME` (or --verbose) shows a method's recipe, presets and the source of every "
              "setting.")
        return 0
    for n in names:
        m = get_method(n)
        print(f"{n}: {m.summary}")
        print(f"  defined in: {METHODS.module_of(n)}")
        if m.paper:
            print(f"  paper: {m.paper}")
        if m.code:
            print(f"  code:  {m.code}")
        r = m.recipe
        print(f"  recipe: attention={r.attention.describe()} surgery[{r.surgery}] templates={r.templates}")
        p = r.protocol
        win = "whole image" if p.crop == 0 else f"windows {p.crop}/{p.stride}"
        print(f"          short side {p.short_side}, {win}, logit scale {r.decision.logit_scale}, "
              f"prob_thd {r.decision.prob_thd}, area_thd {r.decision.area_thd}")
        if r.plugins or r.refiners:
            print(f"          plug-ins {[repr(x) for x in r.plugins]}, refiners {[repr(x) for x in r.refiners]}")
        if getattr(r, "tta", ()):
            print(f"          test-time adaptation {[repr(x) for x in r.tta]}")
        for pname, preset in m.presets.items():
            print(f"  preset {pname}:")
            for k, v in preset.overrides.items():
                src = preset.sources.get(k, "")
                print(f"    {k} = {v!r}" + (f"    [{src}]" if src else ""))
            if preset.classes:
                print(f"    classes: {preset.classes}" + (f"    [{preset.sources['classes']}]"
                                                            if preset.sources.get("classes") else ""))
            if preset.eval_protocol != "mmseg":
                print(f"    evaluation protocol: {preset.eval_protocol} (ovss eval uses it with this preset)")
            if preset.note:
                print(f"    note: {preset.note}")
    return 0


def _method_dict(m) -> dict[str, Any]:
    return {
        "summary": m.summary, "paper": m.paper, "code": m.code, "recipe": m.recipe.to_dict(),
        "presets": {k: {"overrides": dict(p.overrides), "sources": dict(p.sources), "classes": p.classes,
                        "background": p.background, "eval_protocol": p.eval_protocol, "note": p.note}
                    for k, p in m.presets.items()},
    }


def cmd_backbones(args: argparse.Namespace) -> int:
    from ..backbones.zoo import FAMILIES, entries

    family = args.family
    if family is None and args.pattern in FAMILIES:  # `ovss backbones dino`: a family by name
        family, args.pattern = args.pattern, "*"
    rows = [e for e in entries(family) if fnmatch.fnmatch(e.name, args.pattern)]
    if not rows:
        return _no_match("backbone", args.pattern, [e.name for e in entries(family)])
    _table([("name", "family", "architecture", "weights", "description")]
           + [(e.name, e.family, e.arch, e.source, e.description) for e in rows])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..backbones.hub import download

    for name in args.names:
        path = download(name, cache_dir=args.cache_dir)
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__

    p = argparse.ArgumentParser(prog="ovss", description="Training-free open-vocabulary semantic segmentation.")
    p.add_argument("--version", action="version", version=f"ovss {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment images into free-text classes")
    s.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    s.add_argument("--classes", help='classes separated by commas, synonyms by "|": "cat, sofa|couch"')
    s.add_argument("--classes-file", help="class file: one class per line, synonyms after commas")
    s.add_argument("--background", action="store_true",
                   help="class 0 is background: it receives pixels under the probability threshold")
    s.add_argument("--method", default="maskclip", help="method name (see `ovss methods`)")
    s.add_argument("--backbone", default="clip-vit-b16", help="backbone name, file, folder or hf-hub:org/repo")
    s.add_argument("--weights", help="read the backbone's weights from this file or folder")
    s.add_argument("--tokenizer", help="tokenizer vocabulary file or folder, if not beside the weights")
    s.add_argument("--preset", help="a method preset, e.g. a benchmark name")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. --set attention=kk+gaussian:5 --set surgery.residual=False")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--save", default="index,overlay,json", help="comma-separated: index, overlay, json")
    s.add_argument("--device", default="auto")
    s.add_argument("--cache-dir", help="weights cache (default: the Hugging Face hub cache)")
    s.add_argument("--overwrite", action="store_true", help="redo images already done")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("eval", help="evaluate a method on a benchmark (mmseg-equal mIoU; resumable)")
    e.add_argument("--dataset", required=True, help="benchmark name (voc21, ..., folder, synthetic-scenes)")
    e.add_argument("--root", required=True, help="the dataset's folder in its standard prepared layout "
                   "(synthetic-scenes: written there if missing)")
    e.add_argument("--method", default="maskclip", help="a method, a comma-separated list, or 'all'")
    e.add_argument("--preset", help="method preset; default: the one named after the dataset, if any; 'none' for none")
    e.add_argument("--backbone", default="clip-vit-b16")
    e.add_argument("--weights")
    e.add_argument("--tokenizer")
    e.add_argument("--classes-file", help="text-side class file (default: the preset's, else the dataset's names)")
    e.add_argument("--background", action="store_true", help="class 0 is background")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--limit", type=int, help="evaluate only the first N images")
    e.add_argument("--protocol", choices=["mmseg", "cliptrase", "mlmp"],
                   help="mmseg (full-size labels, mmseg IoUMetric), cliptrase (CLIPtrase's own: center crop, "
                   "255 as background, mIoU over the classes in the ground truth) or mlmp (labels resized to the "
                   "recipe's protocol.squash size); default: the preset's, else mmseg")
    e.add_argument("--protocol-size", type=int, metavar="PX",
                   help="the cliptrase protocol's resize + center-crop size (default: the recipe's short side)")
    e.add_argument("--out", help="results folder (default: results/DATASET[/METHOD])")
    e.add_argument("--synthetic-n", type=int, default=200, help="images to write for a missing synthetic split")
    e.add_argument("--save-predictions", action="store_true")
    e.add_argument("--device", default="auto")
    e.add_argument("--cache-dir")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("methods", help="list methods with their recipes, presets and sources")
    m.add_argument("pattern", nargs="?", default="*")
    m.add_argument("--json", action="store_true")
    m.add_argument("-v", "--verbose", action="store_true", help="every method's recipe and presets")
    m.set_defaults(func=cmd_methods)

    b = sub.add_parser("backbones", help="list named backbones of every family (CLIP, DINO) and where "
                       "their weights live")
    b.add_argument("pattern", nargs="?", default="*", help="a name pattern (clip-*, *b16) or a family name")
    b.add_argument("--family", choices=["clip", "dino"], default=None)
    b.set_defaults(func=cmd_backbones)

    from ..data.prepare import add_prepare_parser

    add_prepare_parser(sub)
    from .demo import add_demo_parser
    from .serve import add_serve_parser

    add_demo_parser(sub)
    add_serve_parser(sub)

    d = sub.add_parser("download", help="fetch a backbone's weights ahead, for offline use (CLIP or DINO names)")
    d.add_argument("names", nargs="+")
    d.add_argument("--cache-dir")
    d.set_defaults(func=cmd_download)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and skipped on the next run", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"ovss {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
