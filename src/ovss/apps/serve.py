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

Errors are JSON ``{"detail": "...", "status": N}``:
413 upload over ``max_upload_mb`` (default 20 MiB) or image over ``max_pixels`` (default 25
megapixels, checked from the header before decoding); 415 not multipart/form-data, or a file
that is not a decodable image; 422 missing or bad field (empty or duplicate classes, unknown
method or preset, bad format); 503 with ``Retry-After`` when the queue is full.

Requests run on a bounded pool of worker threads (1 on CPU: torch already uses every core within
one request; 2 on an accelerator, so one request's decoding and encoding overlap another's
forward pass). At most ``workers + max_queue`` requests are admitted at once (uploads included,
which bounds the memory held by bodies); any request beyond that gets 503 at once, never a wait
without bound. Loaded models are cached and shared: one CLIP per server, one `Segmenter` per
(method, preset) on top of it; their text banks keep query embeddings in memory and on disk.
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_UPLOAD_MB = 20.0  # MiB (2^20 bytes)
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_QUEUE = 16
FORM_OVERHEAD = 64 * 1024  # bytes allowed in a request body beyond the image (form fields, boundaries)
LABEL_FORMATS = ("png", "rle")

SERVE_EXTRA_HINT = 'the HTTP API needs FastAPI and uvicorn: pip install "ovss[serve]"'


# ------------------------------------------------------------------------------------- model cache


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
                background: bool | None = None, keep_image: bool = True):
        """Run one (method, preset) on an image; one call at a time per cached Segmenter."""
        e = self.entry(method, preset)
        with e.lock:
            return e.segmenter(image, classes, background=background, keep_image=keep_image)

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

    def __init__(self, workers: int, max_queue: int):
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
        self._mean_s = 1.0  # running mean of a job's seconds, for Retry-After

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

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue drained at the mean job time."""
        return max(1, math.ceil(self._mean_s * self.capacity / self.workers))

    def submit(self, fn, *args):
        """Queue `fn(*args)` on a worker; returns a concurrent.futures.Future."""
        def timed():
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                dt = time.perf_counter() - t0
                with self._lock:
                    self.served += 1
                    self._mean_s = 0.8 * self._mean_s + 0.2 * dt

        return self._executor.submit(timed)

    async def run_admitted(self, fn, *args):
        """Run an admitted request's job; its slot is released when the job ends (also if the
        client goes away meanwhile: the slot stays taken while a worker still runs it)."""
        fut = self.submit(fn, *args)
        fut.add_done_callback(lambda _: self.release())
        return await asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# -------------------------------------------------------------------------------------------- app


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


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


def _probe_image(data: bytes, max_pixels: int):
    """Open the upload lazily (header only): 415 if it is no image, 413 if over the pixel bound."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise _HTTPError(413, f"image too large: {e}; the limit is {max_pixels:,} pixels") from None
        except Image.UnidentifiedImageError:
            raise _HTTPError(415, "the uploaded file is not an image in a format this server reads "
                                  "(PNG, JPEG, WebP, BMP, TIFF, GIF, ...)") from None
        except (OSError, SyntaxError, ValueError) as e:
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
               models: ModelCache | None = None):
    """The FastAPI app. `preload` loads the CLIP now, so a bad backbone fails at start-up (and
    the first request does not pay for it). `models` shares an existing cache."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response
    except ImportError as e:
        raise ImportError(f"{SERVE_EXTRA_HINT} ({e})") from e
    from starlette.formparsers import MultiPartException, MultiPartParser

    from ..core.version import __version__
    from ..data.io import ImageError, read_image
    from ..text.bank import parse_classes, split_class_string

    models = models or ModelCache(backbone, weights=weights, device=device, methods=methods,
                                  tokenizer=tokenizer, cache_dir=cache_dir)
    if preload:
        models.clip()
    pool = WorkerPool(workers or default_workers(models.device), max_queue)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    limits = {"max_upload_mb": max_upload_mb, "max_upload_bytes": max_bytes, "max_pixels": max_pixels,
              "workers": pool.workers, "max_queue": pool.max_queue}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPI(title="ovss", version=__version__, lifespan=lifespan,
                  description="Training-free open-vocabulary semantic segmentation. " + limits_text(limits))
    app.state.models = models
    app.state.pool = pool
    app.state.limits = limits

    def error(status: int, detail: str, headers: dict[str, str] | None = None):
        return JSONResponse({"detail": detail, "status": status}, status_code=status, headers=headers)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "device": str(models.device),
                "backbone": models.backbone, "queue": {"admitted": pool.admitted, "capacity": pool.capacity,
                                                        "workers": pool.workers, "served": pool.served,
                                                        "rejected": pool.rejected},
                "loaded": models.loaded(), "limits": limits}

    @app.get("/methods")
    def get_methods() -> dict[str, Any]:
        return {"default": models.methods[0], "backbone": models.backbone, "methods": methods_info(models.methods)}

    async def read_body(request: Request) -> bytes:
        hard = max_bytes + FORM_OVERHEAD
        declared = request.headers.get("content-length")
        too_big = f"upload too large: the limit is {max_upload_mb:g} MiB ({max_bytes:,} bytes) per image"
        buf = bytearray()
        over = declared is not None and declared.isdigit() and int(declared) > hard
        drained = 0
        # Read (and past the bound, discard) the body: answering 413 while the client still
        # sends would reset the connection before it reads the answer. Give up past 4x the bound.
        async for chunk in request.stream():
            if over:
                drained += len(chunk)
                if drained > 4 * hard:
                    break
                continue
            buf += chunk
            if len(buf) > hard:
                over, drained, buf = True, len(buf), bytearray()
        if over:
            raise _HTTPError(413, too_big)
        return bytes(buf)

    async def parse_form(request: Request, body: bytes):
        async def stream():
            yield body
            yield b""

        try:
            return await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16,
                                         max_part_size=FORM_OVERHEAD).parse()
        except MultiPartException as e:
            raise _HTTPError(422, f"malformed multipart form: {e.message if hasattr(e, 'message') else e}")

    def work(data: bytes, classes: Any, method: str, preset: str | None, background: bool | None, fmt: str):
        from PIL import Image

        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    rgb = read_image(im)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise _HTTPError(415, f"the uploaded image cannot be decoded: {e}") from None
        result = models.segment(rgb, classes, method, preset, background=background, keep_image=False)
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
        if not pool.try_admit():
            ra = pool.retry_after()
            return error(503, f"the server is busy ({pool.capacity} requests admitted); retry in about {ra} s",
                         {"Retry-After": str(ra)})
        handed_over = False
        try:
            ctype = request.headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                raise _HTTPError(415, f"send multipart/form-data with an 'image' file and 'classes'; got "
                                      f"content type {ctype or '(none)'!r}")
            body = await read_body(request)
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
            try:
                groups = [g for t in texts for g in split_class_string(t)]
                spec = parse_classes(groups, background=background)
                method, preset = models.check(text_field(form, "method"), text_field(form, "preset"))
            except (ValueError, KeyError) as e:
                raise _HTTPError(422, e.args[0] if e.args else str(e)) from None
            _probe_image(data, max_pixels).close()
            handed_over = True  # from here the job releases the slot when it ends
            payload = await pool.run_admitted(work, data, spec, method, preset, background, fmt)
            return Response(payload, media_type="application/json")
        except _HTTPError as e:
            return error(e.status, e.detail, e.headers)
        except ImageError as e:
            return error(415, str(e))
        finally:
            if not handed_over:
                pool.release()

    return app


def limits_text(limits: dict[str, Any]) -> str:
    return (f"Uploads up to {limits['max_upload_mb']:g} MiB and {limits['max_pixels']:,} pixels; "
            f"{limits['workers']} worker(s), up to {limits['max_queue']} waiting requests (then 503).")


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
                     max_pixels=args.max_pixels, tokenizer=args.tokenizer, cache_dir=args.cache_dir)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: the API has no authentication", flush=True)
    print(f"ovss serve: http://{args.host}:{args.port}  (POST /segment, GET /methods, GET /health; "
          f"{limits_text(app.state.limits)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
