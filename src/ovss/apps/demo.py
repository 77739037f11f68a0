"""`ovss demo`: a web page (Gradio, the `ovss[demo]` extra) to try methods on an image.

Upload an image or pick a shipped example, type classes ("cat, sofa|couch": classes split on
commas, synonyms on "|", as in class files), pick one or more methods and a preset, and see per
method: the overlay with a legend (class colour, name, area share), the label map, a per-class
score heatmap chosen from a list, and downloads of the index PNG and the JSON sidecar.

Loaded models are cached across requests (one CLIP shared by all methods, see
`ovss.apps.serve.ModelCache`); the text bank keeps query embeddings in memory and on disk.
"""

from __future__ import annotations

import argparse
import atexit
import html
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).parents[1] / "data" / "assets" / "examples"
DEMO_EXTRA_HINT = 'the web demo needs Gradio: pip install "ovss[demo]"'
NO_PRESET = "(none)"
HEATMAP_SIDE = 640
OUTPUT_HEIGHT = 300  # pixels on the page for each output image  # heatmaps are kept and drawn with the long side at most this many pixels


def example_rows() -> list[list[str]]:
    """[[image path, classes string], ...] for the shipped example scenes (their .txt class lists)."""
    from ..text.bank import read_class_file

    rows = []
    for png in sorted(EXAMPLES_DIR.glob("*.png")):
        txt = png.with_suffix(".txt")
        if txt.is_file():
            rows.append([str(png), ", ".join("|".join(g) for g in read_class_file(txt))])
    return rows


def preset_choices(methods: Sequence[str]) -> list[str]:
    """(none), then every preset of any of `methods` (a preset applies to the methods that have it)."""
    from ..methods import get_method

    names = sorted({p for m in methods for p in get_method(m).presets})
    return [NO_PRESET, *names]


# ----------------------------------------------------------------------------------- rendering


def _colormap() -> Any:
    """A 256-entry perceptual dark-to-bright colour map (inferno-like anchors, interpolated)."""
    import numpy as np

    anchors = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                        [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float64)
    x = np.linspace(0, 1, len(anchors))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], 1).round().astype(np.uint8)


_CMAP = None


def heatmap_image(image: Any, score: Any, alpha: float = 0.65):
    """A class's probability map (h, w) in [0, 1] (float) or 0..255 (uint8), coloured and blended
    over a grey copy of `image` (H, W, 3); returns a PIL image of the image's size."""
    global _CMAP
    import numpy as np
    from PIL import Image

    if _CMAP is None:
        _CMAP = _colormap()
    s = np.asarray(score)
    s8 = s if s.dtype == np.uint8 else np.clip(np.round(s * 255), 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    if s8.shape != (h, w):
        s8 = np.asarray(Image.fromarray(s8).resize((w, h), Image.Resampling.BILINEAR))
    grey = image.astype(np.float32).mean(2, keepdims=True)
    out = (1 - alpha) * grey + alpha * _CMAP[s8].astype(np.float32)
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))


def label_map_image(result):
    """The label map drawn in the class colours (what the index PNG shows in a viewer)."""
    from PIL import Image

    return Image.fromarray(result.palette[result.labels])


def legend_html(result, method: str) -> str:
    """The colour legend as HTML: swatch, class name and area share of each class present."""
    areas = result.areas()
    rows = []
    absent = 0
    for i, name in enumerate(result.class_names):
        a = areas[name]
        if a <= 0:
            absent += 1
            continue
        r, g, b = (int(v) for v in result.palette[i])
        pct = "<0.1%" if 0 < a < 0.001 else f"{100 * a:.1f}%"
        rows.append(
            f'<tr class="ovss-legend-row" data-class="{html.escape(name)}">'
            f'<td><span class="ovss-swatch" style="display:inline-block;width:1em;height:1em;'
            f'background:rgb({r},{g},{b});border:1px solid #444;vertical-align:middle"></span></td>'
            f"<td>{html.escape(name)}</td><td style='text-align:right'>{pct}</td></tr>"
        )
    note = f"<p style='margin:0.3em 0 0 0;color:#666'>{absent} class(es) not present</p>" if absent else ""
    return (f'<div class="ovss-legend" data-method="{html.escape(method)}">'
            f"<table><thead><tr><th></th><th>class</th><th>area</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{note}</div>")


def _small(result):
    """(image, scores as uint8) with the long side at most HEATMAP_SIDE, for the heatmap state."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    img = result.image
    h, w = img.shape[:2]
    k = min(1.0, HEATMAP_SIDE / max(h, w))
    size = (max(1, round(h * k)), max(1, round(w * k)))
    small_img = img if k == 1.0 else np.asarray(Image.fromarray(img).resize(size[::-1], Image.Resampling.BILINEAR))
    scores = torch.from_numpy(np.ascontiguousarray(result.scores, dtype=np.float32))
    if tuple(scores.shape[-2:]) != size:
        scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    s8 = (scores.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return small_img, s8


# ------------------------------------------------------------------------------------- runner


class DemoRunner:
    """What the page's buttons call; holds the model cache and the run folders of downloads."""

    def __init__(self, models, methods: Sequence[str] | None = None, max_pixels: int | None = None,
                 out_root: str | os.PathLike | None = None, keep_runs: int = 64):
        from .serve import DEFAULT_MAX_PIXELS

        self.models = models
        self.methods = list(methods or models.methods)
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        if out_root is None:  # downloads live in a temp folder removed at exit
            out_root = tempfile.mkdtemp(prefix="ovss-demo-")
            atexit.register(shutil.rmtree, out_root, ignore_errors=True)
        self.out_root = Path(out_root)
        self.out_root.mkdir(parents=True, exist_ok=True)
        self.keep_runs = keep_runs
        self._runs: deque[Path] = deque()
        self._lock = threading.Lock()

    def _run_dir(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_root))
        with self._lock:
            self._runs.append(d)
            while len(self._runs) > self.keep_runs:  # downloads of old runs are dropped
                shutil.rmtree(self._runs.popleft(), ignore_errors=True)
        return d

    def check_image(self, image: Any) -> None:
        from PIL import Image

        if image is None or (isinstance(image, str) and not image):
            raise ValueError("upload an image or pick an example first")
        if isinstance(image, (str, os.PathLike)):
            try:
                with Image.open(image) as im:
                    w, h = im.size
            except (OSError, SyntaxError) as e:
                raise ValueError(f"not a readable image: {e}") from None
        else:
            h, w = image.shape[:2]
        if w * h > self.max_pixels:
            raise ValueError(f"image too large: {w}x{h} = {w * h:,} pixels; the limit is {self.max_pixels:,}")

    def segment(self, image: Any, classes: str, methods: Sequence[str], preset: str | None,
                progress: Callable[..., Any] | None = None) -> tuple[dict[str, Any], str]:
        """Run each method; returns ({method: panel outputs}, status text). Raises ValueError with
        a user-facing message for bad input (no image, empty/duplicate classes, no method)."""
        from ..data.io import read_image
        from ..methods import get_method
        from ..text.bank import parse_classes

        progress = progress or (lambda *a, **k: None)
        self.check_image(image)
        spec = parse_classes(classes or "")  # a string is always a class list, never a path
        methods = [m for m in (methods or []) if m]
        if not methods:
            raise ValueError("pick at least one method")
        unknown = [m for m in methods if m not in self.methods]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {self.methods}")
        preset = None if preset in (None, "", NO_PRESET) else preset
        rgb = read_image(image)
        run = self._run_dir()
        panels: dict[str, Any] = {}
        notes = []
        n = len(methods)
        for i, m in enumerate(methods):
            p = preset if preset is not None and preset in get_method(m).presets else None
            if preset is not None and p is None:
                notes.append(f"{m} has no preset {preset!r}: ran with its defaults")
            progress(i / n, desc=f"{m}: loading the model")
            self.models.entry(m, p)  # the first use of a (method, preset) builds it
            progress((i + 0.2) / n, desc=f"{m}: segmenting")
            result = self.models.segment(rgb, spec, m, p)
            progress((i + 0.9) / n, desc=f"{m}: drawing")
            stem = f"{m}" + (f"_{p}" if p else "")
            result.settings["classes_input"] = classes  # what was typed (to_dict has "classes")
            files = result.save(run, stem, ("index", "json"))
            small_img, s8 = _small(result)
            present = [n_ for n_, a in result.areas().items() if a > 0]
            first = present[0] if present else result.class_names[0]
            panels[m] = {
                "overlay": result.overlay(),
                "legend": legend_html(result, m),
                "label_map": label_map_image(result),
                "class_names": list(result.class_names),
                "heat_class": first,
                "heatmap": heatmap_image(small_img, s8[result.class_names.index(first)]),
                "index_png": str(files["index"]),
                "json": str(files["json"]),
                "state": {"image": small_img, "scores": s8, "names": list(result.class_names)},
                "preset": p,
            }
        progress(1.0, desc="done")
        status = f"segmented into {len(spec)} classes with {', '.join(methods)}"
        if notes:
            status += " (" + "; ".join(notes) + ")"
        return panels, status


def heatmap_for(state: dict[str, Any] | None, method: str, class_name: str | None):
    """The heatmap of `class_name` from a method's stored scores (the class dropdown's handler)."""
    if not state or method not in state or not class_name:
        return None
    s = state[method]
    if class_name not in s["names"]:
        return None
    return heatmap_image(s["image"], s["scores"][s["names"].index(class_name)])


# ---------------------------------------------------------------------------------------- page


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline tool: no telemetry
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f"{DEMO_EXTRA_HINT} ({e})") from e
    return gr


def build_demo(backbone: str = "clip-vit-b16", weights: str | os.PathLike | None = None,
               methods: Sequence[str] | None = None, device: str = "auto",
               default_methods: Sequence[str] | None = None, max_pixels: int | None = None,
               tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
               models=None, preload: bool = False):
    """The Gradio page (a `gr.Blocks`; call `.launch()` or `launch_demo`). `methods` limits the
    methods offered (default: all); `default_methods` are ticked at start (default: the first).
    The runner the button calls is `blocks.ovss_runner` (a `DemoRunner`)."""
    gr = _import_gradio()
    from ..core.version import __version__
    from .serve import ModelCache

    models = models or ModelCache(backbone, weights=weights, device=device, methods=methods,
                                  tokenizer=tokenizer, cache_dir=cache_dir)
    if preload:
        models.clip()
    runner = DemoRunner(models, max_pixels=max_pixels)
    offered = runner.methods
    ticked = [m for m in (default_methods or offered[:1]) if m in offered]
    examples = example_rows()

    with gr.Blocks(title="ovss demo") as demo:
        shown = os.path.basename(models.backbone.rstrip("/")) if os.path.exists(models.backbone) else models.backbone
        gr.Markdown(f"## ovss: open-vocabulary semantic segmentation (v{__version__})\n"
                    f"Backbone `{shown}` on `{models.device}`. Type classes separated by commas, "
                    "synonyms by `|` (e.g. `cat, sofa|couch, wooden floor`).")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="ovss-image")
                classes = gr.Textbox(label="Classes", placeholder="cat, sofa|couch, wooden floor", lines=2,
                                     elem_id="ovss-classes")
                chosen = gr.CheckboxGroup(offered, value=ticked, label="Methods", elem_id="ovss-methods")
                preset = gr.Dropdown(preset_choices(offered), value=NO_PRESET, label="Preset",
                                     info="applied to the methods that have it", elem_id="ovss-preset")
                run = gr.Button("Segment", variant="primary", elem_id="ovss-run")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="ovss-status")
                if examples:
                    gr.Examples(examples, inputs=[image, classes], label="Examples (synthetic scenes)")
        state = gr.State({})
        panels: dict[str, dict[str, Any]] = {}
        for m in offered:
            with gr.Column(visible=False, elem_id=f"ovss-panel-{m}") as col:
                gr.Markdown(f"### {m}")
                with gr.Row():
                    with gr.Column():
                        ov = gr.Image(label=f"{m}: overlay", format="png", height=OUTPUT_HEIGHT, interactive=False,
                                      elem_id=f"ovss-overlay-{m}")
                        leg = gr.HTML(elem_id=f"ovss-legend-{m}")
                    lm = gr.Image(label=f"{m}: label map", format="png", height=OUTPUT_HEIGHT, interactive=False,
                                  elem_id=f"ovss-labels-{m}")
                    with gr.Column():
                        hc = gr.Dropdown([], label="score heatmap of class", elem_id=f"ovss-heatclass-{m}")
                        hm = gr.Image(label=f"{m}: score heatmap", format="png", height=OUTPUT_HEIGHT, interactive=False,
                                      elem_id=f"ovss-heatmap-{m}")
                with gr.Row():
                    dl_png = gr.DownloadButton("Download index PNG", size="sm", elem_id=f"ovss-dl-png-{m}")
                    dl_json = gr.DownloadButton("Download JSON sidecar", size="sm", elem_id=f"ovss-dl-json-{m}")
            panels[m] = {"col": col, "overlay": ov, "legend": leg, "label_map": lm, "heat_class": hc,
                         "heatmap": hm, "index_png": dl_png, "json": dl_json}
            hc.change(lambda st, c, _m=m: heatmap_for(st, _m, c), inputs=[state, hc], outputs=hm,
                      show_progress="hidden")

        outputs: list[Any] = []
        for m in offered:
            p = panels[m]
            outputs += [p["col"], p["overlay"], p["legend"], p["label_map"], p["heat_class"], p["heatmap"],
                        p["index_png"], p["json"]]
        outputs += [state, status]

        def on_segment(image_value, classes_value, methods_value, preset_value,
                       progress=gr.Progress()):  # noqa: B008  (Gradio's way to ask for a progress bar)
            try:
                results, text = runner.segment(image_value, classes_value, methods_value, preset_value,
                                               progress=progress)
            except (ValueError, KeyError, FileNotFoundError) as e:
                raise gr.Error(e.args[0] if e.args else str(e)) from None
            return panel_updates(gr, offered, results, text)

        run.click(on_segment, inputs=[image, classes, chosen, preset], outputs=outputs)
        classes.submit(on_segment, inputs=[image, classes, chosen, preset], outputs=outputs)

    demo.ovss_runner = runner
    demo.ovss_on_segment = on_segment
    demo.queue(default_concurrency_limit=1)  # one segmentation at a time; the rest wait in the queue
    return demo


def panel_updates(gr, offered: Sequence[str], results: dict[str, Any], status: str) -> list[Any]:
    """The button's outputs: per offered method (panel visibility, overlay, legend, label map,
    heatmap class list, heatmap, index PNG, JSON), then the heatmap state and the status line."""
    out: list[Any] = []
    state = {}
    for m in offered:
        r = results.get(m)
        if r is None:
            out += [gr.update(visible=False), None, "", None, gr.update(choices=[], value=None), None,
                    gr.update(value=None), gr.update(value=None)]
            continue
        state[m] = r["state"]
        out += [gr.update(visible=True), r["overlay"], r["legend"], r["label_map"],
                gr.update(choices=r["class_names"], value=r["heat_class"]), r["heatmap"],
                gr.update(value=r["index_png"]), gr.update(value=r["json"])]
    return [*out, state, status]


def launch_demo(demo, host: str = "127.0.0.1", port: int | None = 7860, **kwargs: Any):
    """`demo.launch` with the example scenes and the run folder allowed as files to serve."""
    runner = demo.ovss_runner
    allowed = [str(EXAMPLES_DIR), str(runner.out_root)]
    return demo.launch(server_name=host, server_port=port, share=False,
                       allowed_paths=[*allowed, *kwargs.pop("allowed_paths", [])], **kwargs)


# ---------------------------------------------------------------------------------------- CLI


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """`ovss demo`; imports nothing heavy until the command runs."""
    s = subparsers.add_parser("demo", help="web page to try methods on images (Gradio; ovss[demo])",
                              description="A web page (Gradio) to try methods on an image: overlays with "
                                          "legends, label maps, score heatmaps, downloads. Needs ovss[demo].")
    s.add_argument("--method", action="append", default=[], metavar="M",
                   help="a method to offer (repeatable; default: all); the ones given are ticked")
    s.add_argument("--backbone", default="clip-vit-b16", help="backbone name, file, folder or hf-hub:org/repo")
    s.add_argument("--weights", help="read the backbone's weights from this file or folder")
    s.add_argument("--tokenizer", help="tokenizer vocabulary file or folder, if not beside the weights")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--device", default="auto")
    s.add_argument("--cache-dir", help="weights cache (default: the Hugging Face hub cache)")
    s.set_defaults(func=cmd_demo)
    return s


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    if importlib.util.find_spec("gradio") is None:
        print(f"ovss demo: error: {DEMO_EXTRA_HINT}", file=sys.stderr)
        return 2
    demo = build_demo(args.backbone, weights=args.weights, methods=args.method or None, device=args.device,
                      default_methods=args.method or None, tokenizer=args.tokenizer, cache_dir=args.cache_dir,
                      preload=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: the page has no authentication", flush=True)
    launch_demo(demo, args.host, args.port)
    return 0
