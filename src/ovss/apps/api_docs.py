"""What `ovss serve` tells OpenAPI about itself, and its documentation pages served locally.

The `/segment` handlers read the raw request (so the body timeout, the byte budget and the slot
taken only after the whole body has arrived keep working); this module declares to FastAPI what
they accept and answer instead: the multipart form and the JSON body with every field, the
response models, and each error status with its JSON body. `/docs` (Swagger UI) and `/redoc`
(ReDoc) load their scripts from this server, never from a CDN: from the `fastapi-offline` package
(the `serve` extra ships it: Swagger UI and ReDoc builds, about 2.8 MB) when it is installed, else
`/docs` and `/redoc` serve a small self-contained page that lists the operations, fields and
answers from `/openapi.json` (no "try it out").
"""

from __future__ import annotations

import functools
import html
from pathlib import Path
from typing import Any

DOC_ASSETS = {  # what /docs/assets/ serves, by name: the file in fastapi-offline's static folder
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "application/javascript",
    "favicon.png": "image/png",
}

REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"

ERRORS = {  # status -> what it means on /segment (the OpenAPI descriptions)
    400: "the client went away before sending the whole request (only the access log sees this)",
    408: "the request body did not arrive within the body timeout",
    413: "upload over the size limit, or an image over the pixel limit (read from its header)",
    415: "a body that is neither multipart/form-data nor application/json, or a file that is not a "
         "decodable PNG, JPEG, WebP, BMP, TIFF or GIF",
    422: "a missing or bad field: empty or duplicate classes, too many or too long class names, unknown "
         "method or preset, bad format, bad base64, an image too thin to segment",
    500: "a bug (the server log has the traceback)",
    503: "busy (queue full or the request outlived the request timeout: `Retry-After` says when to retry), "
         "or the method's weights are not on this server (no Retry-After: the detail says how to get them)",
}


def docs_assets_dir() -> Path | None:
    """fastapi-offline's folder of Swagger UI and ReDoc builds, if that package is installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    d = Path(fastapi_offline.__file__).parent / "static"
    return d if all((d / n).is_file() for n in DOC_ASSETS) else None


@functools.cache
def models() -> Any:
    """The response models (pydantic), built on first use so importing serve stays light."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class ErrorBody(BaseModel):
        detail: str = Field(description="what went wrong, with the limit or the valid values")
        status: int = Field(description="the HTTP status code, repeated in the body")

    class ClassInfo(BaseModel):
        index: int = Field(description="the class's value in the label map")
        name: str
        color: list[int] = Field(description="[r, g, b]: the class's colour, from its name (the same in every "
                                             "method's answer); a 'background' class is black")
        area: float = Field(description="fraction of the image's pixels given to the class")
        mean_score: float | None = Field(description="mean probability over the class's pixels (null if none)")

    class LabelMapPNG(BaseModel):
        format: Literal["png"]
        encoding: Literal["base64"]
        data: str = Field(description="the index PNG, base64: 8-bit palette PNG whose pixel values are the "
                                      "class indices (16-bit grey above 256 classes)")

    class LabelMapRLE(BaseModel):
        format: Literal["rle"]
        size: list[int] = Field(description="[H, W]")
        order: Literal["row-major"]
        values: list[int] = Field(description="the class index of each run")
        lengths: list[int] = Field(description="the length of each run; np.repeat(values, lengths).reshape(H, W)")

    class CocoRLE(BaseModel):
        size: list[int] = Field(description="[H, W]")
        counts: str | list[int] = Field(description="COCO RLE of the binary mask in column-major order, runs "
                                                    "alternating 0s and 1s from 0s: a list (uncompressed, "
                                                    "counts=list) or pycocotools' compressed string (counts=string)")

    class ClassMask(BaseModel):
        index: int
        name: str
        pixels: int = Field(description="pixels in the mask")
        segmentation: CocoRLE = Field(description="pycocotools.mask.decode reads it (a string form directly; "
                                                  "a list form after frPyObjects)")

    class ScoreMap(BaseModel):
        index: int
        name: str
        size: list[int] = Field(description="[h, w]: the image size, or the network's for very large images")
        full_size: bool
        format: Literal["png"]
        encoding: Literal["base64"]
        data: str = Field(description="8-bit grey PNG, base64: round(255 x the class's probability)")

    class SegmentResult(BaseModel):
        model_config = ConfigDict(extra="allow")

        image_size: list[int] = Field(description="[H, W]")
        classes: list[ClassInfo]
        class_names: list[str] = Field(description="the class list used, in label-map order (with 'background' "
                                                   "first when one was added)")
        classes_requested: list[list[str]] = Field(description="the classes asked for, each with its synonyms")
        background_added: bool = Field(description="true when class 0 'background' was added by the method's "
                                                   "probability threshold (every other index is then the "
                                                   "requested class's + 1)")
        method: str
        preset: str | None
        backbone: str
        weights_id: str | None = None
        recipe: dict[str, Any] = Field(description="every setting the method ran with")
        ovss_version: str
        label_map: LabelMapPNG | LabelMapRLE | None = Field(
            None, description="with format=png or rle")
        masks: list[ClassMask] | None = Field(None, description="with format=coco_rle: one per class, absent "
                                                                "classes included (empty masks)")
        score_maps: list[ScoreMap] | None = Field(None, description="with scores=true: one per class")
        elapsed_s: float

    class BatchLine(BaseModel):
        model_config = ConfigDict(extra="allow")

        index: int = Field(description="the image's position in the request")
        filename: str | None = Field(None, description="the uploaded file's name, if it had one")
        status: int = Field(description="200, or this image's error status (413, 415, 422, 500, 503)")
        detail: str | None = Field(None, description="the error, when status is not 200")

    class Readiness(BaseModel):
        ready: bool
        missing: str | None = Field(None, description="what the method lacks here and how to get it")

    class MethodsAnswer(BaseModel):
        default: str
        backbone: str
        methods: dict[str, dict[str, Any]] = Field(description="per method: summary, paper, code, ready, "
                                                               "missing, presets (each with ready, missing)")

    class Bag:
        pass

    bag = Bag()
    for m in (ErrorBody, ClassInfo, LabelMapPNG, LabelMapRLE, CocoRLE, ClassMask, ScoreMap, SegmentResult,
              BatchLine, Readiness, MethodsAnswer):
        setattr(bag, m.__name__, m)
    return bag


def error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    """`responses=` entries for FastAPI: each code with the JSON error body and what it means."""
    err = models().ErrorBody
    out: dict[int, dict[str, Any]] = {}
    for c in codes:
        out[c] = {"model": err, "description": ERRORS[c]}
        if c == 503:
            out[c]["headers"] = {"Retry-After": {"description": "seconds to wait (only when busy)",
                                                 "schema": {"type": "integer"}}}
    return out


def _fields(methods: list[str], presets: list[str], limits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "classes": {"type": "string", "example": "cat, sofa|couch, wooden floor",
                    "description": f"class names separated by commas, synonyms by '|'; at most "
                                   f"{limits['max_classes']} names (synonyms count) of "
                                   f"{limits['max_class_chars']} characters"},
        "method": {"type": "string", "enum": methods, "default": methods[0],
                   "description": "the method (GET /methods says which are ready here)"},
        "preset": {"type": "string", "enum": presets,
                   "description": "one of the method's presets (settings of a paper's benchmark)"},
        "background": {"type": "boolean", "description": "treat the first class as background (pixels under "
                                                         "the method's probability threshold go there)"},
        "format": {"type": "string", "enum": ["png", "rle", "coco_rle"], "default": "png",
                   "description": "png: the index PNG (label_map); rle: the label map as row-major runs "
                                  "(label_map); coco_rle: a binary mask per class as COCO RLE (masks)"},
        "counts": {"type": "string", "enum": ["string", "list"], "default": "string",
                   "description": "with coco_rle: counts as pycocotools' compressed string, or as a list"},
        "scores": {"type": "boolean", "default": False,
                   "description": "add each class's probability map as an 8-bit PNG (score_maps)"},
    }


def request_bodies(methods: list[str], presets: list[str], limits: dict[str, Any], batch: bool = False
                   ) -> dict[str, Any]:
    """The `requestBody` of POST /segment (or /segment/batch): a multipart form, or JSON with base64."""
    mib = f"{limits['max_upload_mb']:g} MiB"
    fields = _fields(methods, presets, limits)
    if batch:
        image = {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": f"the images (repeat the field, at most {limits['max_batch']}); together "
                                f"within {mib} and each within {limits['max_pixels']:,} pixels"}
        b64 = {"type": "array", "items": {"type": "string", "contentEncoding": "base64"},
               "description": "the images, base64 (a data: URL is fine)"}
        key = "images"
    else:
        image = {"type": "string", "format": "binary",
                 "description": f"the image (PNG, JPEG, WebP, BMP, TIFF or GIF) within {mib} and "
                                f"{limits['max_pixels']:,} pixels"}
        b64 = {"type": "string", "contentEncoding": "base64",
               "description": f"the image file, base64 (a data: URL is fine); decoded within {mib}"}
        key = "image"
    classes_json = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                    "description": fields["classes"]["description"] + "; or a list, one class per item "
                                                                       "(synonyms by '|')"}
    form = {"type": "object", "required": ["image", "classes"], "properties": {"image": image, **fields}}
    js = {"type": "object", "required": [key, "classes"], "additionalProperties": False,
          "properties": {key: b64, **fields, "classes": classes_json}}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": js},
    }}


# ------------------------------------------------------------------------------------ docs pages


FALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:960px;padding:1em;color:#222}
h1{font-size:1.5em} .op{border:1px solid #ccd;border-radius:6px;margin:1em 0;padding:.6em .9em}
.m{display:inline-block;min-width:4em;font-weight:700;text-transform:uppercase}
.m.get{color:#1769aa}.m.post{color:#1b7f3b} code{background:#f3f3f6;padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;margin:.4em 0}td,th{border-bottom:1px solid #eee;padding:.2em .6em;text-align:left;vertical-align:top}
.note{color:#666}
</style></head><body>
<h1>__TITLE__</h1>
<p class="note">Swagger UI is not installed here (pip install "ovss[serve]" brings it, served from this
server); this page lists the same operations from <a href="__OPENAPI__">__OPENAPI__</a>.</p>
<div id="ops">loading...</div>
<script>
(async () => {
  const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  const spec = await (await fetch("__OPENAPI__")).json();
  const type = (s) => !s ? "" : s.type === "array" ? `array of ${type(s.items)}` :
    (s.format === "binary" ? "file" : (s.type || (s.oneOf || s.anyOf || []).map(type).join(" | ")));
  let out = `<p>${esc(spec.info.description || "")}</p>`;
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      out += `<div class="op opblock"><div><span class="m ${method}">${method}</span> <code>${esc(path)}</code> ${esc(op.summary || "")}</div>`;
      if (op.description) out += `<p>${esc(op.description)}</p>`;
      const body = op.requestBody && op.requestBody.content;
      for (const [ctype, media] of Object.entries(body || {})) {
        const props = (media.schema && media.schema.properties) || {};
        const req = new Set((media.schema && media.schema.required) || []);
        out += `<div><b>${esc(ctype)}</b><table><tr><th>field</th><th>type</th><th>description</th></tr>`;
        for (const [name, s] of Object.entries(props)) {
          const choices = s.enum ? ` (${s.enum.map(esc).join(", ")})` : "";
          out += `<tr><td><code>${esc(name)}</code>${req.has(name) ? " *" : ""}</td><td>${esc(type(s))}${choices}</td><td>${esc(s.description)}</td></tr>`;
        }
        out += `</table></div>`;
      }
      out += `<table><tr><th>status</th><th>meaning</th></tr>`;
      for (const [code, r] of Object.entries(op.responses || {}))
        out += `<tr><td>${esc(code)}</td><td>${esc(r.description)}</td></tr>`;
      out += `</table></div>`;
    }
  }
  document.getElementById("ops").innerHTML = out;
})();
</script></body></html>
"""


def install_docs(app, title: str, openapi_url: str = "/openapi.json") -> str:
    """Add /docs, /redoc and /docs/assets/{name} to `app` (the app must be created with
    docs_url=None, redoc_url=None); returns which pages it serves: "swagger" or "fallback"."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, Response
    from starlette.exceptions import HTTPException

    assets = docs_assets_dir()
    if assets is None:
        page = FALLBACK_PAGE.replace("__TITLE__", html.escape(title)).replace("__OPENAPI__", openapi_url)

        @app.get("/docs", include_in_schema=False)
        @app.get("/redoc", include_in_schema=False)
        def fallback_docs():
            return HTMLResponse(page)

        return "fallback"

    cache = {"Cache-Control": "public, max-age=86400"}
    # ReDoc's sidebar shows its vendor's logo from a CDN: point it at the local favicon instead
    redoc_js = (assets / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, b"/docs/assets/favicon.png")

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str):
        if name not in DOC_ASSETS:
            raise HTTPException(404, "Not Found")
        if name == "redoc.standalone.js":
            return Response(redoc_js, media_type=DOC_ASSETS[name], headers=cache)
        return FileResponse(assets / name, media_type=DOC_ASSETS[name], headers=cache)

    @app.get("/docs", include_in_schema=False)
    def swagger():
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - Swagger UI",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": True})

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url="/docs/assets/redoc.standalone.js",
                              redoc_favicon_url="/docs/assets/favicon.png", with_google_fonts=False)

    return "swagger"
