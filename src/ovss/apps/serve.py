"""`ovss serve`: a small HTTP API over the segmenters (FastAPI + uvicorn, the `ovss[serve]` extra).

Endpoints:

- ``POST /segment`` (multipart/form-data): ``image`` (file), ``classes`` ("cat, sofa|couch":
  classes split on commas, synonyms on "|"), optional ``method`` (default: the server's first),
  ``preset``, ``background`` (true/false) and ``format`` (``png`` or ``rle``). Returns the JSON
  sidecar (`Result.to_dict`: class names, colours, area shares, mean scores, settings) plus
  ``label_map``:

  - ``{"format": "png", "encoding": "base64", "data": ...}``: the index PNG exactly as
    ``ovss segment`` writes it (8-bit palette PNG whose pixel values are the class indices;
    16-bit grey above 256 classes);
  - ``{"format": "rle", "size": [H, W], "order": "row-major", "values": [...], "lengths": [...]}``:
    the label map read row by row (C order) as runs of equal values; decode with
    ``np.repeat(values, lengths).reshape(H, W)``. The lengths sum to H * W.

- ``GET /methods``: the methods this server runs, with their presets.
- ``GET /health``: status, device, queue occupancy and loaded models.

Every failure is JSON ``{"detail": "...", "status": N}``: 404/405 unknown path or method; 408
body not received within ``body_timeout`` (default 60 s); 413 upload over ``max_upload_mb``
(default 20 MiB) or image over ``max_pixels`` (default 25 megapixels, checked from the header
before decoding); 415 not multipart/form-data, or a file that is not a decodable PNG, JPEG, WebP,
BMP, TIFF or GIF (no other decoder is ever reached: EPS would run Ghostscript); 422 missing or bad
field (empty or duplicate classes, over ``max_classes`` names or ``max_class_chars`` characters
per name, unknown method or preset, bad format, an image too thin to segment); 500 a bug; 503
with ``Retry-After`` when the queue is full or the request outlived ``request_timeout``.

Requests run on a bounded pool of worker threads (1 on CPU: torch already uses every core within
one request; 2 on an accelerator, so one request's decoding and encoding overlap another's
forward pass). A request takes a slot only once its whole body has arrived and passed every
check, so slow uploads cannot hold slots; they are cut off by the body timeout, and the bytes
of bodies held at once (uploading or admitted) are bounded by ``capacity`` bodies. At most
``workers + max_queue`` requests are admitted at once; any request beyond that gets 503 at once
with ``Retry-After`` estimated from the measured queue, never a wait without bound. Loaded models
are cached and shared: one CLIP per server, one `Segmenter` per (method, preset) on top of it;
their text banks keep query embeddings in bounded LRU caches in memory and on disk.
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_UPLOAD_MB = 20.0  # MiB (2^20 bytes)
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_QUEUE = 16
# Class names per request (synonyms count: each is a query) and characters per name. Text cost
# grows with names x templates (one 4000-name request kept a CPU worker 169 s); 300 admits every
# benchmark class list shipped but PASCAL Context-459 (raise --max-classes for it), 200
# characters any real name.
DEFAULT_MAX_CLASSES = 300
DEFAULT_MAX_CLASS_CHARS = 200
DEFAULT_BODY_TIMEOUT = 60.0  # s to receive a whole request body (slow clients get 408)
DEFAULT_REQUEST_TIMEOUT = 300.0  # s from a request's arrival to its answer (then 503)
FORM_OVERHEAD = 64 * 1024  # bytes allowed in a request body beyond the image and class names
LABEL_FORMATS = ("png", "rle")
# The only decoders an upload reaches (Pillow ids). Pillow would otherwise try every plugin it
# has, EPS included, which hands the file to Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

log = logging.getLogger("ovss.serve")

SERVE_EXTRA_HINT = 'the HTTP API needs FastAPI and uvicorn: pip install "ovss[serve]"'


# ------------------------------------------------------------------------------------- model cache


class RequestExpired(TimeoutError):
    """A job whose request already timed out (and was answered) stops here."""


class _Entry:
    __slots__ = ("lock", "segmenter")

    def __init__(self, segmenter):
        self.segmenter = segmenter
        # A Segmenter keeps per-call state (the decision's assigned-pixel mask), so one entry
        # serves one call at a time; different (method, preset) entries run in parallel.
        self.lock = threading.Lock()


class ModelCache:
    """One loaded CLIP shared by every method, and a `Segmenter` per (method, preset) over it.

    Thread-safe. Shared by the HTTP API and the Gradio demo. `methods` restricts which methods
    may be asked for (default: all registered). At most `max_segmenters` recipes are kept (the
    least recently used is dropped; the CLIP weights stay).
    """

    def __init__(self, backbone: str = "clip-vit-b16", weights: str | os.PathLike | None = None,
                 device: str = "auto", methods: Sequence[str] | None = None,
                 tokenizer: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 max_segmenters: int = 32):
        from ..core.segmenter import resolve_device
        from ..methods import get_method, list_methods

        self.backbone = os.fspath(backbone)
        self.weights = None if weights is None else os.fspath(weights)
        self.device = resolve_device(device)
        if methods:
            self.methods = list(dict.fromkeys(m.strip() for m in methods))
            for m in self.methods:
                get_method(m)  # KeyError with the valid names for a typo
        else:  # all registered methods, MaskCLIP (the common baseline) first: the default
            names = list_methods()
            self.methods = sorted(names, key=lambda n: n != "maskclip")
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self.max_segmenters = max_segmenters
        self._clip = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str | None], _Entry] = OrderedDict()

    # -- validation (raises ValueError with a message fit for a user) --
    def check(self, method: str | None, preset: str | None) -> tuple[str, str | None]:
        """Normalise and validate a (method, preset) request; None/"" method = the default (the
        first of `methods`). Raises ValueError naming what is valid."""
        from ..methods import get_method

        method = (method or "").strip() or self.methods[0]
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; this server runs: {', '.join(self.methods)}")
        preset = (preset or "").strip() or None
        if preset is not None and preset.lower() == "none":
            preset = None
        spec = get_method(method)
        if preset is not None and preset not in spec.presets:
            raise ValueError(f"method {method!r} has no preset {preset!r}; presets: "
                             f"{', '.join(sorted(spec.presets)) or 'none'}")
        return method, preset

    def clip(self):
        """The shared CLIP, loaded on first use."""
        with self._lock:
            return self._load_clip()

    def _load_clip(self):
        if self._clip is None:
            from ..backbones.factory import create_clip

            self._clip = create_clip(self.backbone, weights=self.weights, device=self.device,
                                     cache_dir=self.cache_dir)
        return self._clip

    def entry(self, method: str, preset: str | None = None) -> _Entry:
        method, preset = self.check(method, preset)
        key = (method, preset)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            from ..core.segmenter import Segmenter

            seg = Segmenter(method, backbone=self.backbone, weights=self.weights, preset=preset,
                            device=self.device, tokenizer=self.tokenizer, clip=self._load_clip())
            self._entries[key] = e = _Entry(seg)
            while len(self._entries) > self.max_segmenters:
                self._entries.popitem(last=False)
            return e

    def segmenter(self, method: str, preset: str | None = None):
        return self.entry(method, preset).segmenter

    def segment(self, image: Any, classes: Any, method: str, preset: str | None = None,
                background: bool | None = None, keep_image: bool = True, deadline: float | None = None):
        """Run one (method, preset) on an image; one call at a time per cached Segmenter.

        Past `deadline` (time.monotonic()) the call raises RequestExpired, checked on entry and
        between text batches: a request that timed out while a huge class list was being encoded
        gives its worker back within one batch (the names finished stay cached for a retry)."""
        e = self.entry(method, preset)
        with e.lock:
            bank = e.segmenter.text_bank
            if deadline is not None:
                def check() -> None:
                    if time.monotonic() > deadline:
                        raise RequestExpired("the request's time ran out; its job was abandoned")

                check()
                bank.interrupt = check
            try:
                return e.segmenter(image, classes, background=background, keep_image=keep_image)
            finally:
                bank.interrupt = None

    def loaded(self) -> list[str]:
        with self._lock:
            return [m + (f":{p}" if p else "") for m, p in self._entries]


def default_workers(device) -> int:
    """1 worker on CPU (torch spreads one request over all cores), 2 on an accelerator."""
    return 1 if str(device).startswith("cpu") else 2


def methods_info(names: Sequence[str]) -> dict[str, Any]:
    from ..methods import get_method

    out = {}
    for n in names:
        m = get_method(n)
        out[n] = {
            "summary": m.summary,
            "paper": m.paper,
            "code": m.code,
            "presets": {k: {"classes": p.classes, "background": p.background, "note": p.note}
                        for k, p in m.presets.items()},
        }
    return out


# ------------------------------------------------------------------------------------ label maps


def index_png_bytes(labels: "np.ndarray", palette: "np.ndarray | None" = None) -> bytes:
    """The index PNG of `io.save_index_png` (8-bit palette up to 256 classes, else 16-bit), as bytes."""
    from ..data.io import index_png_image

    buf = io.BytesIO()
    index_png_image(labels, palette).save(buf, format="PNG")
    return buf.getvalue()


def rle_encode(labels: "np.ndarray") -> dict[str, Any]:
    """Row-major runs of equal values: {"size", "order", "values", "lengths"} (see the module doc)."""
    import numpy as np

    lab = np.asarray(labels)
    flat = lab.ravel(order="C")
    if flat.size == 0:
        return {"format": "rle", "size": list(lab.shape), "order": "row-major", "values": [], "lengths": []}
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return {"format": "rle", "size": [int(lab.shape[0]), int(lab.shape[1])], "order": "row-major",
            "values": flat[starts].astype(np.int64).tolist(), "lengths": lengths.astype(np.int64).tolist()}


def rle_decode(rle: dict[str, Any]) -> "np.ndarray":
    """The inverse of `rle_encode`: an (H, W) int64 label map."""
    import numpy as np

    h, w = rle["size"]
    return np.repeat(np.asarray(rle["values"], np.int64), np.asarray(rle["lengths"], np.int64)).reshape(h, w)


def decode_label_map(label_map: dict[str, Any]) -> "np.ndarray":
    """A response's ``label_map`` -> (H, W) int64 array (either format)."""
    import numpy as np
    from PIL import Image

    if label_map["format"] == "rle":
        return rle_decode(label_map)

    with Image.open(io.BytesIO(base64.b64decode(label_map["data"]))) as im:
        return np.array(im).astype(np.int64)


# ------------------------------------------------------------------------------------ worker pool


def _trim_memory() -> None:
    """Give freed heap pages back to the OS (glibc); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class WorkerPool:
    """A fixed set of worker threads with a bound on admitted requests (running + waiting)."""

    def __init__(self, workers: int, max_queue: int, window: int = 32):
        if workers < 1 or max_queue < 0:
            raise ValueError(f"need workers >= 1 and max_queue >= 0, got {workers}, {max_queue}")
        self.workers = workers
        self.max_queue = max_queue
        self.capacity = workers + max_queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ovss-worker")
        self._lock = threading.Lock()
        self.admitted = 0
        self.served = 0
        self.rejected = 0
        self._recent: deque[float] = deque(maxlen=window)  # seconds of the last jobs, for Retry-After
        self._running: dict[int, float] = {}  # thread id -> start time of the job it runs

    def try_admit(self) -> bool:
        with self._lock:
            if self.admitted >= self.capacity:
                self.rejected += 1
                return False
            self.admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.admitted -= 1
            idle = self.admitted == 0
        if idle:
            _trim_memory()

    def expected_wait(self) -> float:
        """Seconds until the admitted requests are served, from the measured queue.

        Each waiting job counts the mean of the recent jobs' times; a running job counts what is
        left of that mean, or, once it has run past the mean, as long again as it has run (a job
        already long is likely a long one). Spread over the workers.
        """
        with self._lock:
            now = time.perf_counter()
            running = [now - t0 for t0 in self._running.values()]
            mean = sum(self._recent) / len(self._recent) if self._recent else max(running, default=1.0)
            waiting = max(0, self.admitted - len(running))
            ahead = waiting * mean + sum(mean - e if e < mean else e for e in running)
        return ahead / self.workers

    def retry_after(self) -> int:
        """`expected_wait` as a Retry-After value: whole seconds, at least 1, at most an hour."""
        return min(3600, max(1, math.ceil(self.expected_wait())))

    def submit(self, fn, *args):
        """Queue `fn(*args)` on a worker; returns a concurrent.futures.Future."""
        def timed():
            me = threading.get_ident()
            t0 = time.perf_counter()
            with self._lock:
                self._running[me] = t0
            try:
                return fn(*args)
            finally:
                dt = time.perf_counter() - t0
                with self._lock:
                    del self._running[me]
                    self.served += 1
                    self._recent.append(dt)

        return self._executor.submit(timed)

    async def run_admitted(self, fn, *args, timeout: float | None = None):
        """Run an admitted request's job; its slot is released when the job ends (also if the
        client goes away meanwhile: the slot stays taken while a worker still runs it).

        Past `timeout` seconds raises TimeoutError: a job still waiting is cancelled (its slot
        freed at once); a running one finishes unobserved, or stops early if `fn` checks a
        deadline (the segment job does, see `ModelCache.segment`)."""
        fut = self.submit(fn, *args)
        fut.add_done_callback(lambda _: self.release())
        waiter = asyncio.wrap_future(fut)
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "not retrieved"
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (asyncio.TimeoutError, TimeoutError):  # the wait's, or the job's own RequestExpired
            fut.cancel()
            raise TimeoutError from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# -------------------------------------------------------------------------------------------- app


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class ByteBudget:
    """Bytes of request bodies held at once, across requests still uploading and admitted ones.

    Bodies are read before a request takes a slot (so a slow upload cannot hold one); this bound
    is what keeps the memory of many simultaneous uploads in check instead. Used from the event
    loop only, but locked anyway: it is cheap.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def _json_body(status: int, detail: str) -> bytes:
    return json.dumps({"detail": detail, "status": status}).encode()


class JSONErrorsMiddleware:
    """An exception no handler caught becomes a logged JSON 500, not Starlette's plain-text 500
    followed by a reset connection (which a client sees as a network error, not an answer)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = _json_body(500, "internal server error (the server log has the details)")
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})


def _parse_bool(text: str | None, field: str) -> bool | None:
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise _HTTPError(422, f"field {field!r} must be true or false, got {text!r}")


def text_field(form, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise _HTTPError(422, f"field {name!r} must be text, not a file")
    return value


def check_class_limits(groups: Sequence[Sequence[str]], max_classes: int, max_chars: int) -> None:
    """422 past the per-request bounds, before any work: text cost grows with the names."""
    names = sum(len(g) for g in groups)
    if names > max_classes:
        raise _HTTPError(422, f"too many class names: {names:,}; this server takes at most {max_classes:,} "
                              f"per request (synonyms count as names)")
    longest = max((len(s) for g in groups for s in g), default=0)
    if longest > max_chars:
        raise _HTTPError(422, f"class name too long: {longest:,} characters; this server takes at most "
                              f"{max_chars:,} per name")


def open_image(data: bytes):
    """Open an upload lazily with the listed decoders only (IMAGE_FORMATS: never EPS)."""
    from PIL import Image

    return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)


def _probe_image(data: bytes, max_pixels: int):
    """Open the upload lazily (header only): 415 if it is no image, 413 if over the pixel bound."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = open_image(data)
        except Image.DecompressionBombError as e:
            raise _HTTPError(413, f"image too large: {e}; the limit is {max_pixels:,} pixels") from None
        except Image.UnidentifiedImageError:
            raise _HTTPError(415, "the uploaded file is not an image in a format this server reads "
                                  f"({', '.join(IMAGE_FORMATS)})") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure on a hostile header is the file's fault
            raise _HTTPError(415, f"the uploaded file is not a readable image ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise _HTTPError(413, f"image too large: {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels")
    return im


def create_app(backbone: str = "clip-vit-b16", weights: str | os.PathLike | None = None,
               methods: Sequence[str] | None = None, device: str = "auto", max_queue: int = DEFAULT_MAX_QUEUE,
               workers: int | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, tokenizer: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, preload: bool = True,
               models: ModelCache | None = None, max_classes: int = DEFAULT_MAX_CLASSES,
               max_class_chars: int = DEFAULT_MAX_CLASS_CHARS, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT):
    """The FastAPI app. `preload` loads the CLIP now, so a bad backbone fails at start-up (and
    the first request does not pay for it). `models` shares an existing cache."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
    except ImportError as e:
        raise ImportError(f"{SERVE_EXTRA_HINT} ({e})") from e
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    from ..core.version import __version__
    from ..data.io import ImageError, read_image
    from ..text.bank import parse_classes, split_class_string

    if min(max_classes, max_class_chars) < 1 or min(body_timeout, request_timeout) <= 0:
        raise ValueError("max_classes, max_class_chars, body_timeout and request_timeout must be positive")
    models = models or ModelCache(backbone, weights=weights, device=device, methods=methods,
                                  tokenizer=tokenizer, cache_dir=cache_dir)
    if preload:
        models.clip()
    pool = WorkerPool(workers or default_workers(models.device), max_queue)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    # form fields: the class names at up to 4 UTF-8 bytes a character, plus separators
    field_bytes = FORM_OVERHEAD + 4 * max_classes * (max_class_chars + 2)
    hard = max_bytes + field_bytes  # largest request body read
    budget = ByteBudget(pool.capacity * hard)
    limits = {"max_upload_mb": max_upload_mb, "max_upload_bytes": max_bytes, "max_pixels": max_pixels,
              "workers": pool.workers, "max_queue": pool.max_queue, "max_classes": max_classes,
              "max_class_chars": max_class_chars, "body_timeout_s": body_timeout,
              "request_timeout_s": request_timeout, "image_formats": list(IMAGE_FORMATS)}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPI(title="ovss", version=__version__, lifespan=lifespan,
                  description="Training-free open-vocabulary semantic segmentation. " + limits_text(limits))
    app.state.models = models
    app.state.pool = pool
    app.state.limits = limits
    app.state.budget = budget
    app.add_middleware(JSONErrorsMiddleware)

    def error(status: int, detail: str, headers: dict[str, str] | None = None):
        return JSONResponse({"detail": detail, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):  # 404, 405, ...: the same JSON shape as every other error
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc):
        return error(422, f"bad request: {exc.errors()}")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "device": str(models.device),
                "backbone": models.backbone, "queue": {"admitted": pool.admitted, "capacity": pool.capacity,
                                                        "workers": pool.workers, "served": pool.served,
                                                        "rejected": pool.rejected,
                                                        "expected_wait_s": round(pool.expected_wait(), 3)},
                "uploads": {"bytes_held": budget.used, "bytes_limit": budget.limit},
                "loaded": models.loaded(), "limits": limits}

    @app.get("/methods")
    def get_methods() -> dict[str, Any]:
        return {"default": models.methods[0], "backbone": models.backbone, "methods": methods_info(models.methods)}

    def busy(detail: str):
        ra = pool.retry_after()
        return _HTTPError(503, f"{detail}; retry in about {ra} s", {"Retry-After": str(ra)})

    async def read_body(request: Request, seconds: float, held: list[int]) -> bytes:
        """The whole body within `seconds` (else 408), within the size bound (413) and the budget
        of body bytes held at once (503). `held[0]` counts the bytes this request took from it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        declared = request.headers.get("content-length")
        too_big = f"upload too large: the limit is {max_upload_mb:g} MiB ({max_bytes:,} bytes) per image"
        over = declared is not None and declared.isdigit() and int(declared) > hard
        refused = _HTTPError(413, too_big) if over else None
        buf = bytearray()
        drained = 0
        chunks = request.stream().__aiter__()
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(chunks.__anext__(), left)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise _HTTPError(408, f"the request body did not arrive within {seconds:g} s",
                                 {"Connection": "close"}) from None
            # Past a bound, read and discard: answering while the client still sends would reset
            # the connection before it reads the answer. Give up past 4x the bound.
            if refused is not None:
                drained += len(chunk)
                if drained > 4 * hard:
                    break
                continue
            if len(buf) + len(chunk) > hard:
                refused = _HTTPError(413, too_big)
            elif not budget.take(len(chunk)):
                refused = busy(f"the server is busy ({budget.used:,} bytes of uploads in progress)")
            else:
                held[0] += len(chunk)
                buf += chunk
                continue
            budget.give(held[0])
            held[0], drained, buf = 0, len(buf) + len(chunk), bytearray()
        if refused is not None:
            raise refused
        return bytes(buf)

    async def parse_form(request: Request, body: bytes):
        async def stream():
            yield body
            yield b""

        try:
            return await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                         max_part_size=field_bytes).parse()
        except MultiPartException as e:
            raise _HTTPError(422, f"malformed multipart form: {e.message if hasattr(e, 'message') else e}")

    def work(data: bytes, classes: Any, method: str, preset: str | None, background: bool | None, fmt: str,
             deadline: float):
        from PIL import Image

        t0 = time.perf_counter()
        if time.monotonic() > deadline:  # waited out its time in the queue: nobody awaits the answer
            raise RequestExpired("the request's time ran out in the queue")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with open_image(data) as im:
                    im.load()
                    rgb = read_image(im)
        except Image.DecompressionBombError as e:
            raise _HTTPError(413, f"image too large: {e}") from None
        except Exception as e:  # noqa: BLE001 - truncated, corrupt, a decoder's bug: the file is the cause
            raise _HTTPError(415, f"the uploaded image cannot be decoded: {type(e).__name__}: {e}") from None
        try:
            with warnings.catch_warnings():
                # one warning per truncated prompt: 300 long names would write 24,000 to the log
                warnings.filterwarnings("ignore", message="prompt .* more than the context length")
                result = models.segment(rgb, classes, method, preset, background=background, keep_image=False,
                                        deadline=deadline)
        except ValueError as e:  # e.g. an image thinner than one patch after resizing
            raise _HTTPError(422, f"this image cannot be segmented: {e}") from None
        out = result.to_dict()
        if fmt == "png":
            out["label_map"] = {"format": "png", "encoding": "base64",
                                "data": base64.b64encode(index_png_bytes(result.labels, result.palette)).decode()}
        else:
            out["label_map"] = rle_encode(result.labels)
        out["elapsed_s"] = round(time.perf_counter() - t0, 4)
        from ..data.io import _json_default

        return json.dumps(out, default=_json_default, allow_nan=False).encode()

    @app.post("/segment")
    async def segment(request: Request):
        """multipart/form-data: image (file), classes, [method], [preset], [background], [format=png|rle]."""
        deadline = time.monotonic() + request_timeout
        held = [0]  # body bytes taken from the budget
        try:
            ctype = request.headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                raise _HTTPError(415, f"send multipart/form-data with an 'image' file and 'classes'; got "
                                      f"content type {ctype or '(none)'!r}")
            body = await read_body(request, min(body_timeout, request_timeout), held)
            form = await parse_form(request, body)
            del body
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise _HTTPError(422, "missing file field 'image' (send it as a file: -F image=@photo.jpg)")
            data = await upload.read()
            await form.close()
            if len(data) > max_bytes:
                raise _HTTPError(413, f"upload too large: {len(data):,} bytes; the limit is {max_upload_mb:g} MiB "
                                      f"({max_bytes:,} bytes) per image")
            texts = form.getlist("classes")
            if not texts:
                raise _HTTPError(422, "missing field 'classes': give class names separated by commas, "
                                      "synonyms by '|', e.g. classes=\"cat, sofa|couch\"")
            if not all(isinstance(t, str) for t in texts):
                raise _HTTPError(422, "field 'classes' must be text, not a file")
            fmt = (text_field(form, "format") or "png").strip().lower()
            if fmt not in LABEL_FORMATS:
                raise _HTTPError(422, f"unknown format {fmt!r}; choose png or rle")
            background = _parse_bool(text_field(form, "background"), "background")
            groups = [g for t in texts for g in split_class_string(t)]
            check_class_limits(groups, max_classes, max_class_chars)
            try:
                spec = parse_classes(groups, background=background)
                method, preset = models.check(text_field(form, "method"), text_field(form, "preset"))
            except (ValueError, KeyError) as e:
                raise _HTTPError(422, e.args[0] if e.args else str(e)) from None
            _probe_image(data, max_pixels).close()
            # Only now, with the whole request read and checked, does it take a slot.
            if not pool.try_admit():
                raise busy(f"the server is busy ({pool.capacity} requests admitted)")
            try:
                payload = await pool.run_admitted(work, data, spec, method, preset, background, fmt, deadline,
                                                  timeout=max(deadline - time.monotonic(), 0.001))
            except (asyncio.TimeoutError, TimeoutError):
                raise busy(f"the request did not finish within {request_timeout:g} s") from None
            return Response(payload, media_type="application/json")
        except _HTTPError as e:
            return error(e.status, e.detail, e.headers)
        except ImageError as e:
            return error(415, str(e))
        except ClientDisconnect:  # nobody to answer; the status is for the access log only
            return error(400, "the client disconnected before sending the whole request")
        finally:
            budget.give(held[0])

    return app


def limits_text(limits: dict[str, Any]) -> str:
    return (f"Uploads up to {limits['max_upload_mb']:g} MiB and {limits['max_pixels']:,} pixels "
            f"({', '.join(limits['image_formats'])}); up to {limits['max_classes']:,} class names of "
            f"{limits['max_class_chars']:,} characters; bodies within {limits['body_timeout_s']:g} s, "
            f"answers within {limits['request_timeout_s']:g} s; {limits['workers']} worker(s), up to "
            f"{limits['max_queue']} waiting requests (then 503).")


# -------------------------------------------------------------------------------------------- CLI


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """`ovss serve`; imports nothing heavy until the command runs."""
    s = subparsers.add_parser("serve", help="HTTP API: POST /segment, GET /methods, GET /health (ovss[serve])",
                              description="A small HTTP API over the segmenters (FastAPI + uvicorn): "
                                          "POST /segment, GET /methods, GET /health. Needs ovss[serve].")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes the API, which has no auth)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backbone", default="clip-vit-b16", help="backbone name, file, folder or hf-hub:org/repo")
    s.add_argument("--weights", help="read the backbone's weights from this file or folder")
    s.add_argument("--tokenizer", help="tokenizer vocabulary file or folder, if not beside the weights")
    s.add_argument("--method", action="append", default=[], metavar="M",
                   help="a method to offer (repeatable; default: all). The first is the default")
    s.add_argument("--device", default="auto")
    s.add_argument("--workers", type=int, help="worker threads (default: 1 on CPU, 2 on a GPU)")
    s.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests allowed to wait beyond the workers before 503 (default {DEFAULT_MAX_QUEUE})")
    s.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload in MiB (default {DEFAULT_MAX_UPLOAD_MB:g}); larger gets 413")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest image in pixels (default {DEFAULT_MAX_PIXELS:,}); larger gets 413")
    s.add_argument("--max-classes", type=int, default=DEFAULT_MAX_CLASSES,
                   help=f"most class names per request, synonyms included (default {DEFAULT_MAX_CLASSES}); "
                        "more gets 422")
    s.add_argument("--max-class-chars", type=int, default=DEFAULT_MAX_CLASS_CHARS,
                   help=f"longest class name in characters (default {DEFAULT_MAX_CLASS_CHARS}); "
                        "longer gets 422")
    s.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT, metavar="S",
                   help="seconds a client has to send a whole request body (default "
                        f"{DEFAULT_BODY_TIMEOUT:g}); slower gets 408")
    s.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, metavar="S",
                   help=f"seconds from a request's arrival to its answer, queueing included (default "
                        f"{DEFAULT_REQUEST_TIMEOUT:g}); longer gets 503")
    s.add_argument("--cache-dir", help="weights cache (default: the Hugging Face hub cache)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)
    return s


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    missing = [name for name, mods in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                       ("python-multipart", ["python_multipart", "multipart"]))
               if not any(importlib.util.find_spec(m) for m in mods)]
    if missing:
        print(f"ovss serve: error: {SERVE_EXTRA_HINT} (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    import uvicorn
    app = create_app(args.backbone, weights=args.weights, methods=args.method or None, device=args.device,
                     max_queue=args.max_queue, workers=args.workers, max_upload_mb=args.max_upload_mb,
                     max_pixels=args.max_pixels, tokenizer=args.tokenizer, cache_dir=args.cache_dir,
                     max_classes=args.max_classes, max_class_chars=args.max_class_chars,
                     body_timeout=args.body_timeout, request_timeout=args.request_timeout)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: the API has no authentication", flush=True)
    print(f"ovss serve: http://{args.host}:{args.port}  (POST /segment, GET /methods, GET /health; "
          f"{limits_text(app.state.limits)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
