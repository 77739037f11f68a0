import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.data.io import ImageError, list_images, read_image, read_index_png, save_index_png, write_json


def _noise(h: int = 64, w: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _px(a: np.ndarray, y: int = 0, x: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in a[y, x])


def _check(a: np.ndarray, shape: tuple[int, int]) -> None:
    assert a.dtype == np.uint8 and a.shape == (*shape, 3)


# ------------------------------------------------------------------------------ bad files


def test_missing_file_names_path(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(p)


def test_text_file_is_image_error(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, not an image\n")
    with pytest.raises(ImageError, match="notes.png"):
        read_image(str(p))


def test_directory_is_image_error(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_image_error(tmp_path, fmt):
    buf = io.BytesIO()
    _noise(128, 128).save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}"):
        read_image(p)


def test_zero_size_rejected():
    with pytest.raises(ImageError, match="zero"):
        read_image(Image.new("RGB", (0, 4)))
    with pytest.raises(ImageError, match="zero"):
        read_image(np.zeros((0, 5, 3), np.uint8))


def test_unsupported_type():
    with pytest.raises(ImageError, match="accepted"):
        read_image(12345)


def _qoi_bytes() -> bytes:
    if "QOI" not in Image.SAVE:
        pytest.skip("this Pillow cannot write QOI")
    a = np.random.default_rng(1).integers(0, 4, (50, 60, 3), dtype=np.uint8) * 60
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="QOI")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["cut.qoi", "cut.png", "cut.jpg"])
def test_truncated_qoi_any_extension_is_image_error(tmp_path, name):
    """Pillow's QOI decoder raises a bare IndexError on this cut; it must be an ImageError naming the file."""
    p = tmp_path / name
    p.write_bytes(_qoi_bytes()[:22])
    with pytest.raises(ImageError, match=name):
        read_image(p)


def test_decoder_crash_is_image_error(tmp_path, monkeypatch):
    """Whatever a decoder raises (here an IndexError from inside load()), the caller gets an ImageError."""
    p = tmp_path / "x.png"
    _noise(8, 8).save(p)

    def broken(self, *a, **k):
        raise IndexError("index out of range")

    monkeypatch.setattr(Image.Image, "load", broken)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken)
    with pytest.raises(ImageError, match="x.png.*IndexError"):
        read_image(p)


_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"


@pytest.mark.parametrize("name", ["drawing.eps", "innocent.png"])
def test_eps_is_never_handed_to_ghostscript(tmp_path, monkeypatch, name):
    from PIL import EpsImagePlugin

    calls = []

    def fake_gs(*a, **k):
        calls.append(a)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", fake_gs)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    p = tmp_path / name
    p.write_bytes(_EPS)
    with pytest.raises(ImageError, match=f"{name}.*PNG, JPEG, WebP, BMP, TIFF or GIF.*PostScript"):
        read_image(p)
    assert calls == []
    with Image.open(p) as lazy:  # a PIL image opened as EPS by the caller is refused too, still undecoded
        assert lazy.format == "EPS"
        with pytest.raises(ImageError, match="EPS"):
            read_image(lazy)
    assert calls == []


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"),
                                     ("TIFF", "tif"), ("GIF", "gif")])
def test_accepted_formats_decode(tmp_path, fmt, ext):
    p = tmp_path / f"x.{ext}"
    _noise(16, 24).convert("P" if fmt == "GIF" else "RGB").save(p, format=fmt)
    _check(read_image(p), (16, 24))
    assert list_images(tmp_path) == [p]


def test_pixel_limit_checked_from_the_header(tmp_path, monkeypatch):
    from ovss.data.io import DEFAULT_MAX_PIXELS, ImageTooLarge

    p = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(p)
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    with pytest.raises(ImageTooLarge, match=r"big.png is 3000x2000 = 6,000,000 pixels, over the limit of 5,000,000"):
        read_image(p, max_pixels=5_000_000)
    assert decoded == []  # refused before decoding
    assert read_image(p, max_pixels=6_000_000).shape == (2000, 3000, 3)
    assert read_image(p, max_pixels=0).shape == (2000, 3000, 3)  # 0: no limit
    assert DEFAULT_MAX_PIXELS == 100_000_000
    with pytest.raises(ImageTooLarge, match="ndarray"):
        read_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9999)
    with pytest.raises(ImageTooLarge, match="PIL"):
        read_image(Image.new("RGB", (100, 100)), max_pixels=9999)


def test_large_rgb_read_in_bands_equals_numpy(tmp_path):
    """Reading a large RGB file makes one full-size array, not two (np.array(im) goes through a
    full-size bytes copy first), and gives exactly np.array(im)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2501, 1777, 3), dtype=np.uint8)
    p = tmp_path / "wide.png"
    Image.fromarray(a).save(p, compress_level=0)
    tracemalloc.start()
    try:
        out = read_image(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a)
    assert peak < 1.4 * a.nbytes, f"peak {peak / 1e6:.1f} MB for a {a.nbytes / 1e6:.1f} MB image"


def test_text_reader_bom_and_encoding(tmp_path):
    from ovss.data.io import read_text

    p = tmp_path / "cls.txt"
    p.write_bytes("\ufeffcat\nsofa\n".encode("utf-8"))
    assert read_text(p).splitlines() == ["cat", "sofa"]
    p.write_bytes("cat\nsofa\n".encode("utf-16"))
    assert read_text(p).splitlines() == ["cat", "sofa"]
    p.write_bytes("cat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"cls.txt is not UTF-8 text: byte 0xe9 on line 2"):
        read_text(p, "class file")


# ------------------------------------------------------------------------------ PIL modes


def test_mode_rgb_file(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (3, 2), (10, 20, 30)).save(p)
    a = read_image(p)
    _check(a, (2, 3))
    assert _px(a) == (10, 20, 30)


def test_mode_L():
    assert _px(read_image(Image.new("L", (2, 2), 100))) == (100, 100, 100)


def test_mode_1():
    im = Image.new("1", (2, 2), 0)
    im.putpixel((1, 0), 1)
    a = read_image(im)
    assert _px(a, 0, 0) == (0, 0, 0) and _px(a, 0, 1) == (255, 255, 255)


def test_mode_LA_composites_on_white():
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (100, 255))
    im.putpixel((1, 0), (100, 0))
    a = read_image(im)
    assert _px(a, 0, 0) == (100, 100, 100) and _px(a, 0, 1) == (255, 255, 255)


def test_mode_RGBA_composites_on_white():
    a = read_image(Image.new("RGBA", (2, 2), (200, 100, 0, 128)))
    assert _px(a) == (227, 177, 127)  # c*a/255 + 255*(1 - a/255), rounded


def _p_image() -> Image.Image:
    im = Image.new("P", (3, 1))
    pal = [0, 0, 0, 10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 9)
    im.putpalette(pal)
    im.putdata([0, 1, 2])
    return im


def test_mode_P():
    a = read_image(_p_image())
    assert _px(a, 0, 1) == (10, 20, 30) and _px(a, 0, 2) == (40, 50, 60)


def test_mode_P_with_transparency_file(tmp_path):
    p = tmp_path / "t.png"
    _p_image().save(p, transparency=1)
    assert Image.open(p).mode == "P" and "transparency" in Image.open(p).info
    a = read_image(p)
    assert _px(a, 0, 1) == (255, 255, 255)  # transparent index -> white background
    assert _px(a, 0, 2) == (40, 50, 60)


def test_mode_I16_png_scaled_not_clipped(tmp_path):
    p = tmp_path / "d16.png"
    Image.fromarray(np.array([[0, 25700, 65535]], np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I;16")
    a = read_image(p)
    assert [int(v) for v in a[0, :, 0]] == [0, 100, 255]
    assert (a[..., 0] == a[..., 2]).all()


def test_mode_I16B():
    im = Image.new("I;16B", (2, 1), 257 * 200)
    assert _px(read_image(im)) == (200, 200, 200)


def test_mode_I():
    im = Image.fromarray(np.array([[0, 25700, 65535]], np.int32))
    assert im.mode == "I"
    assert [int(v) for v in read_image(im)[0, :, 0]] == [0, 100, 255]
    wide = Image.fromarray(np.array([[-1000, 1000]], np.int32))  # outside 16 bits: own min..max
    assert [int(v) for v in read_image(wide)[0, :, 0]] == [0, 255]


def test_mode_F():
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert im.mode == "F"
    assert [int(v) for v in read_image(im)[0, :, 0]] == [0, 128, 255]


def test_mode_CMYK():
    assert _px(read_image(Image.new("CMYK", (2, 2), (0, 255, 0, 0)))) == (255, 0, 255)


def test_mode_YCbCr():
    a = read_image(Image.new("RGB", (2, 2), (255, 0, 0)).convert("YCbCr"))
    assert np.abs(a[0, 0].astype(int) - [255, 0, 0]).max() <= 3


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (64, 32), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 16, 16))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    a = read_image(p)
    _check(a, (64, 32))  # width and height swapped
    r, g, b = _px(a, 4, 27)  # top-left moved to top-right
    assert r > 200 and b < 60
    r, g, b = _px(a, 4, 4)
    assert b > 200 and r < 60


# ------------------------------------------------------------------------------ arrays / tensors


def test_ndarray_forms():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(read_image(rgb), rgb)
    gray = rgb[..., 0]
    out = read_image(gray)
    _check(out, (4, 5))
    assert np.array_equal(out[..., 1], gray)
    assert np.array_equal(read_image(gray[..., None]), out)
    rgba = np.dstack([rgb, np.full((4, 5), 255, np.uint8)])
    assert np.array_equal(read_image(rgba), rgb)  # opaque alpha: colours unchanged
    rgba[0, 0, 3] = 0
    assert _px(read_image(rgba)) == (255, 255, 255)
    f = np.full((2, 2, 3), 0.5, np.float32)
    assert _px(read_image(f)) == (128, 128, 128)
    assert _px(read_image(np.ones((2, 2), np.float64))) == (255, 255, 255)


@pytest.mark.parametrize(
    "bad, why",
    [
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
        (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), "non-finite"),
    ],
)
def test_ndarray_rejected(bad, why):
    with pytest.raises(ImageError, match=why):
        read_image(bad)


def test_tensor_forms():
    torch = pytest.importorskip("torch")
    rgb = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert np.array_equal(read_image(chw), rgb)
    assert np.array_equal(read_image(torch.from_numpy(rgb)), rgb)
    f = chw.float() / 255.0
    assert np.array_equal(read_image(f.requires_grad_()), rgb)
    assert np.array_equal(read_image(torch.from_numpy(rgb).float() / 255.0), rgb)


@pytest.mark.parametrize("why", ["dtype", "shape", "in \\[0, 1\\]"])
def test_tensor_rejected(why):
    torch = pytest.importorskip("torch")
    bad = {
        "dtype": torch.zeros(3, 4, 4, dtype=torch.int64),
        "shape": torch.zeros(2, 4, 4),
        "in \\[0, 1\\]": torch.full((3, 4, 4), 255.0),
    }[why]
    with pytest.raises(ImageError, match=why):
        read_image(bad)


# ------------------------------------------------------------------------------ list_images


def _make_tree(root: Path) -> None:
    (root / "sub").mkdir()
    for name in ["b.png", "A.JPG", "c.TIFF", "sub/d.webp", "._junk.jpg"]:
        (root / name).write_bytes(b"x")
    (root / "notes.txt").write_text("x")


def test_list_images_file(tmp_path):
    p = tmp_path / "one.png"
    p.write_bytes(b"x")
    assert list_images(p) == [p]


def test_list_images_folder(tmp_path):
    _make_tree(tmp_path)
    assert [p.name for p in list_images(tmp_path)] == ["A.JPG", "b.png", "c.TIFF"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "A.JPG", "b.png", "c.TIFF", "sub/d.webp"
    ]


def test_list_images_glob(tmp_path):
    _make_tree(tmp_path)
    assert [p.name for p in list_images(str(tmp_path / "*.png"))] == ["b.png"]
    assert [p.name for p in list_images(str(tmp_path / "*"))] == ["A.JPG", "b.png", "c.TIFF"]
    assert [p.name for p in list_images(str(tmp_path / "**" / "*.webp"), recursive=True)] == ["d.webp"]


def test_list_images_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "*.jpg")
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")


# ------------------------------------------------------------------------------ writing


def test_save_index_png_21_classes_palette(tmp_path):
    from ovss.core.viz import palette_for

    labels = np.random.default_rng(3).integers(0, 21, (17, 23))
    labels[0, 0] = 255  # an ignore value still fits the 8-bit file
    pal = palette_for([f"c{i}" for i in range(21)])
    p = save_index_png(labels, tmp_path / "out" / "lab.png", pal)
    with Image.open(p) as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im.getpalette()[: 21 * 3], np.uint8).reshape(21, 3), pal)
    back = read_index_png(p)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)
    assert os.listdir(p.parent) == ["lab.png"]


def test_save_index_png_300_classes_16bit(tmp_path):
    labels = np.random.default_rng(4).integers(0, 300, (9, 11))
    labels[0, 0] = 299
    p = save_index_png(labels, tmp_path / "lab.png", np.zeros((300, 3), np.uint8))
    with Image.open(p) as im:
        assert im.mode in ("I;16", "I")
    back = read_index_png(p)
    assert np.array_equal(back, labels)
    assert os.listdir(tmp_path) == ["lab.png"]


def test_save_index_png_rejects_negative(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        save_index_png(np.full((2, 2), -1), tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "lab.png"
    save_index_png(np.zeros((4, 4), np.uint8), p, np.zeros((2, 3), np.uint8))
    before = p.read_bytes()

    def boom(self, fp, *a, **k):
        fp.write(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError):
        save_index_png(np.ones((4, 4), np.uint8), p, np.zeros((2, 3), np.uint8))
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["lab.png"]


def test_write_json_atomic_and_numpy(tmp_path):
    p = tmp_path / "meta.json"
    write_json({"areas": np.array([0.5, 0.25]), "n": np.int64(3), "name": "café"}, p)
    assert json.loads(p.read_text("utf-8")) == {"areas": [0.5, 0.25], "n": 3, "name": "café"}
    with pytest.raises(TypeError):
        write_json({"bad": object()}, p)
    assert json.loads(p.read_text("utf-8"))["n"] == 3
    assert os.listdir(tmp_path) == ["meta.json"]
