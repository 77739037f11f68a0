"""Without network, weight resolution fails fast: the first connection failure in a process is
remembered and later look-ups read the local cache only (as with HF_HUB_OFFLINE=1).

No test here reaches the network: the "hub" is a port on 127.0.0.1 that is bound but not
listening (connection refused at once), or a local HTTP server that answers 404. Connection
attempts are counted at `socket.socket.connect`, below every HTTP client huggingface_hub may use.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ovss.backbones import hub
from ovss.backbones.dino import create_dino
from ovss.backbones.hub import WeightsNotFoundError, download, resolve_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# huggingface_hub retries a failed look-up of an uncached file with back-off (1+2+4+8+8 s in
# huggingface_hub 1.x/2.x); one such wait per file is what failing fast avoids.
RETRY_TIME_S = 23.0


def _hub_env(monkeypatch, tmp_path, endpoint: str):
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    attempts: list = []
    real_connect = socket.socket.connect

    def counting_connect(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    return home, attempts


@pytest.fixture
def dead_hub(monkeypatch, tmp_path):
    """HF_ENDPOINT at a local port that refuses connections; an empty hub cache."""
    reserved = socket.socket()  # bound, never listening: connecting is refused, and no one else gets the port
    reserved.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{reserved.getsockname()[1]}"
    home, attempts = _hub_env(monkeypatch, tmp_path, endpoint)
    hub.forget_unreachable()
    yield SimpleNamespace(endpoint=endpoint, home=home, attempts=attempts)
    hub.forget_unreachable()
    reserved.close()


def _fake_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A hub cache laid out as huggingface_hub writes it: models--org--name/{refs,snapshots}."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def test_unreachable_hub_is_tried_once(dead_hub):
    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights("clip-vit-b16")
    first = len(dead_hub.attempts)
    assert first >= 1  # the hub was tried ...
    assert hub.hub_unreachable() is not None  # ... and its failure remembered
    msg = str(e.value)
    assert f"the hub at {dead_hub.endpoint} could not be reached" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "ovss download clip-vit-b16" in msg and "--weights" in msg and str(dead_hub.home) in msg

    # The DINO side of ProxyCLIP / LPOSS, and any other repo: answered from the cache alone.
    with pytest.raises(WeightsNotFoundError) as e:
        create_dino("dino-vitb8")
    assert "facebook/dino-vitb8" in str(e.value) and "ovss download dino-vitb8" in str(e.value)
    assert "could not be reached" in str(e.value)
    with pytest.raises(WeightsNotFoundError, match="ovss download hf-hub:org/other"):
        resolve_weights("hf-hub:org/other")
    assert len(dead_hub.attempts) == first  # no second connection attempt
    assert time.monotonic() - t0 < RETRY_TIME_S / 4


def test_cached_weights_still_load_after_a_failure(dead_hub):
    snap = _fake_snapshot(dead_hub.home / "hub", "facebook/dino-vitb8", {"model.safetensors": b"x"})
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("hf-hub:org/none")
    first = len(dead_hub.attempts)
    assert download("dino-vitb8") == snap  # `ovss download` takes DINO names too; here a cache hit
    assert resolve_weights("hf-hub:facebook/dino-vitb8/model.safetensors") == snap / "model.safetensors"
    assert len(dead_hub.attempts) == first


def test_forget_unreachable_tries_again(dead_hub):
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("hf-hub:org/a")
    first = len(dead_hub.attempts)
    hub.forget_unreachable()
    assert hub.hub_unreachable() is None
    with pytest.raises(WeightsNotFoundError):
        resolve_weights("hf-hub:org/a")
    assert len(dead_hub.attempts) > first


class _NotFound(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args):  # quiet
        pass


def test_a_hub_that_answers_is_not_marked_unreachable(monkeypatch, tmp_path):
    """Any HTTP answer (here 404 for everything) means the network works: nothing is remembered
    and every look-up keeps asking the hub, as without this feature."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _, attempts = _hub_env(monkeypatch, tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        hub.forget_unreachable()
        for _ in range(2):
            with pytest.raises(WeightsNotFoundError):
                resolve_weights("hf-hub:org/repo/model.safetensors")
            assert hub.hub_unreachable() is None
        assert attempts  # it asked the server
    finally:
        hub.forget_unreachable()
        server.shutdown()
        server.server_close()


def test_offline_env_makes_no_connection(monkeypatch, tmp_path):
    _, attempts = _hub_env(monkeypatch, tmp_path, "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.forget_unreachable()
    with pytest.raises(WeightsNotFoundError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        create_dino("dinov2-vits14")
    assert attempts == [] and hub.hub_unreachable() is None


def test_the_message_says_where_a_local_file_goes(tmp_path):
    """A CLIP's local file goes to --weights; a method's DINO model to --dino (dino= in Python)."""
    from ovss.backbones.hub import _how_to_get

    clip = _how_to_get("org/clip", ("a.bin",), "clip-vit-b16", tmp_path, "offline")
    dino = _how_to_get("facebook/dino-vitb8", ("a.bin",), "dino-vitb8", tmp_path, "offline")
    timm = _how_to_get("timm/x", ("a.bin",), "timm:dino-vitb16", tmp_path, "offline")
    assert "`--weights /path/to/file`" in clip and "--dino" not in clip
    assert "`--dino /path/to/file`" in dino and "dino=" in dino and "--weights" not in dino
    assert "--dino" in timm and "`ovss download timm:dino-vitb16`" in timm
