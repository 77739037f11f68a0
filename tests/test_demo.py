"""`ovss demo`: the page's handlers without a browser, and the page in Debian's chromium.

The browser tests drive /usr/bin/chromium (apt) headless through Playwright (the pip package; no
browser download) on one page served in this process for the shipped demo model `tiny-synthetic`.
They share that page, in order: a three-method run made slow on purpose (`OVSS_DEMO_STEP_DELAY`)
whose progress must be visible while the button is disabled, colours per class name across
methods, the pointer readout against the Python API, legend clicks and the heatmap's colour bar,
the opacity slider, an upload that is no image, the narrow-screen layout and Gradio's API page.
Screenshots (mid-run and after the run) go to the test's temp folder; with
OVSS_UPDATE_SCREENSHOT=1 they are also written to docs/ (demo-running.png, demo.png), the ones the
README shows (a real segmentation by the demo model of the synthetic world, not by real CLIP).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web demo needs ovss[demo] (gradio)")

from ovss.apps.demo import (
    NO_PRESET,
    STEP_DELAY_ENV,
    Progress,
    build_demo,
    example_rows,
    launch_demo,
    legend_html,
    preset_choices,
)
from ovss.core.result import Result
from ovss.core.viz import palette_for

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = "sky, grass|lawn, red ball"
H, W = 180, 240  # the test picture's size
PANEL = 5  # outputs per method: column, view, heat, index PNG, JSON


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def make_image(path: Path) -> Path:
    """A picture made here: sky over grass with a red ball, a little noise."""
    h, w = H, W
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = (110, 160, 230)
    a[h // 2 :] = (60, 150, 60)
    yy, xx = np.mgrid[:h, :w]
    a[(yy - 0.6 * h) ** 2 + (xx - 0.62 * w) ** 2 < (0.18 * h) ** 2] = (210, 30, 30)
    rng = np.random.default_rng(0)
    a = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return path


def from_uri(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def imgs(html: str) -> dict[str, str]:
    """The data: URLs of a panel's images by class attribute."""
    return dict(re.findall(r'<img class="([\w-]+)"[^>]*?src="(data:[^"]+)"', html))


def swatches(view: str) -> dict[str, list[int]]:
    """class name -> [r, g, b] from a legend's rows."""
    rows = re.findall(r'data-class="([^"]+)"[^>]*>.*?data-rgb="(\d+),(\d+),(\d+)"', view)
    return {name: [int(r), int(g), int(b)] for name, r, g, b in rows}


@pytest.fixture(scope="module")
def weights(tiny_clip_dir) -> Path:
    return tiny_clip_dir / "model.safetensors"


@pytest.fixture(scope="module")
def demo(weights):
    d = build_demo(str(weights), device="cpu", methods=["maskclip", "sclip", "naclip"],
                   default_methods=["maskclip"], preload=True)
    yield d
    d.close()


# ---------------------------------------------------------------------------------- without browser


def test_examples_and_presets():
    rows = example_rows()
    assert [Path(r[0]).name for r in rows] == ["scene_a.png", "scene_b.png"]
    assert rows[0][1].split(", ")[:3] == ["sky", "grass", "water"] and len(rows[0][1].split(", ")) == 11
    choices = preset_choices(["maskclip", "sclip"])
    assert choices[0] == NO_PRESET and "voc21" in choices and "official-voc20" in choices


def test_segment_streams_progress_then_panels(demo, weights, tmp_path):
    """The Segment button's generator: the button disabled and a progress block naming each step
    before any result, then each method's panel; at the end the button back and a summary that
    says which method added a background class. Every panel matches the Python API."""
    import ovss
    from ovss.data.io import read_index_png

    path = make_image(tmp_path / "pic.png")
    frames = list(demo.ovss_steps({"path": str(path)}, CLASSES, ["maskclip", "sclip"], "voc21"))
    offered = demo.ovss_offered
    first, last = frames[0], frames[-1]
    assert first[1]["interactive"] is False and "Segmenting" in first[1]["value"]
    assert last[1]["interactive"] is True
    steps = [f[0] for f in frames[:-1] if isinstance(f[0], str) and "ovss-progress" in f[0]]
    text = " | ".join(html.unescape(re.sub(r"<[^>]+>", " ", s)) for s in steps)
    for m in ("maskclip", "sclip"):  # each step of each method was shown, in this order
        i = text.index(f"{m} (")
        assert text.index("loading weights", i) < text.index("encoding 3 classes", i) < text.index("segmenting", i)
    summary = html.unescape(re.sub(r"<[^>]+>", " ", last[0]))
    assert "Segmented into 3 classes" in summary
    assert "sclip (voc21): 3 classes + background (added" in summary and "maskclip: 3 classes," in summary
    assert "maskclip has no preset 'voc21'" in summary  # ran with its defaults, and says so
    panels = {}
    for k, m in enumerate(offered):
        col, view, heat, dl_png, dl_json = last[2 + PANEL * k : 2 + PANEL * (k + 1)]
        panels[m] = (col, view, heat, dl_png, dl_json)
    assert panels["naclip"][0] == {"__type__": "update"}  # not asked for: left hidden
    shown = {m: [f for f in frames if isinstance(f[2 + PANEL * offered.index(m) + 1], str)
                 and "ovss-view" in f[2 + PANEL * offered.index(m) + 1]] for m in ("maskclip", "sclip")}
    colours = {}
    for m, preset in (("maskclip", None), ("sclip", "voc21")):
        frame = shown[m][0]
        k = 2 + PANEL * offered.index(m)
        col, view, heat = frame[k : k + 3]
        assert col["visible"] is True
        ref = ovss.load(m, backbone=str(weights), preset=preset, device="cpu")(path, CLASSES)
        assert ref.background_added == (m == "sclip")
        # the data layer the pointer reads: class index in red + 256 green, score in blue
        data = from_uri(imgs(view)["ovss-data"])
        np.testing.assert_array_equal(data[..., 0].astype(int) + 256 * data[..., 1].astype(int), ref.labels)
        win = np.take_along_axis(ref.scores, ref.labels[None].astype(int), 0)[0]
        if ref.background_added:
            win = np.where(ref.labels == 0, ref.scores[1:].max(0), win)
        assert np.abs(data[..., 2] / 255 - win).max() <= 0.5 / 255 + 1e-6
        # one legend: present classes by area, colours by name, the added background marked
        areas = ref.areas()
        rows = re.findall(r'data-class="([^"]+)"', view.split('class="ovss-legend"')[1])
        assert rows == sorted([n for n, a in areas.items() if a > 0], key=lambda n: -areas[n])
        for n in rows:
            assert f"{100 * areas[n]:.1f}%" in view or areas[n] < 0.001
        absent = [n for n, a in areas.items() if a == 0 and n != "background"]
        if absent:
            assert "not present" in view and all(n in view.split("ovss-absent")[1] for n in absent)
        colours[m] = swatches(view)
        if ref.background_added and "background" in rows:
            assert colours[m]["background"] == [0, 0, 0] and "(added" in view
        # the heatmap opens on the largest requested class, with a 0-1 colour bar
        largest = max((n for n in ref.class_names if not (ref.background_added and n == "background")),
                      key=lambda n: areas[n])
        assert f'data-class="{largest}"' in heat and "ovss-colorbar" in heat and ">0<" in heat and ">1<" in heat
        assert from_uri(imgs(heat)["ovss-heat-img"]).shape == (H, W, 3)
        # downloads: the index PNG is the label map, the sidecar says whether a background was added
        final = frame[k : k + PANEL]
        np.testing.assert_array_equal(read_index_png(final[3]["value"]), ref.labels)
        side = json.loads(Path(final[4]["value"]).read_text())
        assert side["class_names"] == ref.class_names and side["background_added"] == ref.background_added
        assert side["preset"] == preset and side["classes_input"] == CLASSES
    common = set(colours["maskclip"]) & set(colours["sclip"]) - {"background"}
    assert common and all(colours["maskclip"][n] == colours["sclip"][n] for n in common)
    names = ["sky", "grass", "red ball"]
    by_name = dict(zip(names, palette_for(names).tolist()))
    assert all(colours["maskclip"][n] == by_name[n] for n in colours["maskclip"])
    # a legend click's heatmap, through the page's handler
    run_id = last[-1]
    other = demo.ovss_runner.heat(run_id, "sclip", "red ball")
    assert 'data-class="red ball"' in other and demo.ovss_runner.heat("gone", "sclip", "sky") is None


def test_example_scene_runs(demo):
    path, classes = example_rows()[1]
    out = demo.ovss_on_segment(path, classes, ["maskclip"], NO_PRESET)  # the last update of the run
    assert "Segmented into 11 classes" in out[0] and "maskclip: 11 classes," in out[0]
    assert out[1]["interactive"] is True and isinstance(out[-1], str)  # the run's id, for heatmap clicks


@pytest.mark.parametrize("image, classes, methods, message", [
    (None, "cat", ["maskclip"], "upload an image"),
    ("notes", "cat", ["maskclip"], "is not an image this page can read"),
    ("cut", "cat", ["maskclip"], "cannot be decoded"),
    ("pic", "", ["maskclip"], "the class list is empty"),
    ("pic", "cat, Cat", ["maskclip"], "duplicate class names"),
    ("pic", "cat", [], "pick at least one method"),
])
def test_bad_input_is_a_message_and_frees_the_button(demo, tmp_path, image, classes, methods, message):
    img = str(make_image(tmp_path / "pic.png")) if image in ("pic", "cut") else image
    if image == "notes":
        img = str(tmp_path / "notes.png")
        Path(img).write_text("not an image")
    if image == "cut":  # a PNG cut inside its pixel data: the header reads, the pixels do not
        Path(img).write_bytes(Path(img).read_bytes()[:400])
    frames = list(demo.ovss_steps(img, classes, methods, NO_PRESET))
    assert len(frames) == 1
    assert 'role="alert"' in frames[0][0] and message in frames[0][0], frames[0][0]
    assert frames[0][1]["interactive"] is True


def test_legend_of_many_classes_lists_present_by_area_and_names_the_absent():
    names = [f"class {i}" for i in range(200)]
    labels = np.zeros((20, 30), np.int32)
    labels[:, 10:] = 7
    labels[:5, :5] = 150
    r = Result(labels=labels, scores=np.zeros((200, 20, 30), np.float32), class_names=names,
               palette=palette_for(names), mean_scores=[0.5] * 200)
    legend = legend_html(r, "maskclip")
    assert re.findall(r'data-class="([^"]+)"', legend) == ["class 7", "class 0", "class 150"]  # by area
    assert "197 classes not present" in legend and "class 199" in legend.split("ovss-absent")[1]


def test_progress_block_has_a_bar_and_each_method():
    p = Progress(["maskclip", "sclip"])
    p.set("maskclip", "encoding 11 classes", 0.25)
    h = p.html()
    assert 'value="25"' in h and "maskclip (1/2): encoding 11 classes" in h and "sclip</b>: waiting" in h


def test_demo_without_gradio_is_a_clear_error(monkeypatch, capsys):
    import importlib.util

    from ovss.apps import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert cli.main(["demo", "--backbone", "x"]) == 2
    assert 'pip install "ovss[demo]"' in capsys.readouterr().err


# -------------------------------------------------------------------------------------- in a browser


class Page:
    """One page of the demo on `tiny-synthetic` in chromium, shared by the browser tests."""

    def __init__(self, tmp: Path):
        chromium = chromium_path()
        if chromium is None:
            pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): the browser tests need it")
        sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.demo = build_demo("tiny-synthetic", device="cpu", methods=["maskclip", "sclip", "naclip"],
                               default_methods=["maskclip"], preload=True)
        launch_demo(self.demo, "127.0.0.1", self.port, prevent_thread_lock=True, quiet=True)
        self.hosts: set[str] = set()
        self.pw = sync_api.sync_playwright().start()
        self.ctx = self.pw.chromium.launch_persistent_context(
            str(tmp / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        self.page = self.ctx.new_page()
        self.page.on("request", lambda r: self.hosts.add(r.url.split("/")[2]) if "://" in r.url else None)
        self.page.set_default_timeout(60_000)
        self.page.goto(self.url + "/")
        self.page.locator("#ovss-run").wait_for(state="visible")
        self.shots = tmp

    def close(self) -> None:
        self.ctx.close()
        self.pw.stop()
        self.demo.close()

    def view(self, m: str):
        return self.page.locator(f"#ovss-view-{m} .ovss-view")

    def shot(self, name: str) -> Path:
        """A full-page screenshot, made small (256-colour PNG)."""
        raw = self.shots / f"raw-{name}"
        self.page.screenshot(path=str(raw), full_page=True)
        out = self.shots / name
        Image.open(raw).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        return out


SCENE, SCENE_CLASSES = example_rows()[1]  # scene_b.png: water, brick wall, snow, a square, a triangle, a star
RUN = ["maskclip", "sclip", "naclip"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    p = Page(tmp_path_factory.mktemp("browser"))
    yield p
    p.close()
    assert p.hosts == {f"127.0.0.1:{p.port}"}, p.hosts  # the page loaded nothing from elsewhere


@pytest.fixture(scope="module")
def reference():
    """The Python API's results for the run the page makes (sclip and naclip with voc21)."""
    import ovss

    return {m: ovss.load(m, backbone="tiny-synthetic", preset=None if m == "maskclip" else "voc21",
                         device="cpu")(SCENE, SCENE_CLASSES) for m in RUN}


def test_page_progress_is_visible_during_a_slow_run(page, monkeypatch):
    """Three methods with each step slowed to 0.5 s: while it runs the result area shows which
    method does what (in view, not 0 px tall) and the button is disabled; then the grid."""
    pg = page.page
    assert "tiny-synthetic" in pg.locator("#ovss-banner").inner_text()
    banner = pg.locator("#ovss-banner").inner_text()
    assert "sky, grass, water, sand, brick wall, snow, road" in banner and "cannot" in banner
    pg.locator("#ovss-image input[type=file]").set_input_files(SCENE)
    pg.locator("#ovss-progress .ovss-info").filter(has_text="Image ready (192x192)").wait_for()
    pg.locator("#ovss-classes textarea").fill(SCENE_CLASSES)
    for m in ("sclip", "naclip"):
        pg.locator("#ovss-methods").get_by_label(m).check()
    pg.locator("#ovss-preset input").click()
    pg.get_by_role("option", name="voc21", exact=True).click()
    monkeypatch.setenv(STEP_DELAY_ENV, "0.5")
    t0 = time.perf_counter()
    pg.locator("#ovss-run").click()
    block = pg.locator("#ovss-progress .ovss-progress:not(.ovss-finished)")
    block.wait_for(state="visible", timeout=10_000)
    seen, shot, disabled = set(), None, 0
    while time.perf_counter() - t0 < 60 and block.count():
        try:
            text = block.inner_text(timeout=1000)
            box = pg.locator("#ovss-progress").bounding_box()
        except Exception:  # noqa: BLE001, S112 - the block was replaced meanwhile: look again
            continue
        for step in ("loading weights", "weights loaded", "encoding 11 classes", "segmenting"):
            if f"): {step}" in text:
                seen.add(step)
                if not pg.locator("#ovss-run").is_disabled():  # only once the run has ended
                    assert pg.locator("#ovss-progress .ovss-info").count(), text
                else:
                    disabled += 1
                assert box["height"] >= 40 and -2 <= box["y"] < 900 - 40, box  # on screen, not 0 px tall
        if shot is None and "sclip (2/3)" in text:
            shot = page.shot("demo-running.png")
        pg.wait_for_timeout(100)
    assert {"encoding 11 classes", "segmenting"} <= seen and seen & {"loading weights", "weights loaded"}, seen
    assert shot is not None and disabled >= 3
    done = pg.locator("#ovss-progress .ovss-info").filter(has_text="Segmented into 11 classes")
    done.wait_for(timeout=60_000)
    assert pg.locator("#ovss-run").is_enabled()
    text = done.inner_text()
    assert "sclip (voc21): 11 classes + background (added" in text and "maskclip: 11 classes," in text
    for m in RUN:
        page.view(m).wait_for(state="visible")
    boxes = [pg.locator(f"#ovss-panel-{m}").bounding_box() for m in RUN]
    assert boxes[0]["y"] == pytest.approx(boxes[1]["y"], abs=2) and boxes[0]["x"] < boxes[1]["x"]  # side by side
    pg.wait_for_timeout(300)
    final = page.shot("demo.png")
    for name, path in (("demo-running.png", shot), ("demo.png", final)):
        assert path.stat().st_size < 600_000 and Image.open(path).size[0] == 1280
        if os.environ.get("OVSS_UPDATE_SCREENSHOT") == "1":
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copy(path, REPO / "docs" / name)


def test_page_colours_follow_class_names_across_methods(page, reference):
    """The same class has the same colour in every panel (sclip and naclip added a background,
    maskclip did not); the background is black and marked; rows are by area; absent are named."""
    colours = {}
    for m in RUN:
        legend = page.view(m).locator(".ovss-legend")
        rows = legend.locator(".ovss-legend-row")
        names = [rows.nth(i).get_attribute("data-class") for i in range(rows.count())]
        areas = reference[m].areas()
        assert names == sorted([n for n, a in areas.items() if a > 0], key=lambda n: -areas[n])
        colours[m] = {n: page.page.evaluate(
            "(el) => getComputedStyle(el).backgroundColor", rows.nth(i).locator(".ovss-swatch").element_handle())
            for i, n in enumerate(names)}
        absent = [n for n, a in areas.items() if a == 0 and n != "background"]
        if absent:
            text = page.view(m).locator(".ovss-absent").inner_text()
            assert f"{len(absent)} class" in text
    assert reference["sclip"].background_added and not reference["maskclip"].background_added
    pal = dict(zip(reference["maskclip"].class_names, palette_for(reference["maskclip"].class_names).tolist()))
    for m in RUN:
        for n, css in colours[m].items():
            want = [0, 0, 0] if n == "background" else pal[n]
            assert css == "rgb({}, {}, {})".format(*want), (m, n, css)
    shared = set(colours["maskclip"]) & set(colours["sclip"])
    assert len(shared) >= 2
    if "background" in colours["sclip"]:
        assert "(added" in page.view("sclip").locator('.ovss-legend-row[data-class="background"]').inner_text()


def test_page_pointer_readout_matches_the_python_api(page, reference):
    """Hovering and clicking the overlay name the class and score under the pointer."""
    pg = page.page
    for m, (fx, fy) in (("maskclip", (0.3, 0.75)), ("sclip", (0.1, 0.1))):
        stage = page.view(m).locator(".ovss-stage")
        stage.scroll_into_view_if_needed()
        box = stage.bounding_box()
        ref = reference[m]
        for act in ("hover", "click"):
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            (pg.mouse.move if act == "hover" else pg.mouse.click)(x, y)
            out = page.view(m).locator(".ovss-readout")
            pg.wait_for_function("(el) => el.dataset.class !== undefined", arg=out.element_handle())
            ox, oy = int(out.get_attribute("data-x")), int(out.get_attribute("data-y"))
            assert abs(ox - fx * ref.size[1]) <= 2 and abs(oy - fy * ref.size[0]) <= 2
            k = int(ref.labels[oy, ox])
            assert out.get_attribute("data-class") == ref.class_names[k], (m, act, out.inner_text())
            p = ref.scores[k, oy, ox] if not (ref.background_added and k == 0) else ref.scores[1:, oy, ox].max()
            assert abs(float(out.get_attribute("data-score")) - p) <= 1 / 255 + 1e-3
            assert ref.class_names[k] in out.inner_text()
            fx, fy = fx + 0.05, fy + 0.02


def test_page_legend_click_shows_that_class_heatmap(page, reference):
    pg = page.page
    ref = reference["maskclip"]
    areas = ref.areas()
    heat = pg.locator("#ovss-heat-maskclip .ovss-heat")
    assert heat.get_attribute("data-class") == max(areas, key=areas.get)  # opens on the largest class
    ticks = pg.locator("#ovss-heat-maskclip .ovss-colorbar-ticks").inner_text().split()
    assert ticks[0] == "0" and ticks[-1] == "1"
    rows = page.view("maskclip").locator(".ovss-legend-row")
    target = rows.nth(1).get_attribute("data-class")
    rows.nth(1).click()
    pg.locator(f'#ovss-heat-maskclip .ovss-heat[data-class="{target}"]').wait_for(timeout=20_000)
    assert target in pg.locator("#ovss-heat-maskclip").inner_text()


def test_page_opacity_slider_sets_every_overlay(page):
    pg = page.page
    layer = page.view("sclip").locator("img.ovss-layer")
    assert float(pg.evaluate("(el) => getComputedStyle(el).opacity", layer.element_handle())) == pytest.approx(0.5)
    box = pg.locator("#ovss-opacity input[type=number]")
    box.fill("0.9")
    box.press("Enter")
    pg.wait_for_function("(el) => Math.abs(getComputedStyle(el).opacity - 0.9) < 1e-3", arg=layer.element_handle(),
                         timeout=10_000)


def test_page_answers_an_upload_that_is_no_image(page, tmp_path):
    pg = page.page
    bad = tmp_path / "notes.png"
    bad.write_text("this is a text file with an image's name")
    pg.locator("#ovss-image input[type=file]").set_input_files(str(bad))
    msg = pg.locator("#ovss-progress .ovss-error")
    msg.wait_for(timeout=20_000)
    assert "'notes.png' is not an image this page can read" in msg.inner_text()
    assert msg.get_attribute("role") == "alert" and msg.is_visible()
    pg.wait_for_timeout(300)
    assert pg.locator("#ovss-image img").count() == 0  # the broken file is not left in the box
    pg.locator("#ovss-run").click()  # pressing Segment anyway says what is missing
    pg.locator("#ovss-progress .ovss-error").filter(has_text="upload an image").wait_for(timeout=20_000)


def test_page_on_a_phone_keeps_examples_beside_the_image(page):
    pg = page.page
    pg.set_viewport_size({"width": 390, "height": 844})
    try:
        pg.wait_for_timeout(300)
        img = pg.locator("#ovss-image").bounding_box()
        ex = pg.locator("#ovss-examples").bounding_box()
        cls = pg.locator("#ovss-classes").bounding_box()
        assert img["y"] + img["height"] <= ex["y"] + 1 and ex["y"] + ex["height"] <= cls["y"] + 1
        assert ex["y"] - (img["y"] + img["height"]) < 80  # right under the image, before the other inputs
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the phone
    finally:
        pg.set_viewport_size({"width": 1280, "height": 900})


def test_gradio_api_page_lists_only_segment(page):
    """Gradio's API page: one named endpoint, /segment; the page's own handlers are not there."""
    httpx = pytest.importorskip("httpx")
    info = httpx.get(page.url + "/gradio_api/info", timeout=30).json()
    assert list(info["named_endpoints"]) == ["/segment"] and not info.get("unnamed_endpoints")
    params = [p["parameter_name"] for p in info["named_endpoints"]["/segment"]["parameters"]]
    assert params == ["image", "classes", "methods", "preset"]
    client = pytest.importorskip("gradio_client")
    c = client.Client(page.url, verbose=False)
    out = c.predict(client.handle_file(SCENE), SCENE_CLASSES, ["maskclip", "sclip"], "voc21", api_name="/segment")
    assert set(out["methods"]) == {"maskclip", "sclip"}
    assert out["methods"]["sclip"]["class_names"][0] == "background" and out["methods"]["sclip"]["background_added"]
    assert out["methods"]["maskclip"]["background_added"] is False
