"""`ovss demo`: the button's function without a browser, and the page in Debian's chromium.

The browser test drives /usr/bin/chromium (apt) headless through Playwright (the pip package; no
browser download) on a page serving the shipped demo model `tiny-synthetic`: it uploads the shipped
example scene_b.png, types its class list, runs two methods and checks both overlays and legends
against the Python API. Its screenshot goes to the test's temp folder; with
OVSS_UPDATE_SCREENSHOT=1 it is also copied to docs/demo.png, the one the README shows (a real
segmentation by the demo model of the synthetic world, not by real CLIP).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web demo needs ovss[demo] (gradio)")

from ovss.apps.demo import NO_PRESET, build_demo, example_rows, heatmap_for, launch_demo, preset_choices

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = "sky, grass|lawn, red ball"
H, W = 180, 240  # the test picture's size


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


@pytest.fixture(scope="module")
def weights(tiny_clip_dir) -> Path:
    return tiny_clip_dir / "model.safetensors"


@pytest.fixture(scope="module")
def demo(weights):
    d = build_demo(str(weights), device="cpu", methods=["maskclip", "sclip", "naclip"],
                   default_methods=["maskclip"], preload=True)
    yield d
    d.close()


@pytest.fixture(scope="module")
def synthetic_demo():
    """The page on the shipped demo model (1.55M parameters, loads in well under a second), so the
    browser test and its screenshot show a real segmentation of a scene from its world."""
    d = build_demo("tiny-synthetic", device="cpu", methods=["maskclip", "sclip", "naclip"],
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


def test_button_function_outputs(demo, weights, tmp_path):
    """The function the Segment button calls, called directly: per method the overlay, legend,
    label map (equal to the Python API's), heatmap and the two downloads."""
    import ovss

    path = make_image(tmp_path / "pic.png")
    seen = []
    out = demo.ovss_on_segment(str(path), CLASSES, ["maskclip", "sclip"], "voc21",
                               progress=lambda frac, desc=None: seen.append((frac, desc)))
    assert len(out) == 3 * 8 + 2
    assert seen[-1] == (1.0, "done") and any("sclip" in (d or "") for _, d in seen)
    state, status = out[-2], out[-1]
    assert "maskclip has no preset 'voc21'" in status  # ran with its defaults, and says so
    for k, (m, preset) in enumerate([("maskclip", None), ("sclip", "voc21"), ("naclip", None)]):
        col, overlay, legend, label_map, heat_class, heatmap, dl_png, dl_json = out[8 * k : 8 * k + 8]
        if m == "naclip":  # not asked for: hidden
            assert col["visible"] is False and overlay is None
            continue
        ref = ovss.load(m, backbone=str(weights), preset=preset, device="cpu")(path, CLASSES)
        assert col["visible"] is True
        assert overlay.size[1] == H and overlay.size[0] > W  # the legend sits to the right
        for name, area in ref.areas().items():
            if area > 0:
                assert name in legend and f"{100 * area:.1f}%" in legend
        np.testing.assert_array_equal(np.asarray(label_map), ref.palette[ref.labels])
        assert heat_class["choices"] == ref.class_names and heat_class["value"] in ref.class_names
        assert heatmap.size == (W, H)
        from ovss.data.io import read_index_png

        np.testing.assert_array_equal(read_index_png(dl_png["value"]), ref.labels)
        side = json.loads(Path(dl_json["value"]).read_text())
        assert [c["name"] for c in side["classes"]] == ref.class_names and side["preset"] == preset
        other = heatmap_for(state, m, ref.class_names[-1])
        assert other.size == (W, H)


def test_example_scene_runs(demo):
    path, classes = example_rows()[1]
    out = demo.ovss_on_segment(path, classes, ["maskclip"], NO_PRESET, progress=lambda *a, **k: None)
    assert out[-1] == "segmented into 11 classes with maskclip" and out[0]["visible"] is True


@pytest.mark.parametrize("image, classes, methods, message", [
    (None, "cat", ["maskclip"], "upload an image"),
    ("notes", "cat", ["maskclip"], "not a readable image"),
    ("pic", "", ["maskclip"], "the class list is empty"),
    ("pic", "cat, Cat", ["maskclip"], "duplicate class names"),
    ("pic", "cat", [], "pick at least one method"),
])
def test_button_bad_input_is_a_message(demo, tmp_path, image, classes, methods, message):
    img = str(make_image(tmp_path / "pic.png")) if image == "pic" else image
    if image == "notes":
        img = str(tmp_path / "notes.png")
        Path(img).write_text("not an image")
    with pytest.raises(gr.Error, match=message):
        demo.ovss_on_segment(img, classes, methods, NO_PRESET, progress=lambda *a, **k: None)


def test_demo_without_gradio_is_a_clear_error(monkeypatch, capsys):
    import importlib.util

    from ovss.apps import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert cli.main(["demo", "--backbone", "x"]) == 2
    assert 'pip install "ovss[demo]"' in capsys.readouterr().err


# -------------------------------------------------------------------------------------- in a browser


def test_page_in_chromium(synthetic_demo, tmp_path):
    import ovss

    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip)")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = synthetic_demo
    t0 = time.perf_counter()
    launch_demo(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    image, classes = example_rows()[1]  # scene_b.png: water, brick wall, snow, a square, a triangle, a star
    assert Path(image).name == "scene_b.png"
    hosts = set()
    try:
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000})
            try:
                page = ctx.new_page()
                page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#ovss-run").wait_for(state="visible")
                page.locator("#ovss-image input[type=file]").set_input_files(str(image))
                page.locator("#ovss-image img").wait_for(state="visible")  # the upload is shown
                page.locator("#ovss-classes textarea").fill(classes)
                page.locator("#ovss-methods").get_by_label("sclip").check()
                page.locator("#ovss-run").click()
                for m in ("maskclip", "sclip"):
                    page.locator(f"#ovss-overlay-{m} img").wait_for(state="visible")
                    page.locator(f"#ovss-legend-{m} .ovss-legend").wait_for(state="visible")
                    page.locator(f"#ovss-heatmap-{m} img").wait_for(state="visible")
                    legend = page.locator(f"#ovss-legend-{m}").inner_text()
                    ref = ovss.load(m, backbone="tiny-synthetic", device="cpu")(image, classes).areas()
                    assert ref["water"] > 0.5 and ref["brick wall"] > 0.1  # the scene's two big regions
                    for name, area in ref.items():
                        if area >= 0.001:  # the page's legend shows the Python API's areas
                            assert name in legend and f"{100 * area:.1f}%" in legend, (name, area, legend)
                assert page.locator("#ovss-panel-naclip").is_hidden()  # not ticked: no panel
                status = page.locator("#ovss-status").inner_text()
                assert "segmented into 11 classes with maskclip, sclip" in status, status
                for m in ("maskclip", "sclip"):  # the heatmap of the scene's largest class, picked on the page
                    heat = page.locator(f"#ovss-heatmap-{m} img")
                    before = heat.get_attribute("src")
                    page.locator(f"#ovss-heatclass-{m} input").click()
                    page.locator(f"#ovss-heatclass-{m}").get_by_role("option", name="water", exact=True).click()
                    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); "
                                           "return i && i.getAttribute('src') !== old; }",
                                           arg=[f"#ovss-heatmap-{m} img", before])
                page.wait_for_timeout(500)  # let the images settle before the picture
                shot = tmp_path / "demo.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                ctx.close()
    finally:
        demo.close()
    print(f"\n[browser] page loaded, 2 methods run and checked in {time.perf_counter() - t0:.1f} s")
    assert hosts == {f"127.0.0.1:{port}"}, hosts  # the page loads nothing from elsewhere
    assert Image.open(shot).size[0] == 1400
    if os.environ.get("OVSS_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "demo.png")
