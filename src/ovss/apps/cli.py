"""The `ovss` command: segment | methods | backbones | download."""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

EXIT_SOME_FAILED = 1  # `ovss segment`: some images could not be segmented (listed in --out/failures.json)
EXIT_USER_ERROR = 2  # bad arguments or setup: nothing (more) was done


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


# ------------------------------------------------------------------------------------ output folder


def check_out_dir(out: Path, flag: str = "--out") -> Path:
    """Create `out` if needed and prove it writable, before any work: a read-only folder or a path
    through a file is a clear error now, not a traceback after the model has loaded."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{flag} {out}: a part of that path is a file, not a folder") from None
    except OSError as e:
        raise ValueError(f"{flag} {out}: cannot create the folder ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".ovss-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {out} is not writable ({e.strerror or e})") from None
    return out


# ------------------------------------------------------------------------------------ segment naming

NAMING_RULE = """\
output names:
  IMAGE.png (class indices), IMAGE_overlay.png and IMAGE.json, where IMAGE is the input's file
  name without its extension. Inputs from more than one folder keep their folders, relative to the
  deepest folder they share, as sub-folders of --out: `ovss segment dirA dirB` writes dirA/img.*
  and dirB/img.*. Inputs of one folder whose outputs would clash (a.png and a.jpg; or a.jpg and
  a_overlay.jpg, whose index PNG would be a's overlay) keep their extension in the name instead:
  a.png.png, a.png_overlay.png, a.png.json, a.jpg.png, ...; names that differ only in case get -2,
  -3 in sorted order. No input's results ever overwrite another's.

re-runs:
  An image is skipped when its JSON records the same settings (method, preset, backbone,
  weights, tokenizer, --set, classes, --background) and the same input file (path, size,
  modification time); otherwise it is redone, and the run says why.

failures:
  An image that cannot be read or segmented (corrupt, truncated, unsupported format, over
  --max-pixels) is reported and skipped; the others go on. The failures, with reasons, are
  listed in --out/failures.json, the exit status is 1, and a re-run retries them.
"""


def output_names(paths: Sequence[Path]) -> list[str]:
    """A unique output name (posix path under --out, no extension) per input image; see NAMING_RULE.

    Deterministic for a given set of inputs, so a re-run finds its earlier results."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if not absolute:
        return []
    parents = [str(a.parent) for a in absolute]
    common = os.path.commonpath(parents)
    folders = [Path(os.path.relpath(p, common)).as_posix() for p in parents]
    names = [a.stem for a in absolute]
    while clash := {i for i in _clashes(folders, names) if names[i] != absolute[i].name}:
        for i in clash:  # the stem clashes: the full file name (unique in its folder, but for case)
            names[i] = absolute[i].name
    clash = _clashes(folders, names)
    if clash:  # full names that differ only in case: the first keeps its name, the others get -2, -3
        taken = {key for i in range(len(names)) if i not in clash for key in _files_of(folders[i], names[i])}
        for i in sorted(clash, key=lambda i: (folders[i], absolute[i].name)):
            name, k = absolute[i].name, 1
            while taken & _files_of(folders[i], name):
                k += 1
                name = f"{absolute[i].name}-{k}"
            names[i] = name
            taken |= _files_of(folders[i], name)
    return [n if f == "." else f"{f}/{n}" for f, n in zip(folders, names)]


def _files_of(folder: str, name: str) -> set[tuple[str, str]]:
    """The output files of one name, as case-folded keys (a case-insensitive disk would merge them)."""
    return {(folder.lower(), (name + suffix).lower()) for suffix in (".png", "_overlay.png", ".json")}


def _clashes(folders: list[str], names: list[str]) -> set[int]:
    """Inputs whose output files (NAME.png, NAME_overlay.png, NAME.json) coincide with another's."""
    owner: dict[tuple[str, str], int] = {}
    clash: set[int] = set()
    for i, (f, n) in enumerate(zip(folders, names)):
        for key in _files_of(f, n):
            if key in owner and owner[key] != i:
                clash.update((i, owner[key]))
            owner.setdefault(key, i)
    return clash


# ------------------------------------------------------------------------------------ segment resume


def _source(path: Path) -> dict[str, Any]:
    """What identifies an input image's content cheaply: its path, size and modification time."""
    st = path.stat()
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _why_redo(json_path: Path, files: list[Path], run: dict[str, Any], source: dict[str, Any]) -> str | None:
    """None when `json_path` records this run's settings and this very input (and every file asked
    for is there): the image is done. Otherwise why it is (re)done; "" for a new image."""
    if not json_path.exists():
        return ""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its JSON sidecar is unreadable"
    old = meta.get("run") if isinstance(meta, dict) else None
    if not isinstance(old, dict):
        return "made by an earlier ovss that did not record its settings"
    if old != run:
        changed = [k for k in sorted(set(old) | set(run)) if old.get(k) != run.get(k)]
        return "made with other settings: " + ", ".join(
            f"{k} {_short(old.get(k))} -> {_short(run.get(k))}" for k in changed)
    if meta.get("source", {}).get("path") != source["path"]:
        return f"made from another file ({meta.get('source', {}).get('path')})"
    if meta.get("source") != source:
        return "the image file changed since"
    missing = [f.name for f in files if not f.exists()]
    if missing:
        return f"{', '.join(missing)} missing"
    return None


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _output_files(out: Path, name: str, formats: Sequence[str]) -> list[Path]:
    files = {"index": out / f"{name}.png", "overlay": out / f"{name}_overlay.png"}
    return [files[f] for f in formats if f in files] + [out / f"{name}.json"]


FAILURES_FILE = "failures.json"


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.io import ImageError, list_images, read_image, write_json
    from ..text.bank import parse_classes, read_class_file

    out = check_out_dir(Path(args.out))
    formats = tuple(f.strip() for f in args.save.split(",") if f.strip())
    unknown = sorted(set(formats) - {"index", "overlay", "json"})
    if unknown:
        raise ValueError(f"--save takes index, overlay and json; unknown: {', '.join(unknown)}")
    overrides = parse_overrides(args.set)
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
    paths = list({os.path.abspath(p): p for p in paths}.values())  # an image named twice is done once
    names = output_names(paths)
    # Everything that decides an image's result; an image made with anything else is redone.
    run = {"method": args.method, "preset": args.preset, "backbone": args.backbone, "weights": args.weights,
           "tokenizer": args.tokenizer, "set": {k: overrides[k] for k in sorted(overrides)},
           "classes": None if spec is None else [list(s) for s in spec.synonyms],
           "background": bool(args.background), "dino": args.dino, "dtype": args.dtype}
    todo, redo, failures = [], [], []
    for path, name in zip(paths, names):
        try:
            source = _source(path)
        except OSError as e:
            failures.append({"image": str(path), "output": name, "error": f"cannot read {path}: {e.strerror or e}"})
            continue
        why = "overwrite" if args.overwrite else _why_redo(out / f"{name}.json", _output_files(out, name, formats),
                                                           run, source)
        if why is None:
            continue
        if why and why != "overwrite":
            redo.append((name, why))
        todo.append((path, name, source))
    skipped = len(paths) - len(todo) - len(failures)
    for name, why in redo[:5]:
        print(f"redoing {name}: {why}", file=sys.stderr)
    if len(redo) > 5:
        print(f"redoing {len(redo) - 5} more image(s) made with other settings or from other files", file=sys.stderr)
    written = 0
    if todo:
        from ..core.segmenter import Segmenter

        seg = Segmenter(args.method, backbone=args.backbone, weights=args.weights, preset=args.preset,
                        device=args.device, overrides=overrides, tokenizer=args.tokenizer,
                        cache_dir=args.cache_dir, dino=args.dino, dtype=args.dtype, max_pixels=args.max_pixels)
        if spec is None:
            spec = seg.preset_class_spec()
            if args.background:
                spec = parse_classes(spec, background=True)
        bar = tqdm(todo, desc="segment", unit="img", disable=args.quiet or len(todo) < 2)
        for path, name, source in bar:
            bar.set_postfix_str(path.name)
            try:  # one bad image is reported and skipped; the run goes on
                rgb = read_image(path, max_pixels=args.max_pixels)
                result = seg(rgb, spec)
            except (ImageError, OSError, ValueError, RuntimeError, MemoryError) as e:
                msg = str(e) if str(path) in str(e) else f"{path}: {e}"
                failures.append({"image": str(path), "output": name, "error": msg})
                tqdm.write(f"failed: {msg}", file=sys.stderr)
                continue
            result.settings.update(image=str(path), run=run, source=source)
            target = out / name
            try:
                result.save(target.parent, target.name, formats)
            except OSError as e:
                raise ValueError(f"cannot write the results of {path} to {target.parent}: {e.strerror or e}") from e
            written += 1
    summary = out / FAILURES_FILE
    if failures:
        write_json({"failed": len(failures), "of": len(paths), "images": failures,
                    "note": "these images have no results; re-run the same command to retry them"}, summary)
    else:
        summary.unlink(missing_ok=True)  # an earlier run's failures were retried (or the inputs changed)
    parts = [f"wrote {written} image(s) to {out}"]
    if skipped:
        parts.append(f"skipped {skipped} already done (same settings; --overwrite redoes them)")
    if redo:
        parts.append(f"redid {len(redo)} made with other settings or from other files")
    if failures:
        parts.append(f"{len(failures)} failed (listed with reasons in {summary})")
    print(", ".join(parts))
    if failures:
        for f in failures[:10]:
            print(f"  {f['error']}", file=sys.stderr)
        if len(failures) > 10:
            print(f"  ... and {len(failures) - 10} more in {summary}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _default_eval_out(dataset: str, method: str, backbone: str) -> Path:
    """ovss-results/<dataset>-<method>-<backbone>: named after the run, in the current folder."""
    b = Path(backbone).stem if any(c in backbone for c in "/\\") or Path(backbone).suffix else backbone
    label = "-".join(re.sub(r"[^A-Za-z0-9._+-]+", "_", x).strip("_") or "x"
                     for x in (dataset, method.replace(",", "+"), b))
    return Path("ovss-results") / label


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import create_dataset, ensure_synthetic
    from ..data.synthetic import split_state
    from ..methods import list_methods

    methods = list_methods() if args.method == "all" else [m.strip() for m in args.method.split(",")]
    base = Path(args.out) if args.out else _default_eval_out(args.dataset, args.method, args.backbone)
    check_out_dir(base)
    if args.dataset == "synthetic-scenes":
        state = split_state(args.root)
        if state != "complete":
            verb = "finishing the interrupted" if state == "partial" else "writing the"
            print(f"{verb} synthetic validation split in {args.root}")
            ensure_synthetic(args.root, n=args.synthetic_n, progress=not args.quiet)
    dataset = create_dataset(args.dataset, args.root)
    print(f"results go to {base}")
    rows, skipped = [], []
    for name in methods:
        out = base / name if len(methods) > 1 else base
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
                    overrides=overrides, tokenizer=args.tokenizer, cache_dir=args.cache_dir,
                    dino=_dino_for(args, method), dtype=args.dtype, max_pixels=args.max_pixels)
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


def _dino_for(args: argparse.Namespace, method) -> str | None:
    """`--dino` for one method of `ovss eval`: with several methods (a list, 'all') only those
    that borrow a DINO model get it; a single method without one is an error (Segmenter's)."""
    if not args.dino or not (args.method == "all" or "," in args.method):
        return args.dino
    from ..core.segmenter import with_dino

    try:
        with_dino(method.recipe, args.dino, method.name)
    except ValueError:
        return None
    return args.dino


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
              f"prob_thd {r.decision.prob_thd}, area_thd {r.decision.area_thd}, "
              f"synonyms reduced {r.decision.reduce.replace('_', ' ')}")
        if r.plugins or r.refiners:
            print(f"          plug-ins {[repr(x) for x in r.plugins]}, refiners {[repr(x) for x in r.refiners]}")
        _print_trace_names(m)
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


def _print_trace_names(m) -> None:
    """The names a traced call records (`seg(image, classes, trace=True).trace`), for the recipe
    and, where presets change the plug-ins or refiners, the names only those presets add."""
    from ..core.trace import names_of

    names = names_of(m.recipe)
    print(f"  trace: {', '.join(names)}")
    extra: dict[str, list[str]] = {}
    for pname in m.presets:
        for n in names_of(m.resolve(pname)):
            if n not in names:
                extra.setdefault(n, []).append(pname)
    for n, presets in extra.items():
        print(f"         {n} (presets {', '.join(presets)})")


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


_DINO_HELP = ("the DINO model of methods that borrow one (proxyclip, lposs, lposs+, cass): a name "
              "(`ovss backbones dino`) or a file; the preset's other head settings are kept")


def build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__

    p = argparse.ArgumentParser(prog="ovss", description="Training-free open-vocabulary semantic segmentation.")
    p.add_argument("--version", action="version", version=f"ovss {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment images into free-text classes", epilog=NAMING_RULE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
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
    s.add_argument("--dino", metavar="NAME_OR_FILE", help=_DINO_HELP)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. --set attention=kk+gaussian:5 --set surgery.residual=False")
    s.add_argument("--out", required=True, help="output folder (created; see 'output names' below)")
    s.add_argument("--save", default="index,overlay,json", help="comma-separated: index, overlay, json")
    s.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images over N pixels, read from the file header before decoding "
                   "(default 100000000; 0: no limit)")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="inference precision of the towers and head (default float32; see ovss.core.precision)")
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
    e.add_argument("--dino", metavar="NAME_OR_FILE", help=_DINO_HELP)
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
    e.add_argument("--out", help="results folder (default: ovss-results/DATASET-METHOD-BACKBONE in the current "
                   "folder; with several methods, one sub-folder per method and summary.md)")
    e.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images over N pixels (default 100000000; 0: no limit)")
    e.add_argument("--synthetic-n", type=int, default=200, help="images to write for a missing synthetic split")
    e.add_argument("--save-predictions", action="store_true")
    e.add_argument("--device", default="auto")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="inference precision of the towers and head (default float32; see ovss.core.precision)")
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
    from .build_bank import add_build_bank_parser

    add_build_bank_parser(sub)
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
