"""`ovss demo`: a web page (Gradio, the `ovss[demo]` extra) to try methods on an image.

Upload an image or pick a shipped example (beside the image, on narrow screens too), type classes
("cat, sofa|couch": classes split on commas, synonyms on "|", as in class files), tick methods and a
preset, press Segment. While it runs, the result area says what each method is doing (loading
weights, encoding N classes, segmenting) and the button is disabled; an upload that is no image is
answered there at once. The methods' results sit side by side, each with:

- the overlay (the class colours over the image; one opacity slider for all), with the class and
  score under the pointer on hover or click;
- one legend, sorted by area, naming the classes not present; an added "background" (pixels no
  class brought over the method's threshold) is marked as such;
- a score heatmap with a 0-1 colour bar, opening on the largest class; a click on a legend row
  shows that class's;
- downloads of the index PNG and the JSON sidecar.

Colours come from the class names (`ovss.core.viz.palette_for`), so a class has one colour in every
method's result and in every run, and an added background never moves the others. A banner names
the backbone and, for the `tiny-synthetic` demo model, what it can and cannot label. Gradio's "Use
via API" page lists one endpoint, ``/segment`` (image, classes, methods, preset -> JSON); the
page's own handlers are private.

Loaded models are cached across requests (`ovss.apps.model_cache.ModelCache`, shared with
`ovss serve`: one CLIP under every method); the text bank keeps query embeddings in memory and on
disk. The page loads nothing from other hosts.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import html
import inspect
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).parents[1] / "data" / "assets" / "examples"
DEMO_EXTRA_HINT = 'the web demo needs Gradio: pip install "ovss[demo]"'
NO_PRESET = "(none)"
VIEW_SIDE = 640  # images on the page have their long side at most this many pixels
# Seconds to wait at each step of a run: for tests and screenshots that must see a run in
# progress (a real first run of a large model is slow by itself). Unset or 0 in normal use.
STEP_DELAY_ENV = "OVSS_DEMO_STEP_DELAY"
KEEP_RUNS = 8  # runs whose score maps stay in memory for the legend's heatmap clicks

log = logging.getLogger("ovss.demo")

# What a backbone can label, for the banner (from its model card).
MODEL_NOTES = {
    "tiny-synthetic": (
        "a 1.55M-parameter CLIP trained only on ovss's synthetic scenes (96 px), for demonstration: it "
        "labels the 7 textures of that world: <b>sky, grass, water, sand, brick wall, snow, road</b>. It "
        "<b>cannot</b> tell its 4 shapes apart (circle, square, triangle, star get a nearby texture's "
        "label), and on real photos or other words its output is meaningless. Try the examples; see "
        "<code>MODEL_CARD.md</code> beside its weights."
    ),
}


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

    x = np.linspace(0, 1, len(HEAT_ANCHORS))
    t = np.linspace(0, 1, 256)
    a = np.array(HEAT_ANCHORS, np.float64)
    return np.stack([np.interp(t, x, a[:, c]) for c in range(3)], 1).round().astype(np.uint8)


HEAT_ANCHORS = ((0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                (250, 193, 39), (252, 255, 164))
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


def colour_bar_html() -> str:
    """The heatmap's 0-1 colour bar (a CSS gradient of the same colour map, with ticks)."""
    stops = ", ".join(f"rgb{c} {100 * i / (len(HEAT_ANCHORS) - 1):.0f}%" for i, c in enumerate(HEAT_ANCHORS))
    return (f'<div class="ovss-colorbar" title="class probability"><div class="ovss-colorbar-ramp" '
            f'style="background:linear-gradient(to right, {stops})"></div><div class="ovss-colorbar-ticks">'
            '<span>0</span><span>0.25</span><span>0.5</span><span>0.75</span><span>1</span></div></div>')


def data_uri(image: Any) -> str:
    """A PIL image or uint8 array as a PNG data: URL."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def view_size(h: int, w: int, side: int = VIEW_SIDE) -> tuple[int, int]:
    k = min(1.0, side / max(h, w))
    return max(1, round(h * k)), max(1, round(w * k))


def _resize_nearest(a: Any, size: tuple[int, int]) -> Any:
    import numpy as np

    h, w = a.shape[:2]
    if (h, w) == size:
        return a
    ys = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    xs = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return a[ys][:, xs]


def _scores_at(scores: Any, size: tuple[int, int]) -> Any:
    """(C, h, w) float scores -> (C, H, W) float32 at `size`, bilinear (as torch does)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s[None], size=size, mode="bilinear", align_corners=False)[0]
    return s.numpy()


def pointer_score(result) -> Any:
    """(H', W') float32 at the scores' size: the probability of the class each pixel got; for a
    pixel of an added background (no class reached the threshold), the best class's probability."""
    import numpy as np

    sc = np.asarray(result.scores, np.float32)
    lab = _resize_nearest(np.asarray(result.labels), sc.shape[1:])
    win = np.take_along_axis(sc, lab[None].astype(np.int64), 0)[0]
    if result.background_added and sc.shape[0] > 1:
        win = np.where(lab == 0, sc[1:].max(0), win)
    return win


def layers(result, size: tuple[int, int]) -> tuple[Any, Any]:
    """(colour layer, data layer) at the view size: the label map in the class colours with 1-px
    boundaries, and an RGB image whose red + 256 x green is the class index and blue the score
    (0-255) of each pixel, which the page reads back under the pointer."""
    import numpy as np

    from ..core.viz import BOUNDARY_COLOUR

    lab = _resize_nearest(np.asarray(result.labels), size).astype(np.int64)
    colour = np.asarray(result.palette, np.uint8)[lab]
    edge = np.zeros(lab.shape, bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    colour[edge] = BOUNDARY_COLOUR
    win = pointer_score(result)
    win = _resize_nearest(win, size) if win.shape != size else win
    data = np.stack([lab & 255, (lab >> 8) & 255, np.clip(np.round(win * 255), 0, 255)], -1).astype(np.uint8)
    return colour, data


def _pct(a: float) -> str:
    return "<0.1%" if 0 < a < 0.001 else f"{100 * a:.1f}%"


def legend_html(result, method: str, threshold: float | None = None) -> str:
    """The one legend: a row per class present (swatch, name, area share, mean score), sorted by
    area; an added background marked as such; then the classes not present, by name. A click on a
    row shows that class's score heatmap."""
    areas = result.areas()
    order = sorted(range(len(result.class_names)), key=lambda i: (-areas[result.class_names[i]], i))
    rows, absent = [], []
    for i in order:
        name = result.class_names[i]
        a = areas[name]
        added = result.background_added and i == 0
        if a <= 0:
            if not added:
                absent.append(name)
            continue
        r, g, b = (int(v) for v in result.palette[i])
        score = result.mean_scores[i] if i < len(result.mean_scores) else float("nan")
        score_txt = "" if math.isnan(score) else f"{score:.2f}"  # NaN: no pixels
        label = html.escape(name)
        if added:
            thd = f" {threshold:g}" if threshold else ""
            label += (f' <span class="ovss-added" title="added by {html.escape(method)}: pixels where no class '
                      f'reached its probability threshold{thd}">(added: under the threshold{thd})</span>')
        rows.append(
            f'<tr class="ovss-legend-row" data-method="{html.escape(method)}" data-class="{html.escape(name)}" '
            f'data-index="{i}" title="show the score heatmap of {html.escape(name)}">'
            f'<td><span class="ovss-swatch" style="background:rgb({r},{g},{b})" data-rgb="{r},{g},{b}"></span></td>'
            f'<td class="ovss-name">{label}</td><td class="ovss-area">{_pct(a)}</td>'
            f'<td class="ovss-score">{score_txt}</td></tr>')
    note = ""
    if absent:
        names = ", ".join(html.escape(n) for n in absent)
        note = (f'<details class="ovss-absent"><summary>{len(absent)} class{"es" if len(absent) > 1 else ""} '
                f'not present</summary><p>{names}</p></details>')
    return (f'<div class="ovss-legend" data-method="{html.escape(method)}"><table><thead><tr><th></th>'
            f'<th>class</th><th>area</th><th title="mean probability over its pixels">score</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>{note}")


def view_html(result, method: str, base_uri: str, size: tuple[int, int], title: str,
              threshold: float | None = None) -> str:
    """A method's overlay (image + colour layer under the opacity slider + the hidden data layer
    the pointer readout reads), readout line and legend."""
    colour, data = layers(result, size)
    h, w = result.size
    names = html.escape(json.dumps(list(result.class_names)))
    return (f'<div class="ovss-view" data-method="{html.escape(method)}" data-names="{names}" data-h="{h}" '
            f'data-w="{w}" data-bg-added="{int(bool(result.background_added))}">'
            f'<div class="ovss-title">{title}</div>'
            f'<div class="ovss-stage"><img class="ovss-base" alt="input image" src="{base_uri}">'
            f'<img class="ovss-layer" alt="{html.escape(method)} overlay" src="{data_uri(colour)}">'
            f'<img class="ovss-data" alt="" aria-hidden="true" src="{data_uri(data)}"></div>'
            f'<div class="ovss-readout" aria-live="polite">Hover or click the image to read the class and score '
            f'there.</div>{legend_html(result, method, threshold)}</div>')


def heat_html(method: str, name: str, heat_uri: str, peak: float) -> str:
    return (f'<div class="ovss-heat" data-method="{html.escape(method)}" data-class="{html.escape(name)}">'
            f'<div class="ovss-heat-title">score map of <b>{html.escape(name)}</b> (max {peak:.2f}); click a '
            f'legend row for another class</div><img class="ovss-heat-img" alt="score map of {html.escape(name)}" '
            f'src="{heat_uri}">{colour_bar_html()}</div>')


def message_html(text: str, kind: str = "error", lines: Sequence[str] = ()) -> str:
    role = "alert" if kind == "error" else "status"
    items = "".join(f"<li>{html.escape(x)}</li>" for x in lines)
    return (f'<div class="ovss-msg ovss-{kind}" role="{role}">{html.escape(text)}'
            f'{f"<ul>{items}</ul>" if items else ""}</div>')


class Summary(str):
    """A finished run's summary: the headline (the str itself) and a line per method or note."""

    lines: list[str]

    def __new__(cls, head: str, lines: Sequence[str]):
        obj = super().__new__(cls, " ".join([head, *(f"{x}." for x in lines)]))
        obj.head, obj.lines = head, list(lines)
        return obj


class Progress:
    """What the result area shows while a run goes on: a bar, the current step, each method's state."""

    def __init__(self, methods: Sequence[str]):
        self.methods = list(methods)
        self.state = {m: "waiting" for m in methods}
        self.t0 = time.perf_counter()
        self.step = ""
        self.done = 0.0  # fraction

    def set(self, method: str, step: str, frac: float) -> None:
        self.state[method] = step
        self.step = f"{method} ({self.methods.index(method) + 1}/{len(self.methods)}): {step}"
        self.done = frac

    def html(self, finished: bool = False) -> str:
        items = []
        for m in self.methods:
            s = self.state[m]
            cls = "done" if s.startswith("done") else "fail" if s.startswith("not ") else (
                "waiting" if s == "waiting" else "running")
            items.append(f'<li class="ovss-step-{cls}"><b>{html.escape(m)}</b>: {html.escape(s)}</li>')
        now = "" if finished else (f'<div class="ovss-now"><span class="ovss-spinner"></span>'
                                   f'{html.escape(self.step)}&hellip; ({time.perf_counter() - self.t0:.1f} s)</div>')
        return (f'<div class="ovss-progress{" ovss-finished" if finished else ""}" role="status" '
                f'aria-live="polite"><progress max="100" value="{round(100 * self.done)}"></progress>{now}'
                f'<ul>{"".join(items)}</ul></div>')


# ------------------------------------------------------------------------------------- runner


def _path_of(image: Any) -> Any:
    """A Gradio file payload (dict or FileData, unprocessed) -> its path; anything else as is."""
    if isinstance(image, dict):
        return image.get("path") or image.get("name")
    path = getattr(image, "path", None)
    return path if isinstance(path, str) else image


class DemoRunner:
    """What the page's handlers call; holds the model cache, the run folders of downloads and the
    score maps of the last runs (for the legend's heatmap clicks)."""

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
        self._kept: OrderedDict[str, dict[str, Any]] = OrderedDict()  # run id -> {method: heat data}
        self._lock = threading.Lock()

    def _run_dir(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_root))
        with self._lock:
            self._runs.append(d)
            while len(self._runs) > self.keep_runs:  # downloads of old runs are dropped
                shutil.rmtree(self._runs.popleft(), ignore_errors=True)
        return d

    def check_image(self, image: Any) -> tuple[int, int]:
        """(H, W) of an upload, or ValueError saying why it cannot be used."""
        from PIL import Image

        image = _path_of(image)
        if image is None or (isinstance(image, str) and not image):
            raise ValueError("upload an image or pick an example first")
        if isinstance(image, (str, os.PathLike)):
            name = os.path.basename(os.fspath(image))
            try:
                with Image.open(image) as im:
                    w, h = im.size
                    fmt = im.format
            except FileNotFoundError:
                raise ValueError(f"the upload {name!r} is gone from the server; upload it again") from None
            except (OSError, SyntaxError, ValueError) as e:
                raise ValueError(f"{name!r} is not an image this page can read ({type(e).__name__}: {e}); "
                                 "upload a PNG, JPEG, WebP, BMP, TIFF or GIF") from None
            if w * h > self.max_pixels:
                raise ValueError(f"image too large: {w}x{h} = {w * h:,} pixels; the limit is {self.max_pixels:,}")
            try:  # the header was fine; the pixels must decode too (a truncated file)
                from ..data.io import read_image

                read_image(image)
            except Exception as e:  # noqa: BLE001 - any decoder failure is the file's
                raise ValueError(f"{name!r} looks like {fmt or 'an image'} but cannot be decoded "
                                 f"({type(e).__name__}: {e})") from None
            return h, w
        h, w = image.shape[:2]
        if w * h > self.max_pixels:
            raise ValueError(f"image too large: {w}x{h} = {w * h:,} pixels; the limit is {self.max_pixels:,}")
        return h, w

    def validate(self, image: Any, classes: str, methods: Sequence[str] | None, preset: str | None):
        """(image path or array, ClassSpec, methods, preset) or ValueError with a user-facing message."""
        from ..text.bank import parse_classes

        self.check_image(image)
        spec = parse_classes(classes or "")  # a string is always a class list, never a path
        methods = [m for m in (methods or []) if m]
        if not methods:
            raise ValueError("pick at least one method")
        unknown = [m for m in methods if m not in self.methods]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {self.methods}")
        preset = None if preset in (None, "", NO_PRESET) else preset
        return _path_of(image), spec, methods, preset

    def run(self, image: Any, classes: str, methods: Sequence[str] | None, preset: str | None
            ) -> Iterator[tuple[str, Any]]:
        """Segment with each method, step by step. Yields ("progress", Progress) before each step,
        ("panel", (method, panel dict)) as each method finishes, and last ("done", (summary text,
        run id)). Raises ValueError with a user-facing message for bad input."""
        from ..data.io import read_image
        from ..methods import get_method

        path, spec, methods, preset = self.validate(image, classes, methods, preset)
        delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
        prog = Progress(methods)
        rgb = read_image(path)
        size = view_size(*rgb.shape[:2])
        small = _resize_linear(rgb, size)
        base_uri = data_uri(small)
        run = self._run_dir()
        run_id = run.name
        kept: dict[str, Any] = {}
        notes: list[str] = []
        lines: list[str] = []
        n = len(methods)
        t_run = time.perf_counter()
        for i, m in enumerate(methods):
            p = preset if preset is not None and preset in get_method(m).presets else None
            if preset is not None and p is None:
                notes.append(f"{m} has no preset {preset!r}: ran with its defaults")
            why = self.models.missing(m, p)
            if why:
                prog.set(m, "not ready (weights missing)", (i + 1) / n)
                lines.append(why)
                yield "progress", prog
                continue
            t0 = time.perf_counter()
            built = self.models.has(m, p)
            prog.set(m, "weights loaded" if built else "loading weights", (i + 0.05) / n)
            yield "progress", prog
            if delay:
                time.sleep(delay)
            entry = self.models.entry(m, p)
            prog.set(m, f"encoding {len(spec)} class{'es' if len(spec) != 1 else ''}", (i + 0.3) / n)
            yield "progress", prog
            if delay:
                time.sleep(delay)
            self.models.encode(spec, m, p)
            prog.set(m, "segmenting", (i + 0.55) / n)
            yield "progress", prog
            if delay:
                time.sleep(delay)
            result = self.models.segment(rgb, spec, m, p)
            thd = float(entry.segmenter.recipe.decision.prob_thd)
            panel, heat = self._panel(result, m, p, base_uri, small, size, run, classes, thd)
            kept[m] = heat
            took = time.perf_counter() - t0
            extra = (f" + background (added: pixels under {m}'s threshold {thd:g})"
                     if result.background_added else "")
            lines.append(f"{m}{f' ({p})' if p else ''}: {len(spec)} class{'es' if len(spec) != 1 else ''}"
                         f"{extra}, {took:.1f} s")
            prog.set(m, f"done in {took:.1f} s", (i + 1) / n)
            yield "panel", (m, panel)
        with self._lock:
            self._kept[run_id] = kept
            while len(self._kept) > KEEP_RUNS:
                self._kept.popitem(last=False)
        head = (f"Segmented into {len(spec)} class{'es' if len(spec) != 1 else ''} in "
                f"{time.perf_counter() - t_run:.1f} s.")
        yield "done", (Summary(head, lines + notes), run_id)

    def _panel(self, result, m: str, p: str | None, base_uri: str, small, size, run: Path, classes: str,
               thd: float):
        import numpy as np

        from ..data.io import save_index_png, write_json
        from .serve import answer_dict

        stem = m + (f"_{p}" if p else "")
        index_png = save_index_png(result.labels, run / f"{stem}.png", result.palette)
        side = answer_dict(result, fmt="none", requested=None)
        side.pop("classes_requested", None)
        side["classes_input"] = classes
        json_path = write_json(side, run / f"{stem}.json")
        scores = _scores_at(result.scores, size)
        s8 = np.clip(np.round(scores * 255), 0, 255).astype(np.uint8)
        areas = result.areas()
        first = [i for i in range(len(result.class_names)) if not (result.background_added and i == 0)]
        largest = max(first, key=lambda i: (areas[result.class_names[i]], -i)) if first else 0
        heat = {"image": small, "scores": s8, "names": list(result.class_names)}
        title = f"{html.escape(m)}" + (f" <span class='ovss-preset'>({html.escape(p)})</span>" if p else "")
        panel = {
            "view": view_html(result, m, base_uri, size, title, thd),
            "heat": heat_for(heat, m, result.class_names[largest]),
            "heat_class": result.class_names[largest],
            "index_png": str(index_png),
            "json": str(json_path),
            "result": result,
        }
        return panel, heat

    def heat(self, run_id: str | None, method: str, name: str) -> str | None:
        """The heatmap HTML of class `name` of `method` in run `run_id` (None if no longer kept)."""
        with self._lock:
            kept = self._kept.get(run_id or "", {}).get(method)
        if kept is None:
            return None
        return heat_for(kept, method, name)


def _resize_linear(rgb: Any, size: tuple[int, int]) -> Any:
    import numpy as np
    from PIL import Image

    if rgb.shape[:2] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.Resampling.BILINEAR))


def heat_for(kept: dict[str, Any], method: str, name: str) -> str | None:
    if name not in kept["names"]:
        return None
    s = kept["scores"][kept["names"].index(name)]
    return heat_html(method, name, data_uri(heatmap_image(kept["image"], s)), float(s.max()) / 255)


# ---------------------------------------------------------------------------------------- page

PAGE_CSS = """
:root { --ovss-alpha: 0.5; }
#ovss-banner .ovss-banner { border-left: 4px solid #d97706; background: #fff7ed; color: #3b2a12;
  padding: .5em .8em; border-radius: 4px; font-size: .95em; }
#ovss-banner .ovss-banner.ovss-plain { border-left-color: #2563eb; background: #eff6ff; color: #172554; }
#ovss-progress { min-height: 3em; }
#ovss-progress:has(.ovss-progress:not(.ovss-finished)) { position: sticky; top: 0; z-index: 20;
  background: var(--background-fill-primary, #fff); box-shadow: 0 2px 4px rgba(0, 0, 0, .08); }
.ovss-msg ul { margin: .3em 0 0 1.2em; padding: 0; font-weight: 400; }
.ovss-progress progress { width: 100%; height: .7em; }
.ovss-progress ul { list-style: none; margin: .3em 0 0 0; padding: 0; font-size: .9em; }
.ovss-progress li { margin: .1em 0; }
.ovss-step-done::before { content: "\\2713  "; color: #15803d; }
.ovss-step-running::before { content: "\\25B6  "; color: #2563eb; }
.ovss-step-waiting { color: #6b7280; }
.ovss-step-fail { color: #b91c1c; }
.ovss-now { font-weight: 600; margin-top: .2em; }
.ovss-spinner { display: inline-block; width: .8em; height: .8em; margin-right: .4em; border: 2px solid #93c5fd;
  border-top-color: #1d4ed8; border-radius: 50%; animation: ovss-spin .8s linear infinite; vertical-align: -1px; }
@keyframes ovss-spin { to { transform: rotate(360deg); } }
.ovss-msg { padding: .6em .8em; border-radius: 4px; font-weight: 500; }
.ovss-error { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; }
.ovss-info { background: #f0fdf4; color: #14532d; border: 1px solid #bbf7d0; }
#ovss-grid { flex-wrap: wrap; gap: 12px; }
#ovss-grid > .ovss-panel { min-width: 250px; max-width: 640px; flex: 1 1 250px; border: 1px solid #e5e7eb; border-radius: 6px;
  padding: 6px; }
.ovss-title { font-weight: 700; font-size: 1.05em; margin-bottom: .3em; }
.ovss-preset { font-weight: 400; color: #6b7280; }
.ovss-stage { position: relative; line-height: 0; cursor: crosshair; }
.ovss-stage img { width: 100%; height: auto; display: block; image-rendering: auto; }
.ovss-stage img.ovss-layer { position: absolute; left: 0; top: 0; opacity: var(--ovss-alpha, .5);
  image-rendering: pixelated; }
.ovss-stage img.ovss-data { display: none; }
.ovss-readout { min-height: 1.5em; font-size: .9em; margin: .3em 0; font-variant-numeric: tabular-nums; }
.ovss-legend { max-height: 15em; overflow: auto; }
.ovss-legend table { width: 100%; border-collapse: collapse; font-size: .9em; margin: 0; }
.ovss-legend th { text-align: left; font-weight: 600; position: sticky; top: 0; background: var(--block-background-fill, #fff); }
.ovss-legend td, .ovss-legend th { padding: 1px 4px; border: 0; }
.ovss-legend-row { cursor: pointer; }
.ovss-legend-row:hover, .ovss-legend-row.ovss-selected { background: rgba(37, 99, 235, .12); }
.ovss-swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #444; vertical-align: middle; }
.ovss-area, .ovss-score { text-align: right; font-variant-numeric: tabular-nums; }
.ovss-added { color: #6b7280; font-size: .9em; }
.ovss-absent { font-size: .85em; color: #4b5563; margin-top: .3em; }
.ovss-absent p { margin: .2em 0; }
.ovss-heat-title { font-size: .9em; margin: .3em 0; }
.ovss-heat-img { width: 100%; height: auto; display: block; }
.ovss-colorbar { margin-top: 3px; }
.ovss-colorbar-ramp { height: 10px; border: 1px solid #444; }
.ovss-colorbar-ticks { display: flex; justify-content: space-between; font-size: .75em; color: #374151; }
.ovss-hidden { display: none !important; }
"""

PAGE_JS = """<script>
(() => {
  const cache = new WeakMap();
  function pixels(img) {
    let d = cache.get(img);
    if (d) return d;
    if (!img.complete || !img.naturalWidth) return null;
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext("2d", {willReadFrequently: true});
    g.drawImage(img, 0, 0);
    d = g.getImageData(0, 0, c.width, c.height);
    cache.set(img, d);
    return d;
  }
  function readout(stage, ev) {
    const view = stage.closest(".ovss-view");
    const data = stage.querySelector("img.ovss-data");
    const px = data && pixels(data);
    if (!px) return;
    const r = stage.querySelector("img.ovss-base").getBoundingClientRect();
    const fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
    if (fx < 0 || fy < 0 || fx >= 1 || fy >= 1) return;
    const x = Math.floor(fx * px.width), y = Math.floor(fy * px.height);
    const i = (y * px.width + x) * 4;
    const idx = px.data[i] + 256 * px.data[i + 1];
    const score = px.data[i + 2] / 255;
    const names = JSON.parse(view.dataset.names);
    const name = names[idx];
    const ox = Math.floor(fx * Number(view.dataset.w)), oy = Math.floor(fy * Number(view.dataset.h));
    const out = view.querySelector(".ovss-readout");
    const bg = view.dataset.bgAdded === "1" && idx === 0;
    out.textContent = bg ? `background (no class reached the threshold; best score ${score.toFixed(2)}) at (${ox}, ${oy})`
                         : `${name}: score ${score.toFixed(2)} at (${ox}, ${oy})`;
    out.dataset.class = name; out.dataset.score = score.toFixed(3); out.dataset.x = ox; out.dataset.y = oy;
  }
  function requestHeat(method, name) {
    const box = document.querySelector("#ovss-heat-request textarea, #ovss-heat-request input");
    if (!box) return;
    box.value = JSON.stringify([method, name, Date.now()]);
    box.dispatchEvent(new Event("input", {bubbles: true}));
  }
  document.addEventListener("mousemove", (ev) => {
    const stage = ev.target.closest && ev.target.closest(".ovss-stage");
    if (stage) readout(stage, ev);
  });
  document.addEventListener("click", (ev) => {
    if (!ev.target.closest) return;
    const stage = ev.target.closest(".ovss-stage");
    if (stage) { readout(stage, ev); return; }
    const row = ev.target.closest(".ovss-legend-row");
    if (row) {
      row.closest("tbody").querySelectorAll(".ovss-selected").forEach((e) => e.classList.remove("ovss-selected"));
      row.classList.add("ovss-selected");
      requestHeat(row.dataset.method, row.dataset.class);
    }
  });
})();
</script>"""


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline tool: no telemetry
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f"{DEMO_EXTRA_HINT} ({e})") from e
    return gr


def _private(gr) -> dict[str, Any]:
    """Keyword that keeps a page-internal handler off Gradio's API page (Gradio 6: api_visibility,
    before: show_api)."""
    params = inspect.signature(gr.Button().click).parameters
    return {"api_visibility": "private"} if "api_visibility" in params else {"show_api": False}


def banner_html(models) -> str:
    """The backbone in use and, for a demo model, what it can and cannot label."""
    shown = os.path.basename(models.backbone.rstrip("/")) if os.path.exists(models.backbone) else models.backbone
    try:
        pre = models.pretrained
    except Exception:  # noqa: BLE001 - a backbone that fails to load says so when it is used
        pre = None
    name = pre.name if pre is not None else None
    note = MODEL_NOTES.get(name or "")
    desc = html.escape(pre.description) if pre is not None and pre.description and not note else ""
    text = (f"Backbone <b>{html.escape(shown)}</b>" + (f" ({html.escape(name)})" if name and name != shown else "")
            + f" on {html.escape(str(models.device))}" + (f": {desc}" if desc else "") + (f": {note}" if note else ""))
    missing = [m for m in models.methods if models.missing(m)]
    if missing:
        text += (f"<br>Not ready on this server (weights missing; the run says how to get them): "
                 f"{html.escape(', '.join(missing))}.")
    return f'<div class="ovss-banner{"" if note else " ovss-plain"}" data-backbone="{html.escape(shown)}">{text}</div>'


def build_demo(backbone: str = "clip-vit-b16", weights: str | os.PathLike | None = None,
               methods: Sequence[str] | None = None, device: str = "auto",
               default_methods: Sequence[str] | None = None, max_pixels: int | None = None,
               tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
               models=None, preload: bool = False):
    """The Gradio page (a `gr.Blocks`; serve it with `launch_demo`, which adds its CSS and script).
    `methods` limits the methods offered (default: all); `default_methods` are ticked at start
    (default: the first). The runner is `blocks.ovss_runner` (a `DemoRunner`); `blocks.ovss_steps`
    is the Segment button's generator and `blocks.ovss_on_segment` runs it to its last update."""
    gr = _import_gradio()
    from ..core.version import __version__
    from .model_cache import ModelCache

    models = models or ModelCache(backbone, weights=weights, device=device, methods=methods,
                                  tokenizer=tokenizer, cache_dir=cache_dir)
    if preload:
        models.clip()
    runner = DemoRunner(models, max_pixels=max_pixels)
    offered = runner.methods
    ticked = [m for m in (default_methods or offered[:1]) if m in offered]
    examples = example_rows()
    private = _private(gr)

    with gr.Blocks(title="ovss demo") as demo:
        gr.Markdown(f"## ovss: open-vocabulary semantic segmentation (v{__version__})")
        gr.HTML(banner_html(models), elem_id="ovss-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300, elem_id="ovss-inputs"):
                classes = gr.Textbox(label="Classes", placeholder="cat, sofa|couch, wooden floor", lines=2,
                                     elem_id="ovss-classes", info="commas between classes, | between synonyms",
                                     render=False)
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"],
                                 elem_id="ovss-image", height=260)
                if examples:  # right under the image (on a phone too), filling the image and its classes
                    gr.Examples(examples, inputs=[image, classes], label="Examples (synthetic scenes)",
                                elem_id="ovss-examples")
                classes.render()
                chosen = gr.CheckboxGroup(offered, value=ticked, label="Methods", elem_id="ovss-methods")
                preset = gr.Dropdown(preset_choices(offered), value=NO_PRESET, label="Preset",
                                     info="applied to the methods that have it", elem_id="ovss-preset")
                run = gr.Button("Segment", variant="primary", elem_id="ovss-run")
            with gr.Column(scale=2, min_width=300, elem_id="ovss-results"):
                progress = gr.HTML('<div class="ovss-msg ovss-info" role="status">Pick an example or upload an '
                                   'image, type classes, press Segment.</div>', elem_id="ovss-progress")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="ovss-opacity")
                panels: dict[str, dict[str, Any]] = {}
                with gr.Row(elem_id="ovss-grid", equal_height=False):
                    for m in offered:
                        with gr.Column(visible=False, min_width=250, elem_id=f"ovss-panel-{m}",
                                       elem_classes=["ovss-panel"]) as col:
                            view = gr.HTML(elem_id=f"ovss-view-{m}")
                            heat = gr.HTML(elem_id=f"ovss-heat-{m}")
                            with gr.Row():
                                dl_png = gr.DownloadButton("Index PNG", size="sm", elem_id=f"ovss-dl-png-{m}")
                                dl_json = gr.DownloadButton("JSON sidecar", size="sm", elem_id=f"ovss-dl-json-{m}")
                        panels[m] = {"col": col, "view": view, "heat": heat, "index_png": dl_png, "json": dl_json}
        heat_request = gr.Textbox(elem_id="ovss-heat-request", elem_classes=["ovss-hidden"], show_label=False,
                                  container=False)
        run_state = gr.State(None)

        outputs: list[Any] = [progress, run]
        for m in offered:
            p = panels[m]
            outputs += [p["col"], p["view"], p["heat"], p["index_png"], p["json"]]
        outputs.append(run_state)
        keep = gr.update  # an output left as it is

        def frame(progress_html: Any = None, busy: bool | None = None, panel_updates: dict | None = None,
                  hide_all: bool = False, state: Any = None) -> list[Any]:
            out: list[Any] = [keep() if progress_html is None else progress_html,
                              keep() if busy is None else gr.update(interactive=not busy,
                                                                     value="Segmenting..." if busy else "Segment")]
            for m in offered:
                if panel_updates and m in panel_updates:
                    r = panel_updates[m]
                    out += [gr.update(visible=True), r["view"], r["heat"], gr.update(value=r["index_png"]),
                            gr.update(value=r["json"])]
                elif hide_all:
                    out += [gr.update(visible=False), "", "", gr.update(value=None), gr.update(value=None)]
                else:
                    out += [keep()] * 5
            out.append(keep() if state is None else state)
            return out

        def steps(image_value, classes_value, methods_value, preset_value):
            """The Segment button: a stream of page updates (progress, then each method's panel)."""
            try:
                prog = None
                for kind, value in runner.run(image_value, classes_value, methods_value, preset_value):
                    if kind == "progress":
                        yield frame(value.html(), busy=True, hide_all=prog is None)
                        prog = value
                    elif kind == "panel":
                        m, panel = value
                        yield frame(prog.html(), panel_updates={m: panel})
                    else:
                        summary, run_id = value
                        yield frame(message_html(summary.head, "info", summary.lines), busy=False, state=run_id)
            except (ValueError, KeyError, FileNotFoundError) as e:
                yield frame(message_html(e.args[0] if e.args else str(e)), busy=False)
            except Exception as e:  # the page must say something and free its button
                log.exception("demo run failed")
                yield frame(message_html(f"the run failed: {type(e).__name__}: {e} (the server log has "
                                         "the details)"), busy=False)

        def on_upload(image_value):
            """An upload is checked at once: a file that is no image is cleared, with the reason."""
            try:
                h, w = runner.check_image(image_value)
            except ValueError as e:
                return gr.update(value=None), message_html(e.args[0])
            return keep(), message_html(f"Image ready ({w}x{h}). Type classes and press Segment.", "info")

        def on_heat(request: str, run_id: str | None):
            """A legend row was clicked: that class's heatmap in that method's panel."""
            out = [keep() for _ in offered]
            try:
                method, name, _ = json.loads(request)
            except (ValueError, TypeError):
                return out
            if method in offered:
                got = runner.heat(run_id, method, name)
                out[offered.index(method)] = got if got is not None else message_html(
                    "this result is no longer kept: run it again", "error")
            return out

        inputs = [image, classes, chosen, preset]
        # bring the result area (where the progress shows) into view as the run starts
        to_progress = ("(...args) => { const el = document.getElementById('ovss-progress'); "
                       "if (el) el.scrollIntoView({block: 'nearest'}); return args; }")
        run.click(steps, inputs=inputs, outputs=outputs, show_progress="hidden", preprocess=False,
                  concurrency_id="segment", js=to_progress, **private)
        classes.submit(steps, inputs=inputs, outputs=outputs, show_progress="hidden", preprocess=False,
                       concurrency_id="segment", js=to_progress, **private)
        image.upload(on_upload, inputs=image, outputs=[image, progress], preprocess=False, show_progress="hidden",
                     **private)
        heat_request.change(on_heat, inputs=[heat_request, run_state], outputs=[panels[m]["heat"] for m in offered],
                            show_progress="hidden", **private)
        opacity.change(None, inputs=opacity, outputs=None,
                       js="(v) => { document.documentElement.style.setProperty('--ovss-alpha', v); return []; }",
                       **private)

        def segment(image: Any, classes: str, methods: list[str] | None = None, preset: str = NO_PRESET) -> dict:
            """Segment an image with one or more methods; per method the class list used, whether a
            background class was added, the classes' colours, areas and mean scores, and the index PNG
            (base64; pixel values are the class indices).

            Args:
                image: the image file (PNG, JPEG, WebP, BMP, TIFF or GIF)
                classes: class names separated by commas, synonyms by "|", e.g. "cat, sofa|couch"
                methods: the methods to run (default: the page's first)
                preset: a preset name, applied to the methods that have it, or "(none)"
            """
            from ..data.io import _json_default
            from .serve import answer_dict

            results: dict[str, Any] = {}
            summary = ""
            for kind, value in runner.run(image, classes, methods or offered[:1], preset):
                if kind == "panel":
                    m, panel = value
                    results[m] = answer_dict(panel["result"], "png")
                elif kind == "done":
                    summary = value[0]
            return json.loads(json.dumps({"summary": summary, "methods": results}, default=_json_default))

        # real types for Gradio's API page (this module's annotations are strings)
        segment.__annotations__ = {"image": getattr(gr, "FileData", Any), "classes": str,
                                   "methods": list[str] | None, "preset": str, "return": dict[str, Any]}
        if hasattr(gr, "api"):  # the page's one public endpoint on Gradio's API page
            gr.api(segment, api_name="segment")

    demo.ovss_runner = runner
    demo.ovss_steps = steps
    demo.ovss_offered = offered

    def on_segment(image_value, classes_value, methods_value, preset_value):
        last = None
        for last in steps(image_value, classes_value, methods_value, preset_value):
            pass
        return last

    demo.ovss_on_segment = on_segment
    demo.ovss_head = PAGE_JS
    demo.ovss_css = PAGE_CSS
    demo.queue(default_concurrency_limit=1)  # one segmentation at a time; the rest wait in the queue
    return demo


def launch_demo(demo, host: str = "127.0.0.1", port: int | None = 7860, **kwargs: Any):
    """`demo.launch` with the page's CSS and script, and the example scenes and the run folder
    allowed as files to serve."""
    runner = demo.ovss_runner
    allowed = [str(EXAMPLES_DIR), str(runner.out_root)]
    params = inspect.signature(demo.launch).parameters
    if "css" in params:
        kwargs.setdefault("css", demo.ovss_css)
    if "head" in params:
        kwargs.setdefault("head", demo.ovss_head)
    return demo.launch(server_name=host, server_port=port, share=False,
                       allowed_paths=[*allowed, *kwargs.pop("allowed_paths", [])], **kwargs)


# ---------------------------------------------------------------------------------------- CLI


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """`ovss demo`; imports nothing heavy until the command runs."""
    s = subparsers.add_parser("demo", help="web page to try methods on images (Gradio; ovss[demo])",
                              description="A web page (Gradio) to try methods on an image: overlays with "
                                          "pointer readout, legends, score heatmaps, downloads. Needs ovss[demo].")
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
