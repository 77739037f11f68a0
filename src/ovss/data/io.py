"""Image input and label-map output.

Everything a user can hand us as "an image" is normalised here to one form, an HxWx3 ``uint8`` RGB
array, so the rest of the package never has to think about PIL modes, EXIF, alpha or tensor layouts.
Outputs are written atomically so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "DECODE_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "ImageTooLarge",
    "list_images",
    "read_image",
    "read_index_png",
    "read_text",
    "save_index_png",
    "write_json",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# The only formats a file is decoded as, whatever its name: Pillow's own decoders for these need no
# external program. Without this list Pillow would try every plug-in it has, and its EPS plug-in runs
# Ghostscript on the file: a crafted .png that is really PostScript would be executed.
DECODE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"

# A pixel budget checked from the header, before any decoding. The pipeline holds a few full-size
# arrays per image (the RGB array, the label map, the overlay), so 100 megapixels is already
# several GB; PIL's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS) still applies on top.
DEFAULT_MAX_PIXELS = 100_000_000

_ACCEPTED = (
    "accepted: a path, a PIL image, an ndarray HxW / HxWx1 / HxWx3 / HxWx4 of uint8 or of float in [0, 1], "
    "or a torch tensor 3xHxW / HxWx3 of uint8 or of float in [0, 1]"
)


class ImageError(ValueError):
    """Input that is not a usable image: unreadable, corrupt, truncated, or of an unsupported form."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (`max_pixels`); raised before it is decoded."""


def resolve_max_pixels(max_pixels: int | None) -> int | None:
    """None -> DEFAULT_MAX_PIXELS; 0 or a negative number -> no limit (returned as None)."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    return int(max_pixels) if max_pixels > 0 else None


def check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    """Raise `ImageTooLarge` when width x height exceeds the (resolved) limit."""
    limit = resolve_max_pixels(max_pixels)
    if limit is not None and width * height > limit:
        raise ImageTooLarge(
            f"image {name} is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            "(raise it with max_pixels=N, or --max-pixels N on the command line; 0 disables it)"
        )


# --------------------------------------------------------------------------------------------- reading


def read_image(src: Any, max_pixels: int | None = None) -> np.ndarray:
    """Return ``src`` as a contiguous HxWx3 ``uint8`` RGB array.

    ``src`` may be a path (str / PathLike), a ``PIL.Image.Image``, a numpy array or a torch tensor
    (see ``_ACCEPTED``). Files and PIL images get their EXIF orientation applied, so the array matches
    what an image viewer shows. Alpha is removed by compositing onto **white** (what most viewers show
    for transparent areas), for every input kind, so a PIL RGBA image and ``np.asarray`` of it agree.
    16/32-bit integer images are scaled to 8 bits by their storage range (0..65535 -> 0..255, i.e.
    divide by 257) rather than clipped, which would turn most 16-bit photos white.

    Files are decoded only as one of `DECODE_FORMATS` (by content, whatever the extension); any other
    format is refused, never handed to a plug-in that runs an external program.

    ``max_pixels``: refuse images with more pixels (files: read from the header, before decoding);
    None means `DEFAULT_MAX_PIXELS`, 0 no limit.

    Raises ``FileNotFoundError`` for a missing path and ``ImageError`` (``ImageTooLarge`` over the
    limit) for anything else unusable, the file named in the message.
    """
    if isinstance(src, (str, os.PathLike)):
        return _read_file(Path(src), max_pixels)
    if isinstance(src, Image.Image):
        check_pixels(src.width, src.height, max_pixels, "<PIL image>")
        if getattr(src, "format", None) not in (None, *DECODE_FORMATS) and _not_loaded(src):
            raise ImageError(f"a PIL image opened as {src.format} is not decoded here (only {_FORMAT_NAMES}: "
                             "other plug-ins, e.g. EPS, run external programs); convert it to RGB yourself")
        return _from_pil(src, "<PIL image>", own=False)
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            check_pixels(src.shape[1], src.shape[0], max_pixels, "ndarray")
        return _from_array(src, "ndarray")
    if type(src).__module__.split(".")[0] == "torch":  # don't import torch for non-tensor inputs
        return _from_tensor(src, max_pixels)
    raise ImageError(f"unsupported image input of type {type(src).__name__}; {_ACCEPTED}")


def _not_loaded(im: Image.Image) -> bool:
    """True for a lazily opened file whose pixels were never decoded (decoding would run its plug-in)."""
    from PIL import ImageFile

    return isinstance(im, ImageFile.ImageFile) and getattr(im, "tile", None) not in (None, [], ())


# Signatures of files people hand over as images that ovss will not decode, for a helpful message.
_MAGIC = (
    (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"), (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"), (b"8BPS", "Photoshop (PSD)"),
    (b"<?xml", "XML/SVG"), (b"<svg", "SVG"), (b"P6", "PPM"), (b"P5", "PGM"),
)


# Signatures of the accepted formats: a file that starts like one but does not open is damaged.
_ACCEPTED_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError:
        return b""


def _sniff(head: bytes) -> str:
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypavif", b"ftypmif1"):
        return " (it looks like HEIC/AVIF)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f" (it looks like {what})"
    return ""


def _damaged(head: bytes) -> str | None:
    """The accepted format a file claims to be by its first bytes, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((what for magic, what in _ACCEPTED_MAGIC if head.startswith(magic)), None)


def _read_file(path: Path, max_pixels: int | None = None) -> np.ndarray:
    path = path.expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"cannot read image {path}: it is a directory")
    try:
        im = Image.open(path, formats=DECODE_FORMATS)
    except Image.UnidentifiedImageError as e:
        head = _head(path)
        claimed = _damaged(head)
        if claimed:
            raise ImageError(f"cannot read image {path}: a damaged {claimed} file (it starts like one, but its "
                             "header does not parse)") from e
        raise ImageError(f"cannot read image {path}: not a {_FORMAT_NAMES} file{_sniff(head)}; "
                         "other formats are not decoded (convert the file to PNG first)") from e
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"cannot read image {path}: {e}") from e
    except PermissionError as e:
        raise ImageError(f"cannot read image {path}: permission denied") from e
    except Exception as e:  # a corrupt header breaks Pillow's parsers in many ways (struct.error, ...)
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e} (corrupt or unreadable file)") from e
    with im:
        check_pixels(im.width, im.height, max_pixels, str(path))
        try:
            # Image.open is lazy; load() forces a full decode so truncated data fails here, not later
            # (PIL raises OSError "image file is truncated" unless the process has set
            # ImageFile.LOAD_TRUNCATED_IMAGES, in which case PIL pads the missing rows by design).
            # A truncated file may also surface as IndexError, ValueError, struct.error, ... from a
            # decoder written in Python: every one of them means "this file is broken".
            im.load()
            return _from_pil(im, str(path), own=True)
        except ImageError:
            raise
        except MemoryError as e:
            raise ImageError(f"cannot read image {path}: not enough memory to decode "
                             f"{im.width}x{im.height} pixels") from e
        except Exception as e:
            raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e} "
                             "(corrupt, truncated or unreadable file)") from e


def _orient(im: Image.Image, own: bool) -> Image.Image:
    """Apply the EXIF orientation. Only a rotated/flipped image is copied (Pillow's `exif_transpose`
    copies every image; a 48-megapixel photo would pay 190 MB for nothing), and an image we opened
    ourselves (`own`) is transposed in place."""
    try:
        orientation = im.getexif().get(0x0112, 1)  # ExifTags.Base.Orientation
        if orientation in (None, 1) or orientation not in range(2, 9):
            return im
        if own:
            try:
                ImageOps.exif_transpose(im, in_place=True)
                return im
            except TypeError:  # Pillow < 9.4: no in_place
                pass
        return ImageOps.exif_transpose(im) or im
    except Exception:  # a malformed EXIF block should not make an otherwise fine image unreadable
        return im


def _pil_array(im: Image.Image) -> np.ndarray:
    """``np.array(im)`` in bands of rows: numpy's path through PIL's array interface first copies the
    whole image into one ``bytes`` object and then into the array, a second full-size copy."""
    w, h = im.size
    band = max(1, (4 << 20) // max(1, w * 4 * len(im.getbands())))  # rows in ~4 MB
    if band >= h:
        return np.array(im)
    first = np.asarray(im.crop((0, 0, w, band)))
    out = np.empty((h, *first.shape[1:]), first.dtype)
    out[:band] = first
    for y in range(band, h, band):
        out[y : y + band] = np.asarray(im.crop((0, y, w, min(h, y + band))))
    return out


def _from_pil(im: Image.Image, name: str, own: bool = False) -> np.ndarray:
    if im.width == 0 or im.height == 0:
        raise ImageError(f"image {name} has a zero side ({im.width}x{im.height})")
    im = _orient(im, own)
    mode = im.mode
    if (mode in ("P", "L", "RGB") and "transparency" in im.info) or (
        mode == "P" and im.palette is not None and im.palette.mode == "RGBA"
    ):
        # a tRNS colour key (P, L or RGB PNG/GIF): PIL turns it into a real alpha channel
        im, mode = im.convert("RGBA"), "RGBA"
    if mode == "RGB":
        return _pil_array(im)
    if mode in ("L", "1"):
        return _gray_to_rgb(np.array(im.convert("L"), dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I":
        return _gray_to_rgb(_int_to_uint8(np.array(im)))
    if mode == "F":
        return _gray_to_rgb(_float_gray_to_uint8(np.array(im, dtype=np.float64)))
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _from_array(np.array(im.convert("RGBA")), name)
    try:  # CMYK, YCbCr, LAB, HSV, RGBX, ...: PIL knows the colour transform
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise ImageError(f"image {name}: cannot convert PIL mode {mode!r} to RGB ({e})") from e


def _int_to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit integer gray -> 8 bit. 0..65535 data (the usual content, also of mode 'I' which older
    PIL returns for 16-bit PNGs) maps by /257 so 65535 -> 255 exactly; wider data is min-max scaled."""
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 65535:
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    return _stretch(a.astype(np.float64), lo, hi)


def _float_gray_to_uint8(a: np.ndarray) -> np.ndarray:
    """Mode 'F': [0, 1] data is scaled by 255, [0, 255] data kept, anything else min-max scaled."""
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(a * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(a).astype(np.uint8)
    return _stretch(a, lo, hi)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))


def _from_array(a: np.ndarray, kind: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported {kind} shape {tuple(a.shape)}; {_ACCEPTED}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{kind} image has a zero side (shape {tuple(a.shape)})")
    if a.dtype == np.uint8:
        u8 = a
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        if not np.isfinite(f).all():
            raise ImageError(f"float {kind} has non-finite values (NaN/inf); {_ACCEPTED}")
        if f.min() < 0.0 or f.max() > 1.0:
            raise ImageError(
                f"float {kind} values must be in [0, 1], got [{f.min():g}, {f.max():g}]; {_ACCEPTED}"
            )
        u8 = np.round(f * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"unsupported {kind} dtype {a.dtype}; {_ACCEPTED}")
    if u8.ndim == 2:
        return _gray_to_rgb(u8)
    if u8.shape[2] == 4:  # composite onto white: out = a*rgb + (1-a)*255
        alpha = u8[:, :, 3:4].astype(np.uint32)
        rgb = u8[:, :, :3].astype(np.uint32)
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(u8)


def _from_tensor(t: Any, max_pixels: int | None = None) -> np.ndarray:
    import torch  # lazy: reading files must not pay torch's import time

    if not isinstance(t, torch.Tensor):
        raise ImageError(f"unsupported image input of type {type(t).__name__}; {_ACCEPTED}")
    t = t.detach().cpu()
    if t.ndim != 3 or not (t.shape[0] == 3 or t.shape[2] == 3):
        raise ImageError(f"unsupported tensor shape {tuple(t.shape)}; {_ACCEPTED}")
    if t.shape[0] == 3:  # CHW wins when ambiguous (3xHx3): it is the torch convention
        t = t.permute(1, 2, 0)
    check_pixels(t.shape[1], t.shape[0], max_pixels, "tensor")
    if t.dtype == torch.uint8:
        a = t.numpy()
    elif t.is_floating_point():
        a = t.float().numpy()
    else:
        raise ImageError(f"unsupported tensor dtype {t.dtype}; {_ACCEPTED}")
    return _from_array(np.ascontiguousarray(a), "tensor")


# ---------------------------------------------------------------------------------------------- text


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """A small text file (class lists) as str: UTF-8, its byte-order mark dropped (Windows editors
    write one, and it would otherwise become part of the first class name); UTF-16 with a BOM is
    read too. Anything else is a ValueError naming the file, never a bare UnicodeDecodeError."""
    path = Path(path).expanduser()
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} {path} starts like UTF-16 but does not decode as UTF-16 ({e.reason}); "
                             "save it as UTF-8") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{what} {path} is not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} "
                         f"(offset {e.start}); save it as UTF-8") from None


# ------------------------------------------------------------------------------------------- listing


def list_images(path_or_folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Expand a file, a folder or a glob pattern into a sorted list of image files.

    A file is returned as-is (the caller named it explicitly, whatever its extension). Folders and
    glob patterns yield files with an image extension (case-insensitive), skipping dot-files such as
    macOS ``._x.jpg`` resource forks, which carry an image extension but are not images.
    ``recursive`` descends into sub-folders (and lets ``**`` in a pattern match across folders).
    """
    p = Path(path_or_folder).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        candidates = p.rglob("*") if recursive else p.iterdir()
    elif glob.has_magic(str(p)):
        candidates = (Path(s) for s in glob.glob(str(p), recursive=recursive))
    else:
        raise FileNotFoundError(f"no such file, folder or pattern: {path_or_folder}")
    found = sorted(
        c for c in candidates
        if c.suffix.lower() in IMAGE_EXTENSIONS and not c.name.startswith(".") and c.is_file()
    )
    if not found:
        raise FileNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found at {path_or_folder}"
            + ("" if recursive or not p.is_dir() else " (not searching sub-folders; pass recursive=True)")
        )
    return found


# ------------------------------------------------------------------------------------------- writing


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write via a temp file in the destination folder, then ``os.replace`` (atomic on POSIX and
    Windows), so readers see either the old file or the complete new one, never a partial one."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open with 0o666 honours the umask, unlike tempfile's 0o600, so the result has normal permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def index_png_image(labels: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """An HxW label map as a lossless PNG-ready image (the encoding of `save_index_png`).

    With <= 256 classes (``len(palette)``, or ``labels.max() + 1`` without a palette) and all labels
    <= 255 this is an 8-bit palette ('P') image whose entries are the class colours, so it is both exact
    indices and a viewable picture (label 255, e.g. an ignore value, is allowed). Otherwise it is a
    16-bit grayscale image ('I;16'), which holds labels up to 65535. Negative labels are rejected:
    PNG cannot store them, so map an ignore value like -1 to e.g. 255 first.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.size == 0:
        raise ValueError(f"labels must be a non-empty HxW array, got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi > 65535:
        raise ValueError(f"labels must lie in [0, 65535] to be stored as PNG, got [{lo}, {hi}]")
    n_classes = hi + 1 if palette is None else len(palette)
    if n_classes <= 256 and hi <= 255:
        im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.astype(np.uint8).tobytes())
        pal = np.zeros((256, 3), np.uint8)
        if palette is not None:
            p = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
            pal[: len(p)] = p
        else:
            pal[:] = np.arange(256, dtype=np.uint8)[:, None]
        im.putpalette(pal.tobytes(), rawmode="RGB")
        return im
    return Image.fromarray(np.ascontiguousarray(lab.astype(np.uint16)))  # mode 'I;16'


def save_index_png(
    labels: np.ndarray, path: str | os.PathLike[str], palette: np.ndarray | None = None
) -> Path:
    """Save an HxW label map losslessly as PNG (`index_png_image`), atomically."""
    im = index_png_image(labels, palette)
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


def read_index_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label PNG written by ``save_index_png`` as raw indices (never through the palette):
    'P'/'L' -> uint8, 16-bit -> uint16 (int32 if the PIL version reports mode 'I')."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if im.mode.startswith("I;16"):
                return np.array(im).astype(np.uint16)
            if im.mode == "I":
                return np.array(im, dtype=np.int32)
            raise ImageError(f"label file {path} has mode {im.mode!r}, expected a 'P', 'L' or 16-bit PNG")
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read label file {path}: {e}") from e


def _json_default(o: Any) -> Any:
    """Let numpy scalars/arrays (areas, counts, ...) be written without manual conversion."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as UTF-8, indented JSON, atomically (serialised first, so a TypeError leaves no file)."""
    data = (json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
