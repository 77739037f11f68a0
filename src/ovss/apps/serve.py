"""`ovss serve`: a small HTTP API over the segmenters (FastAPI + uvicorn, the `ovss[serve]` extra).

Endpoints (`/docs` shows and tries them, served from this server: it works offline):

- ``POST /segment``: one image and a class list, as ``multipart/form-data`` (``image`` file) or
  ``application/json`` (``image`` as base64, a data: URL is fine). Fields: ``classes`` ("cat,
  sofa|couch": classes split on commas, synonyms on "|"; in JSON also a list, one class per item),
  optional ``method`` (default: the server's first), ``preset``, ``background`` (true/false),
  ``format`` (``png``, ``rle`` or ``coco_rle``), ``counts`` (``string`` or ``list``, for
  coco_rle) and ``scores`` (true/false). The answer is the JSON sidecar (`Result.to_dict`: class
  names, colours, area shares, mean scores, settings) plus ``class_names`` (the class list used,
  in label-map order), ``classes_requested``, ``background_added`` (class 0 "background" was
  added by the method's probability threshold, shifting every requested class by one) and:

  - ``format=png``: ``label_map = {"format": "png", "encoding": "base64", "data": ...}``, the
    index PNG exactly as ``ovss segment`` writes it (8-bit palette PNG whose pixel values are the
    class indices; 16-bit grey above 256 classes);
  - ``format=rle``: ``label_map = {"format": "rle", "size": [H, W], "order": "row-major",
    "values": [...], "lengths": [...]}``, the label map read row by row as runs of equal values;
    ``np.repeat(values, lengths).reshape(H, W)``;
  - ``format=coco_rle``: ``masks``, one per class (absent ones too): ``{"index", "name", "pixels",
    "segmentation": {"size": [H, W], "counts": ...}}``, the class's binary mask as COCO RLE
    (column-major runs alternating 0s and 1s, starting with 0s), ``counts`` as pycocotools'
    compressed string (``counts=string``, what ``pycocotools.mask.encode`` gives and ``decode``
    reads) or as the list of run lengths (``counts=list``);
  - ``scores=true`` adds ``score_maps``: each class's probability as an 8-bit grey PNG (base64,
    value = round(255 p)), at the image size (at the network's size for very large images).

- ``POST /segment/batch``: several images (``image`` repeated in the form, or ``images`` in JSON)
  and one class list; answers ``application/x-ndjson``, one JSON line per image as it finishes:
  ``{"index", "filename", "status": 200, ...the /segment answer}`` or ``{"index", "filename",
  "status": 4xx/5xx, "detail"}`` for an image that failed. The whole batch's body is bounded
  like one upload (``max_upload_mb``), at most ``max_batch`` images; it holds one slot, and each
  image has the request timeout from the moment its job is queued.
- ``GET /methods``: the methods this server runs, with their presets, and whether each is ready
  here (``ready``; ``missing`` says what it lacks, e.g. a DINO model to ``ovss download``).
- ``GET /health``: status, device, queue occupancy and loaded models.

Every failure is JSON ``{"detail": "...", "status": N}``: 404/405 unknown path or method; 408
body not received within ``body_timeout`` (default 60 s); 413 upload over ``max_upload_mb``
(default 20 MiB) or image over ``max_pixels`` (default 25 megapixels, checked from the header
before decoding); 415 neither multipart/form-data nor JSON, or a file that is not a decodable
PNG, JPEG, WebP, BMP, TIFF or GIF (no other decoder is ever reached: EPS would run Ghostscript);
422 missing or bad field (empty or duplicate classes, over ``max_classes`` names or
``max_class_chars`` characters per name, unknown method or preset, bad format, bad base64, an
image too thin to segment); 500 a bug; 503 with ``Retry-After`` when the queue is full or the
request outlived ``request_timeout``, and 503 without it when the method's weights are not on
this server (the detail names the ``ovss download`` command).

Requests run on a bounded pool of worker threads (1 on CPU: torch already uses every core within
one request; 2 on an accelerator, so one request's decoding and encoding overlap another's
forward pass). A request takes a slot only once its whole body has arrived and passed every
check, so slow uploads cannot hold slots; they are cut off by the body timeout, and the bytes
of bodies held at once (uploading or admitted) are bounded by ``capacity`` bodies. At most
``workers + max_queue`` requests are admitted at once; any request beyond that gets 503 at once
with ``Retry-After`` estimated from the measured queue, never a wait without bound. Loaded models
are cached and shared (`ovss.apps.model_cache.ModelCache`, also the web demo's): one CLIP per
server, one `Segmenter` per (method, preset) on top of it; their text banks keep query
embeddings in bounded LRU caches in memory and on disk.
"""

import argparse
import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .model_cache import ModelCache, RequestExpired, WeightsMissing, methods_info

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ModelCache", "RequestExpired", "coco_rle_decode", "coco_rle_encode", "create_app",
           "decode_label_map", "methods_info", "rle_decode", "rle_encode"]

DEFAULT_MAX_UPLOAD_MB = 20.0  # MiB (2^20 bytes)
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BATCH = 16  # images per /segment/batch request
# Class names per request (synonyms count: each is a query) and characters per name. Text cost
# grows with names x templates (one 4000-name request kept a CPU worker 169 s); 300 admits every
# benchmark class list shipped but PASCAL Context-459 (raise --max-classes for it), 200
# characters any real name.
DEFAULT_MAX_CLASSES = 300
DEFAULT_MAX_CLASS_CHARS = 200
DEFAULT_BODY_TIMEOUT = 60.0  # s to receive a whole request body (slow clients get 408)
DEFAULT_REQUEST_TIMEOUT = 300.0  # s from a request's arrival to its answer (then 503)
FORM_OVERHEAD = 64 * 1024  # bytes allowed in a request body beyond the image and class names
LABEL_FORMATS = ("png", "rle", "coco_rle")
COUNTS_FORMS = ("string", "list")
FIELDS = ("classes", "method", "preset", "background", "format", "counts", "scores")
# The only decoders an upload reaches (Pillow ids). Pillow would otherwise try every plugin it
# has, EPS included, which hands the file to Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")

log = logging.getLogger("ovss.serve")

SERVE_EXTRA_HINT = 'the HTTP API needs FastAPI and uvicorn: pip install "ovss[serve]"'


def default_workers(device) -> int:
    """1 worker on CPU (torch spreads one request over all cores), 2 on an accelerator."""
    return 1 if str(device).startswith("cpu") else 2


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


def coco_counts(mask: "np.ndarray") -> list[int]:
    """COCO's uncompressed RLE counts of a binary (H, W) mask: the mask read column by column
    (Fortran order) as run lengths, alternating 0s and 1s and starting with a run of 0s (of length
    0 when the first pixel is set)."""
    import numpy as np

    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return []
    cuts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], cuts, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return runs.astype(np.int64).tolist()


def coco_counts_to_string(counts: Sequence[int]) -> str:
    """Counts in the compressed text form of the COCO API (`pycocotools.mask.encode`'s "counts",
    decoded as ASCII): from the third count on, each is stored as its difference from the count two
    before; every value is written as little-endian groups of 5 bits, one character (48 + the group,
    + 32 when another group follows) per group, the last group's top bit carrying the sign."""
    out = []
    for i, x in enumerate(counts):
        x = int(x)
        if i > 2:
            x -= int(counts[i - 2])
        while True:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: -1 stays -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
            if not more:
                break
    return "".join(out)


def coco_string_to_counts(s: str) -> list[int]:
    """The inverse of `coco_counts_to_string`."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_rle_encode(mask: "np.ndarray", compressed: bool = True) -> dict[str, Any]:
    """A binary (H, W) mask as COCO RLE {"size": [H, W], "counts": str | list}."""
    import numpy as np

    m = np.asarray(mask)
    counts = coco_counts(m)
    return {"size": [int(m.shape[0]), int(m.shape[1])],
            "counts": coco_counts_to_string(counts) if compressed else counts}


def coco_rle_decode(rle: dict[str, Any]) -> "np.ndarray":
    """A COCO RLE (either counts form) -> the (H, W) bool mask."""
    import numpy as np

    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = coco_string_to_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, np.asarray(counts, np.int64))
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, not {h} x {w} = {h * w}")
    return flat.reshape((h, w), order="F")


def decode_label_map(label_map: dict[str, Any]) -> "np.ndarray":
    """A response's ``label_map`` -> (H, W) int64 array (either format)."""
    import numpy as np
    from PIL import Image

    if label_map["format"] == "rle":
        return rle_decode(label_map)

    with Image.open(io.BytesIO(base64.b64decode(label_map["data"]))) as im:
        return np.array(im).astype(np.int64)


def score_png_b64(score: "np.ndarray") -> str:
    """A probability map in [0, 1] as an 8-bit grey PNG (round(255 p)), base64."""
    import numpy as np
    from PIL import Image

    s8 = np.clip(np.round(np.asarray(score, np.float32) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(s8, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def answer_dict(result, fmt: str = "png", counts: str = "string", scores: bool = False,
                requested: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """What /segment answers for one `Result` (see the module doc), without `elapsed_s`; `fmt`
    "none" leaves the label map out."""
    import numpy as np

    out = result.to_dict()
    out["class_names"] = list(result.class_names)
    out["classes_requested"] = [list(g) for g in requested] if requested is not None else None
    out["background_added"] = bool(getattr(result, "background_added", False))
    if fmt == "png":
        out["label_map"] = {"format": "png", "encoding": "base64",
                            "data": base64.b64encode(index_png_bytes(result.labels, result.palette)).decode()}
    elif fmt == "rle":
        out["label_map"] = rle_encode(result.labels)
    elif fmt == "coco_rle":
        lab = np.asarray(result.labels)
        masks = []
        for i, name in enumerate(result.class_names):
            m = lab == i
            masks.append({"index": i, "name": name, "pixels": int(m.sum()),
                          "segmentation": coco_rle_encode(m, compressed=counts == "string")})
        out["masks"] = masks
    if scores:
        sc = np.asarray(result.scores)
        out["score_maps"] = [{"index": i, "name": n, "size": [int(sc.shape[1]), int(sc.shape[2])],
                              "full_size": bool(result.scores_full_size), "format": "png", "encoding": "base64",
                              "data": score_png_b64(sc[i])} for i, n in enumerate(result.class_names)]
    return out


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


class _Parsed:
    """One /segment or /segment/batch request, read from a form or a JSON body."""

    __slots__ = ("background", "counts", "fmt", "groups", "images", "method", "preset", "scores", "texts")

    def __init__(self):
        self.images: list[tuple[str | None, bytes]] = []
        self.texts: list[str] = []
        self.groups: list[list[str]] | None = None  # set when the classes came as a JSON list
        self.method = self.preset = None
        self.background: bool | None = None
        self.fmt, self.counts, self.scores = "png", "string", False


def _choice(value: Any, name: str, choices: Sequence[str], default: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str):
        raise _HTTPError(422, f"field {name!r} must be text, one of {', '.join(choices)}")
    v = value.strip().lower()
    if v not in choices:
        what = "format" if name == "format" else f"{name!r}"
        raise _HTTPError(422, f"unknown {what} {value!r}; choose {', '.join(choices[:-1])} or {choices[-1]}")
    return v


def _text(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _HTTPError(422, f"field {name!r} must be text")
    return value


def _json_bool(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _parse_bool(value, name)
    raise _HTTPError(422, f"field {name!r} must be true or false, got {value!r}")


def _b64_image(value: Any, name: str, max_bytes: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise _HTTPError(422, f"field {name!r} must be the image file as a base64 string")
    if value.startswith("data:"):  # a data: URL
        head, sep, value = value.partition(",")
        if not sep or ";base64" not in head:
            raise _HTTPError(422, f"field {name!r}: a data: URL must be base64 (data:image/png;base64,...)")
    value = "".join(value.split())
    if len(value) > 4 * math.ceil(max_bytes / 3) + 4:
        raise _HTTPError(413, f"upload too large: field {name!r} decodes to more than the limit of "
                              f"{max_bytes:,} bytes per image")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _HTTPError(422, f"field {name!r} is not valid base64: {e}") from None
    if len(data) > max_bytes:
        raise _HTTPError(413, f"upload too large: {len(data):,} bytes; the limit is {max_bytes:,} bytes per image")
    return data


def parse_json_body(body: bytes, batch: bool, max_bytes: int, max_batch: int) -> _Parsed:
    """A JSON request: {"image": base64 | "images": [base64, ...], "classes": ..., ...}."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _HTTPError(422, f"the JSON body cannot be parsed: {e}") from None
    key = "images" if batch else "image"
    if not isinstance(obj, dict):
        raise _HTTPError(422, f"the JSON body must be an object with {key!r} (base64) and 'classes'")
    unknown = sorted(set(obj) - {key, *FIELDS})
    if unknown:
        raise _HTTPError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                              f"{', '.join((key, *FIELDS))}")
    p = _Parsed()
    if key not in obj:
        raise _HTTPError(422, f"missing field {key!r}: the image file{'s' if batch else ''} as base64")
    if batch:
        items = obj["images"]
        if not isinstance(items, list) or not items:
            raise _HTTPError(422, "field 'images' must be a non-empty list of base64 strings")
        if len(items) > max_batch:
            raise _HTTPError(422, f"too many images: {len(items)}; at most {max_batch} per batch")
        p.images = [(None, _b64_image(v, f"images[{i}]", max_bytes)) for i, v in enumerate(items)]
    else:
        p.images = [(None, _b64_image(obj["image"], "image", max_bytes))]
    classes = obj.get("classes")
    if classes is None:
        raise _HTTPError(422, "missing field 'classes': give class names separated by commas, synonyms by '|', "
                              "e.g. \"cat, sofa|couch\", or a list of them")
    if isinstance(classes, str):
        p.texts = [classes]
    elif isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        p.groups = [[s.strip() for s in c.split("|")] for c in classes]
    else:
        raise _HTTPError(422, "field 'classes' must be a string or a list of strings")
    p.method, p.preset = _text(obj.get("method"), "method"), _text(obj.get("preset"), "preset")
    p.background = _json_bool(obj.get("background"), "background")
    p.fmt = _choice(obj.get("format"), "format", LABEL_FORMATS, "png")
    p.counts = _choice(obj.get("counts"), "counts", COUNTS_FORMS, "string")
    p.scores = bool(_json_bool(obj.get("scores"), "scores"))
    return p


def create_app(backbone: str = "clip-vit-b16", weights: str | os.PathLike | None = None,
               methods: Sequence[str] | None = None, device: str = "auto", max_queue: int = DEFAULT_MAX_QUEUE,
               workers: int | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, tokenizer: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, preload: bool = True,
               models: ModelCache | None = None, max_classes: int = DEFAULT_MAX_CLASSES,
               max_class_chars: int = DEFAULT_MAX_CLASS_CHARS, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT, max_batch: int = DEFAULT_MAX_BATCH):
    """The FastAPI app. `preload` loads the CLIP now, so a bad backbone fails at start-up (and
    the first request does not pay for it). `models` shares an existing cache."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response, StreamingResponse
    except ImportError as e:
        raise ImportError(f"{SERVE_EXTRA_HINT} ({e})") from e
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    from ..core.version import __version__
    from ..data.io import ImageError, read_image
    from ..methods import get_method
    from ..text.bank import parse_classes, split_class_string
    from . import api_docs

    if min(max_classes, max_class_chars, max_batch) < 1 or min(body_timeout, request_timeout) <= 0:
        raise ValueError("max_classes, max_class_chars, max_batch, body_timeout and request_timeout must be "
                         "positive")
    models = models or ModelCache(backbone, weights=weights, device=device, methods=methods,
                                  tokenizer=tokenizer, cache_dir=cache_dir)
    if preload:
        models.clip()
    pool = WorkerPool(workers or default_workers(models.device), max_queue)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    # form fields: the class names at up to 4 UTF-8 bytes a character, plus separators
    field_bytes = FORM_OVERHEAD + 4 * max_classes * (max_class_chars + 2)
    hard = max_bytes + field_bytes  # largest multipart body read
    hard_json = 4 * math.ceil(max_bytes / 3) + field_bytes  # the same image in base64
    budget = ByteBudget(pool.capacity * max(hard, hard_json))
    limits = {"max_upload_mb": max_upload_mb, "max_upload_bytes": max_bytes, "max_pixels": max_pixels,
              "workers": pool.workers, "max_queue": pool.max_queue, "max_classes": max_classes,
              "max_class_chars": max_class_chars, "body_timeout_s": body_timeout,
              "request_timeout_s": request_timeout, "image_formats": list(IMAGE_FORMATS), "max_batch": max_batch}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPI(title="ovss", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Training-free open-vocabulary semantic segmentation. " + limits_text(limits))
    app.state.models = models
    app.state.pool = pool
    app.state.limits = limits
    app.state.budget = budget
    app.state.docs = api_docs.install_docs(app, "ovss")
    app.add_middleware(JSONErrorsMiddleware)
    docs = api_docs.models()
    presets = sorted({p for m in models.methods for p in get_method(m).presets})

    def error(status: int, detail: str, headers: dict[str, str] | None = None):
        return JSONResponse({"detail": detail, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):  # 404, 405, ...: the same JSON shape as every other error
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc):
        return error(422, f"bad request: {exc.errors()}")

    @app.get("/health", summary="Status, device, queue and loaded models",
             responses=api_docs.error_responses(500))
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "device": str(models.device),
                "backbone": models.backbone, "queue": {"admitted": pool.admitted, "capacity": pool.capacity,
                                                        "workers": pool.workers, "served": pool.served,
                                                        "rejected": pool.rejected,
                                                        "expected_wait_s": round(pool.expected_wait(), 3)},
                "uploads": {"bytes_held": budget.used, "bytes_limit": budget.limit},
                "loaded": models.loaded(), "limits": limits}

    @app.get("/methods", summary="The methods this server runs, their presets, and which are ready here",
             response_model=docs.MethodsAnswer, responses=api_docs.error_responses(500))
    def get_methods() -> dict[str, Any]:
        return {"default": models.methods[0], "backbone": models.backbone,
                "methods": methods_info(models.methods, models)}

    def busy(detail: str):
        ra = pool.retry_after()
        return _HTTPError(503, f"{detail}; retry in about {ra} s", {"Retry-After": str(ra)})

    async def read_body(request: Request, seconds: float, held: list[int], limit: int, too_big: str) -> bytes:
        """The whole body within `seconds` (else 408), within `limit` bytes (413) and the budget of
        body bytes held at once (503). `held[0]` counts the bytes this request took from it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        declared = request.headers.get("content-length")
        over = declared is not None and declared.isdigit() and int(declared) > limit
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
                if drained > 4 * limit:
                    break
                continue
            if len(buf) + len(chunk) > limit:
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

    async def parse_multipart(request: Request, body: bytes, batch: bool) -> _Parsed:
        async def stream():
            yield body
            yield b""

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=max_batch if batch else 1,
                                         max_fields=16, max_part_size=field_bytes).parse()
        except MultiPartException as e:
            msg = e.message if hasattr(e, "message") else str(e)
            if batch and "files" in msg.lower():
                raise _HTTPError(422, f"too many images; at most {max_batch} per batch ({msg})") from None
            raise _HTTPError(422, f"malformed multipart form: {msg}") from None
        try:
            p = _Parsed()
            uploads = form.getlist("image")
            if not uploads or any(isinstance(u, str) for u in uploads):
                raise _HTTPError(422, "missing file field 'image' (send it as a file: -F image=@photo.jpg)")
            for u in uploads:
                data = await u.read()
                if len(data) > max_bytes:
                    raise _HTTPError(413, f"upload too large: {len(data):,} bytes; the limit is {max_upload_mb:g} "
                                          f"MiB ({max_bytes:,} bytes) per image")
                p.images.append((u.filename, data))
            p.texts = form.getlist("classes")
            if not p.texts:
                raise _HTTPError(422, "missing field 'classes': give class names separated by commas, "
                                      "synonyms by '|', e.g. classes=\"cat, sofa|couch\"")
            if not all(isinstance(t, str) for t in p.texts):
                raise _HTTPError(422, "field 'classes' must be text, not a file")
            p.method, p.preset = text_field(form, "method"), text_field(form, "preset")
            p.fmt = _choice(text_field(form, "format"), "format", LABEL_FORMATS, "png")
            p.counts = _choice(text_field(form, "counts"), "counts", COUNTS_FORMS, "string")
            p.background = _parse_bool(text_field(form, "background"), "background")
            p.scores = bool(_parse_bool(text_field(form, "scores"), "scores"))
            return p
        finally:
            await form.close()

    async def read_request(request: Request, held: list[int], deadline: float, batch: bool) -> _Parsed:
        ctype = request.headers.get("content-type", "").lower()
        field = "'image' files" if batch else "an 'image' file"
        if ctype.startswith("multipart/form-data"):
            limit, json_body = hard, False
        elif ctype.startswith("application/json"):
            limit, json_body = hard_json, True
        else:
            raise _HTTPError(415, f"send multipart/form-data with {field} and 'classes', or application/json "
                                  f"with the image{'s' if batch else ''} in base64; got content type "
                                  f"{ctype or '(none)'!r}")
        what = "per batch (all its images together)" if batch else "per image"
        too_big = f"upload too large: the limit is {max_upload_mb:g} MiB ({max_bytes:,} bytes) {what}"
        body = await read_body(request, max(0.001, min(body_timeout, deadline - time.monotonic())), held, limit,
                               too_big)
        if json_body:
            return parse_json_body(body, batch, max_bytes, max_batch)
        return await parse_multipart(request, body, batch)

    def checked(p: _Parsed):
        """(ClassSpec, groups, method, preset) of a parsed request, or 422/503 before any work."""
        groups = p.groups if p.groups is not None else [g for t in p.texts for g in split_class_string(t)]
        check_class_limits(groups, max_classes, max_class_chars)
        try:
            spec = parse_classes(groups, background=p.background)
            method, preset = models.check(p.method, p.preset)
        except (ValueError, KeyError) as e:
            raise _HTTPError(422, e.args[0] if e.args else str(e)) from None
        why = models.missing(method, preset)
        if why:  # never load (or download) weights inside a request: say how to get them
            raise _HTTPError(503, why)
        return spec, [list(g) for g in spec.synonyms], method, preset

    def work(data: bytes, spec: Any, groups: list[list[str]], method: str, preset: str | None,
             p: _Parsed, deadline: float, extra: dict[str, Any] | None = None) -> bytes:
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
                result = models.segment(rgb, spec, method, preset, background=p.background, keep_image=False,
                                        deadline=deadline)
        except WeightsMissing as e:
            raise _HTTPError(503, str(e)) from None
        except ValueError as e:  # e.g. an image thinner than one patch after resizing
            raise _HTTPError(422, f"this image cannot be segmented: {e}") from None
        out = dict(extra or {})
        out.update(answer_dict(result, p.fmt, p.counts, p.scores, groups))
        out["elapsed_s"] = round(time.perf_counter() - t0, 4)
        from ..data.io import _json_default

        return json.dumps(out, default=_json_default, allow_nan=False).encode()

    def failure(e: BaseException) -> tuple[int, str, dict[str, str]]:
        if isinstance(e, _HTTPError):
            return e.status, e.detail, e.headers
        if isinstance(e, ImageError):
            return 415, str(e), {}
        return 500, "internal server error (the server log has the details)", {}

    seg_doc = ("One image and a class list, as a multipart form (`image` file) or as JSON (`image` in "
               "base64). Answers the label map (index PNG or runs), or a COCO RLE mask per class, and "
               "optionally each class's score map; `class_names` and `background_added` say which class "
               "list was used. " + limits_text(limits))

    @app.post("/segment", summary="Segment one image", description=seg_doc, response_model=docs.SegmentResult,
              responses=api_docs.error_responses(408, 413, 415, 422, 500, 503),
              openapi_extra={"requestBody": api_docs.request_bodies(models.methods, presets, limits)})
    async def segment(request: Request):
        deadline = time.monotonic() + request_timeout
        held = [0]  # body bytes taken from the budget
        try:
            p = await read_request(request, held, deadline, batch=False)
            spec, groups, method, preset = checked(p)
            data = p.images[0][1]
            _probe_image(data, max_pixels).close()
            # Only now, with the whole request read and checked, does it take a slot.
            if not pool.try_admit():
                raise busy(f"the server is busy ({pool.capacity} requests admitted)")
            try:
                payload = await pool.run_admitted(work, data, spec, groups, method, preset, p, deadline,
                                                  timeout=max(deadline - time.monotonic(), 0.001))
            except (asyncio.TimeoutError, TimeoutError):
                raise busy(f"the request did not finish within {request_timeout:g} s") from None
            return Response(payload, media_type="application/json")
        except (_HTTPError, ImageError) as e:
            return error(*failure(e))
        except ClientDisconnect:  # nobody to answer; the status is for the access log only
            return error(400, "the client disconnected before sending the whole request")
        finally:
            budget.give(held[0])

    batch_doc = ("Several images and one class list (multipart: repeat `image`; JSON: `images`, base64). "
                 "Answers NDJSON (application/x-ndjson), one line per image as it finishes: `index`, "
                 "`filename`, `status` and, with status 200, the fields of the /segment answer, else "
                 f"`detail`. At most {max_batch} images, together within {max_upload_mb:g} MiB; the batch "
                 "holds one slot, each image has the request timeout from when its job is queued.")

    @app.post("/segment/batch", summary="Segment several images, streaming one JSON line per image",
              description=batch_doc,
              responses={200: {"description": "one JSON object per line (application/x-ndjson), per image",
                               "content": {"application/x-ndjson": {
                                   "schema": docs.BatchLine.model_json_schema()}}},
                         **api_docs.error_responses(408, 413, 415, 422, 500, 503)},
              openapi_extra={"requestBody": api_docs.request_bodies(models.methods, presets, limits, batch=True)})
    async def segment_batch(request: Request):
        held = [0]
        handed_over = False
        try:
            p = await read_request(request, held, time.monotonic() + request_timeout, batch=True)
            spec, groups, method, preset = checked(p)
            if not pool.try_admit():
                raise busy(f"the server is busy ({pool.capacity} requests admitted)")
            taken = held[0]
            handed_over = True

            async def lines():
                pending = None
                try:
                    for i, (name, data) in enumerate(p.images):
                        extra = {"index": i, "filename": name, "status": 200}
                        try:
                            _probe_image(data, max_pixels).close()
                            deadline = time.monotonic() + request_timeout
                            pending = pool.submit(work, data, spec, groups, method, preset, p, deadline, extra)
                            waiter = asyncio.wrap_future(pending)
                            try:
                                line = await asyncio.wait_for(asyncio.shield(waiter), request_timeout)
                            except (asyncio.TimeoutError, TimeoutError):
                                pending.cancel()
                                raise _HTTPError(503, f"this image did not finish within {request_timeout:g} s")
                            pending = None
                        except asyncio.CancelledError:
                            raise
                        except Exception as e:
                            if isinstance(e, RequestExpired):
                                e = _HTTPError(503, f"this image did not finish within {request_timeout:g} s")
                            elif not isinstance(e, (_HTTPError, ImageError)):
                                log.exception("batch image %d failed", i)
                            status, detail, _ = failure(e)
                            line = json.dumps({"index": i, "filename": name, "status": status,
                                               "detail": detail}).encode()
                        yield line + b"\n"
                finally:
                    p.images = []
                    budget.give(taken)
                    if pending is not None and not pending.done():  # the client left mid-job
                        pending.add_done_callback(lambda _: pool.release())
                    else:
                        pool.release()

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        except (_HTTPError, ImageError) as e:
            return error(*failure(e))
        except ClientDisconnect:
            return error(400, "the client disconnected before sending the whole request")
        finally:
            if not handed_over:
                budget.give(held[0])

    return app


def limits_text(limits: dict[str, Any]) -> str:
    return (f"Uploads up to {limits['max_upload_mb']:g} MiB and {limits['max_pixels']:,} pixels "
            f"({', '.join(limits['image_formats'])}); up to {limits['max_classes']:,} class names of "
            f"{limits['max_class_chars']:,} characters; bodies within {limits['body_timeout_s']:g} s, "
            f"answers within {limits['request_timeout_s']:g} s; {limits['workers']} worker(s), up to "
            f"{limits['max_queue']} waiting requests (then 503); batches of up to {limits['max_batch']} images.")


# -------------------------------------------------------------------------------------------- CLI


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """`ovss serve`; imports nothing heavy until the command runs."""
    s = subparsers.add_parser("serve", help="HTTP API: POST /segment, /segment/batch, GET /methods, /health, /docs "
                                            "(ovss[serve])",
                              description="A small HTTP API over the segmenters (FastAPI + uvicorn): "
                                          "POST /segment, POST /segment/batch, GET /methods, GET /health; "
                                          "/docs describes and tries them (served locally). Needs ovss[serve].")
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
    s.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"most images per /segment/batch request (default {DEFAULT_MAX_BATCH}); more gets 422")
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
                     body_timeout=args.body_timeout, request_timeout=args.request_timeout,
                     max_batch=args.max_batch)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: the API has no authentication", flush=True)
    print(f"ovss serve: http://{args.host}:{args.port}  (POST /segment, /segment/batch, GET /methods, /health; "
          f"docs at /docs; "
          f"{limits_text(app.state.limits)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
