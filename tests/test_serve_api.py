"""`ovss serve`'s API surface (issue 16): what OpenAPI says, the docs pages offline, COCO RLE
masks that pycocotools decodes, score maps, JSON bodies with base64 images, the NDJSON batch call,
and methods whose weights are missing (503 with the download hint; /methods says not ready).

One live server (a subprocess on 127.0.0.1, the tiny random checkpoint) with the Hugging Face hub
offline and an empty hub cache, so proxyclip's DINO model is missing; small edge cases run
in-process through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the HTTP API needs ovss[serve] (fastapi)")
pytest.importorskip("uvicorn", reason="the HTTP API needs ovss[serve] (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the API tests need httpx")

from test_serve import Server, png_bytes, post, scene  # after the skips

from ovss.apps.serve import coco_counts, coco_rle_decode, coco_rle_encode, decode_label_map

CLASSES = "cat, sofa|couch, wooden floor"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIELDS = ["image", "classes", "method", "preset", "background", "format", "counts", "scores"]


@pytest.fixture(scope="module")
def weights(tiny_clip_dir) -> Path:
    return tiny_clip_dir / "model.safetensors"


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(d / "empty-hub"))  # no DINO weights anywhere
        s = Server(weights, d / "cache", "--method", "maskclip", "--method", "sclip", "--method", "proxyclip",
                   "--max-batch", "3")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(weights):
    import ovss

    cache: dict = {}

    def result(image: np.ndarray, classes: str, method: str = "maskclip", preset: str | None = None):
        key = (method, preset)
        if key not in cache:
            cache[key] = ovss.load(method, backbone=str(weights), preset=preset, device="cpu")
        return cache[key](image, classes)

    return result


# ------------------------------------------------------------------------------------------ COCO RLE


def test_coco_counts_by_the_spec():
    """Column-major runs, alternating 0s and 1s, starting with 0s (a leading 0 when the first
    pixel is set); our string form is pycocotools' (checked against it below when installed)."""
    m = np.array([[1, 0, 0], [1, 1, 0]], bool)  # column-major: 1 1 | 0 1 | 0 0
    assert coco_counts(m) == [0, 2, 1, 1, 2]
    assert coco_counts(np.zeros((2, 2), bool)) == [4]
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 7), (40, 33), (64, 64)]:
        for p in (0.0, 0.05, 0.5, 1.0):
            mask = rng.random(shape) < p
            for compressed in (True, False):
                rle = coco_rle_encode(mask, compressed)
                np.testing.assert_array_equal(coco_rle_decode(rle), mask)
    big = np.zeros((300, 400), bool)
    big[10:290, 7:390] = True  # long runs: multi-character values and negative differences
    rle = coco_rle_encode(big)
    np.testing.assert_array_equal(coco_rle_decode(rle), big)
    mu = pytest.importorskip("pycocotools.mask", reason="pycocotools (the test extra) checks the string form")
    for mask in (big, rng.random((37, 51)) < 0.3, np.ones((5, 9), bool)):
        ref = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco_rle_encode(mask)["counts"] == ref["counts"].decode()


@pytest.mark.parametrize("method, preset", [("maskclip", None), ("sclip", "voc21")])
def test_coco_rle_masks_decode_with_pycocotools(server, reference, method, preset):
    """format=coco_rle: one mask per class (absent ones too), each equal to (label map == class)
    under pycocotools.mask.decode, in both counts forms; the answer says the class list used and
    whether a background was added (sclip's voc21 threshold adds one)."""
    mu = pytest.importorskip("pycocotools.mask", reason="pycocotools is in the test extra")
    img = scene(4, 90, 130)
    ref = reference(img, CLASSES, method, preset)
    fields = {"classes": CLASSES, "method": method, "format": "coco_rle", **({"preset": preset} if preset else {})}
    for counts in ("string", "list"):
        r = post(server.url, png_bytes(img), counts=counts, **fields)
        assert r.status_code == 200, r.text
        body = r.json()
        assert "label_map" not in body
        assert body["class_names"] == ref.class_names and body["background_added"] == ref.background_added
        assert body["classes_requested"] == [["cat"], ["sofa", "couch"], ["wooden floor"]]
        assert [m["name"] for m in body["masks"]] == ref.class_names
        for m in body["masks"]:
            seg = m["segmentation"]
            assert seg["size"] == [90, 130]
            if counts == "string":
                rle = {"size": seg["size"], "counts": seg["counts"].encode()}
            else:
                assert isinstance(seg["counts"], list) and sum(seg["counts"]) == 90 * 130
                rle = mu.frPyObjects(seg, *seg["size"])
            decoded = mu.decode(rle).astype(bool)
            np.testing.assert_array_equal(decoded, ref.labels == m["index"])
            assert m["pixels"] == int(decoded.sum()) == int(mu.area(rle))
    assert method != "sclip" or body["background_added"] and body["class_names"][0] == "background"


def test_score_maps_and_index_png_together(server, reference):
    img = scene(5, 64, 80)
    ref = reference(img, CLASSES)
    r = post(server.url, png_bytes(img), classes=CLASSES, scores="true")
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_array_equal(decode_label_map(body["label_map"]), ref.labels)
    assert [s["name"] for s in body["score_maps"]] == ref.class_names
    for s in body["score_maps"]:
        with Image.open(io.BytesIO(base64.b64decode(s["data"]))) as im:
            assert im.mode == "L" and s["size"] == [64, 80] and s["full_size"] is True
            got = np.asarray(im).astype(np.float64) / 255
        assert np.abs(got - ref.scores[s["index"]]).max() <= 0.5 / 255 + 1e-6


# ------------------------------------------------------------------------------------------- JSON body


def test_json_body_with_a_base64_image_equals_the_form(server, reference):
    img = scene(6, 70, 90)
    data = png_bytes(img)
    ref = reference(img, CLASSES, "sclip", "voc21")
    b64 = base64.b64encode(data).decode()
    for image in (b64, "data:image/png;base64," + b64):
        r = httpx.post(server.url + "/segment", json={"image": image, "classes": ["cat", "sofa|couch", "wooden floor"],
                                                       "method": "sclip", "preset": "voc21", "format": "rle"},
                       timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        np.testing.assert_array_equal(decode_label_map(body["label_map"]), ref.labels)
        assert body["class_names"] == ref.class_names and body["background_added"] is True


@pytest.mark.parametrize("payload, status, message", [
    ({"image": "not base64!", "classes": "cat"}, 422, "not valid base64"),
    ({"image": "data:image/png,abc", "classes": "cat"}, 422, "must be base64"),
    ({"classes": "cat"}, 422, "missing field 'image'"),
    ({"image": "AAAA"}, 422, "missing field 'classes'"),
    ({"image": "AAAA", "classes": 3}, 422, "must be a string or a list"),
    ({"image": "AAAA", "classes": "cat", "colour": "red"}, 422, "unknown field(s) 'colour'"),
    ({"image": "AAAA", "classes": "cat", "format": "gif"}, 422, "unknown format"),
    ({"image": "AAAA", "classes": "cat"}, 415, "not an image"),
    ([1, 2], 422, "must be an object"),
], ids=["bad-base64", "data-url-not-base64", "no-image", "no-classes", "classes-type", "unknown-field",
        "bad-format", "not-an-image", "not-an-object"])
def test_json_body_errors(server, payload, status, message):
    r = httpx.post(server.url + "/segment", json=payload, timeout=30)
    assert r.status_code == status and r.json()["status"] == status and message in r.json()["detail"], r.text


def asgi(app, method: str, path: str, **kwargs):
    async def call():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, timeout=60, **kwargs)

    return asyncio.run(call())


@pytest.fixture(scope="module")
def small_app(weights):
    """In-process, with a 0.01 MiB upload limit and batches of 2."""
    from ovss.apps.serve import create_app

    app = create_app(str(weights), device="cpu", methods=["maskclip"], max_upload_mb=0.01, max_batch=2)
    yield app
    app.state.pool.shutdown()


def test_json_and_batch_limits(small_app):
    big = base64.b64encode(b"\0" * 20_000).decode()
    r = asgi(small_app, "POST", "/segment", json={"image": big, "classes": "cat"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]
    files = [("image", (f"{i}.png", png_bytes(scene(i, 20, 20)))) for i in range(3)]
    r = asgi(small_app, "POST", "/segment/batch", files=files, data={"classes": "cat"})
    assert r.status_code == 422 and "at most 2" in r.json()["detail"], r.text
    r = asgi(small_app, "POST", "/segment/batch", json={"images": [], "classes": "cat"})
    assert r.status_code == 422 and "non-empty list" in r.json()["detail"]


# ----------------------------------------------------------------------------------------------- batch


def test_batch_streams_one_line_per_image(server, reference):
    """Three images (one of them no image) and one class list: NDJSON lines in order, each good
    image's label map equal to the Python API's, the bad one answered on its own line."""
    imgs = [scene(7, 60, 80), scene(8, 72, 64)]
    files = [("image", ("a.png", png_bytes(imgs[0]), "image/png")), ("image", ("b.txt", b"hello", "text/plain")),
             ("image", ("c.png", png_bytes(imgs[1]), "image/png"))]
    with httpx.stream("POST", server.url + "/segment/batch", files=files, data={"classes": CLASSES, "format": "rle"},
                      timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        assert r.headers.get("transfer-encoding") == "chunked"  # streamed, not one body at the end
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [(x["index"], x["filename"], x["status"]) for x in lines] == [(0, "a.png", 200), (1, "b.txt", 415),
                                                                         (2, "c.png", 200)]
    assert "not an image" in lines[1]["detail"]
    for x, img in zip((lines[0], lines[2]), imgs):
        np.testing.assert_array_equal(decode_label_map(x["label_map"]), reference(img, CLASSES).labels)
        assert x["class_names"] == ["cat", "sofa", "wooden floor"]
    js = httpx.post(server.url + "/segment/batch", timeout=120,
                    json={"images": [base64.b64encode(png_bytes(imgs[0])).decode()], "classes": CLASSES})
    assert js.status_code == 200 and json.loads(js.text.splitlines()[0])["status"] == 200
    r = post(server.url, png_bytes(imgs[0]), classes="cat")  # the server and its slots are fine afterwards
    assert r.status_code == 200 and httpx.get(server.url + "/health", timeout=10).json()["queue"]["admitted"] == 0


# ------------------------------------------------------------------------------- readiness, weights


def test_methods_mark_readiness_and_missing_weights_are_503(server):
    m = httpx.get(server.url + "/methods", timeout=30).json()["methods"]
    assert m["maskclip"]["ready"] is True and m["maskclip"]["missing"] is None
    assert m["proxyclip"]["ready"] is False and "ovss download dino-vitb8" in m["proxyclip"]["missing"]
    assert m["proxyclip"]["presets"]["voc21-dinov2"]["ready"] is False
    assert "dinov2-vitb14-reg" in m["proxyclip"]["presets"]["voc21-dinov2"]["missing"]
    r = post(server.url, png_bytes(scene(0)), classes="cat", method="proxyclip")
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == 503 and "proxyclip is not ready" in body["detail"]
    assert "ovss download dino-vitb8" in body["detail"] and "retry-after" not in r.headers  # not a busy 503
    assert server.alive()


# ----------------------------------------------------------------------------------------- OpenAPI


def test_openapi_describes_every_field_and_error(server):
    spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
    op = spec["paths"]["/segment"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert list(form["properties"]) == FIELDS and form["required"] == ["image", "classes"]
    assert form["properties"]["image"]["type"] == "string" and form["properties"]["image"]["format"] == "binary"
    assert form["properties"]["method"]["enum"] == ["maskclip", "sclip", "proxyclip"]
    assert form["properties"]["format"]["enum"] == ["png", "rle", "coco_rle"]
    assert "voc21" in form["properties"]["preset"]["enum"]
    for name, p in form["properties"].items():
        assert p.get("description"), name
    js = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(js["properties"]) == set(FIELDS) and js["properties"]["image"]["contentEncoding"] == "base64"
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/SegmentResult"}
    result = spec["components"]["schemas"]["SegmentResult"]["properties"]
    assert {"class_names", "background_added", "classes_requested", "label_map", "masks", "score_maps"} <= set(result)
    for code in ("408", "413", "415", "422", "500", "503"):
        resp = op["responses"][code]
        assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert resp["description"]
    assert "Retry-After" in op["responses"]["503"]["headers"] and "weights" in op["responses"]["503"]["description"]
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"detail", "status"}
    batch = spec["paths"]["/segment/batch"]["post"]
    bform = batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["image"]
    assert bform["type"] == "array" and bform["items"]["format"] == "binary"
    assert "application/x-ndjson" in batch["responses"]["200"]["content"]
    assert {"/health", "/methods"} <= set(spec["paths"]) and "/docs" not in spec["paths"]


def test_docs_render_offline_in_chromium(server, tmp_path):
    """/docs (Swagger UI) and /redoc load everything from this server: in chromium with every
    other host unreachable they render the operations, and /segment's form has its file input."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: the docs test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the docs test needs playwright (pip)")
    assert httpx.get(server.url + "/docs/assets/nope.js", timeout=10).status_code == 404
    hosts, failed = set(), []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
                      else (failed.append(route.request.url), route.abort())[-1])
            page = ctx.new_page()
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]) if "://" in r.url else None)
            page.set_default_timeout(30_000)
            page.goto(server.url + "/docs")
            ops = page.locator(".opblock")
            ops.first.wait_for()
            text = page.locator("#swagger-ui").inner_text()
            for path in ("/segment", "/segment/batch", "/methods", "/health"):
                assert path in text, path
            seg = page.locator("#operations-default-segment_segment_post")
            seg.locator(".opblock-summary").click()
            seg.locator("input[type=file]").first.wait_for()  # tryItOutEnabled: the form is open
            body = seg.inner_text()
            for field in FIELDS[1:]:
                assert field in body, field
            for code in ("413", "415", "422", "503"):
                assert code in body, code
            page.goto(server.url + "/redoc")
            page.get_by_text("Segment one image").first.wait_for()
        finally:
            browser.close()
    assert hosts == {server.url.split("/")[2]} and not failed, (hosts, failed)


def test_docs_fall_back_to_a_local_page_without_swagger(weights, monkeypatch):
    from ovss.apps import api_docs
    from ovss.apps.serve import create_app

    monkeypatch.setattr(api_docs, "docs_assets_dir", lambda: None)
    app = create_app(str(weights), device="cpu", methods=["maskclip"], preload=False)
    try:
        assert app.state.docs == "fallback"
        r = asgi(app, "GET", "/docs")
        assert r.status_code == 200 and "/openapi.json" in r.text and "opblock" in r.text
        assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere
        assert asgi(app, "GET", "/redoc").text == r.text
    finally:
        app.state.pool.shutdown()
