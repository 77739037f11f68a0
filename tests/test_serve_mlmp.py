"""`ovss serve` with MLMP: concurrent requests (two workers, one shared CLIP, another method
beside it) give the label maps of fresh Python-API segmenters, so no adaptation leaks across
requests or into the other method."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

pytest.importorskip("fastapi", reason="the HTTP API needs ovss[serve] (fastapi)")
pytest.importorskip("uvicorn", reason="the HTTP API needs ovss[serve] (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the API tests need httpx")

from test_serve import Server, png_bytes, scene  # the server of tests/test_serve.py

from ovss.apps.serve import decode_label_map

GOLDEN = Path(__file__).parent / "golden"
CLASSES = "cat, dog|puppy, sky, grass"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    g = load_file(str(GOLDEN / "mlmp_small.safetensors"))
    d = tmp_path_factory.mktemp("mlmp_serve_weights")
    save_file({k[2:]: v for k, v in g.items() if k.startswith("w.")}, str(d / "model.safetensors"))
    shutil.copy(GOLDEN / "tokenizer" / "small_vocab.txt.gz", d / "bpe_vocab.txt.gz")
    return d / "model.safetensors"


def test_concurrent_mlmp_requests_equal_fresh_segmenters(weights, tmp_path):
    import ovss

    images = [scene(21, 90, 120), scene(22, 120, 90)]
    jobs = [(0, "mlmp"), (1, "mlmp"), (1, "naclip"), (0, "mlmp"), (1, "mlmp")]
    s = Server(weights, tmp_path / "cache", "--workers", "2", "--method", "mlmp", "--method", "naclip")
    try:
        def one(job):
            i, method = job
            r = httpx.post(s.url + "/segment", files={"image": ("x.png", png_bytes(images[i]), "image/png")},
                           data={"classes": CLASSES, "method": method, "preset": "voc20" if method == "mlmp" else ""},
                           timeout=300)
            assert r.status_code == 200, r.text
            return decode_label_map(r.json()["label_map"])

        with ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(one, jobs))
        assert s.alive()
    finally:
        s.stop()
    for (i, method), labels in zip(jobs, got):
        fresh = ovss.load(method, backbone=str(weights), preset="voc20" if method == "mlmp" else None, device="cpu")
        np.testing.assert_array_equal(labels, fresh(images[i], CLASSES).labels)
