"""Large images: `preprocess` resizes a large uint8 image without a full-size float copy, bit for bit
as before, and the API refuses images over its pixel limit."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.core import protocol as P
from ovss.core.protocol import CLIP_MEAN, CLIP_STD, Protocol, preprocess


def old_preprocess(image, prot, mean, std):
    """The one-shot preprocess as it was before the banded resize (the reference for exactness)."""
    h, w = image.shape[:2]
    quantised = not np.issubdtype(image.dtype, np.floating)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    nh, nw = P.resized_size(h, w, prot.short_side, prot.long_cap)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if quantised:
            x = x.round_().clamp_(0, 255)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@pytest.fixture
def banded_everywhere(monkeypatch):
    """Band every image (not only large ones) and count the banded resizes."""
    monkeypatch.setattr(P, "_BANDED_MIN_BYTES", 0)
    calls = []
    real = P._resize_uint8_banded

    def spy(image, nh, nw, band_bytes=None):
        calls.append((image.shape, nh, nw))
        return real(image, nh, nw, band_bytes=band_bytes or 3 * 4 * image.shape[1] * 7)  # 7-row bands

    monkeypatch.setattr(P, "_resize_uint8_banded", spy)
    return calls


@pytest.mark.parametrize("threads", [2, 1])
def test_banded_equals_one_shot_on_random_sizes(banded_everywhere, threads):
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        for k in range(14):
            h, w = (int(v) for v in rng.integers(60, 700, size=2))
            short = [None, 32, 64, 96, 224, 336, 448][int(rng.integers(7))] if k else 96
            prot = Protocol(short_side=short, long_cap=int(rng.choice([2048, 512, 300])))
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            mean, std = (CLIP_MEAN, CLIP_STD) if k % 2 else ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
            new = preprocess(img, prot, "cpu", mean, std)
            ref = old_preprocess(img, prot, mean, std)
            assert new.shape == ref.shape and new.stride() == ref.stride(), (h, w, prot)
            # bit for bit: so the rounded (uint8-valued) resize under the normalisation is identical too
            assert torch.equal(new, ref), (h, w, prot, threads)
    finally:
        torch.set_num_threads(old_threads)
    if threads > 1:
        assert len(banded_everywhere) >= 8  # the banded path really ran (downscales, outputs over 128 px)
    else:
        assert banded_everywhere == []  # one torch thread: torch's other kernel, so the one-shot path
    # a float image keeps the one-shot path, and is never normalised in place
    f = rng.integers(0, 256, (300, 400, 3)).astype(np.float32)
    before = f.copy()
    for short in (224, None):
        prot = Protocol(short_side=short, mean=CLIP_MEAN, std=CLIP_STD)
        assert torch.equal(preprocess(f, prot), old_preprocess(f, prot, CLIP_MEAN, CLIP_STD))
    np.testing.assert_array_equal(f, before)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_large_image_has_no_full_size_float_copy():
    """Peak RSS of preprocess on a 4000x3000 uint8 image (a 144 MB float copy before) stays small."""
    code = textwrap.dedent("""
        import ctypes, numpy as np, torch
        from ovss.core.protocol import preprocess, Protocol, CLIP_MEAN, CLIP_STD

        def status(key):
            return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

        torch.set_num_threads(2)
        img = np.empty((3000, 4000, 3), np.uint8)
        img[:] = np.arange(4000, dtype=np.uint8)[None, :, None]
        img[::7] = 200
        prot = Protocol(short_side=336, mean=CLIP_MEAN, std=CLIP_STD)
        preprocess(img[:400, :500], prot)  # warm up torch's allocator and kernels
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
        before = status("VmRSS")
        x = preprocess(img, prot)
        print(status("VmHWM") - before)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    grew_mb = int(r.stdout.split()[-1])
    assert grew_mb < 60, f"preprocess grew the peak RSS by {grew_mb} MB (a full float copy is 144 MB)"


def test_api_pixel_limit(tmp_path):
    from PIL import Image

    import ovss
    from ovss.data.io import ImageTooLarge

    p = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(p)
    seg = ovss.load("maskclip", backbone="tiny-synthetic", device="cpu", max_pixels=10_000)
    with pytest.raises(ImageTooLarge, match=r"wide.png is 200x100 = 20,000 pixels, over the limit of 10,000"):
        seg(p, ["sky", "grass"])
    with pytest.raises(ImageTooLarge, match="float array"):
        seg(np.zeros((100, 200, 3), np.float32), ["sky", "grass"])
    seg.max_pixels = 0  # no limit
    assert seg(p, ["sky", "grass"]).labels.shape == (100, 200)


def old_overlay(img, lab, pal, alpha=0.5, ignore_index=None, boundaries=True):
    """The one-shot overlay as it was before banding (the reference for equality)."""
    from ovss.core.viz import BOUNDARY_COLOUR

    lab = lab.astype(np.int64)
    valid = np.ones(lab.shape, bool) if ignore_index is None else lab != ignore_index
    colour = pal[np.where(valid, lab, 0)].astype(np.float32)
    blended = np.round((1.0 - alpha) * img.astype(np.float32) + alpha * colour).astype(np.uint8)
    out = np.where(valid[:, :, None], blended, img)
    if boundaries:
        edge = np.zeros(lab.shape, bool)
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
        out[edge & valid] = BOUNDARY_COLOUR
    return out


@pytest.mark.parametrize("ignore_index", [None, 3])
def test_banded_overlay_equals_one_shot(monkeypatch, ignore_index):
    from ovss.core import viz

    monkeypatch.setattr(viz, "_BAND_PIXELS", 7 * 53)  # bands of 7 rows
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (61, 53, 3), dtype=np.uint8)
    lab = (rng.random((61, 53)) * 4).astype(np.int32)
    lab[20:40, 10:30] = 2  # some regions, so boundaries cross band edges
    pal = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    for alpha in (0.5, 0.3):
        np.testing.assert_array_equal(viz.overlay(img, lab, pal, alpha, ignore_index),
                                      old_overlay(img, lab, pal, alpha, ignore_index))
    leg = viz.overlay_with_legend(img, lab, ["a", "b", "c", "d"], pal, ignore_index=ignore_index)
    np.testing.assert_array_equal(np.asarray(leg)[:, :53], old_overlay(img, lab, pal, 0.5, ignore_index))


def test_overlay_and_areas_allocate_no_full_size_temporaries():
    """The overlay of a 3000x2000 image allocates its output (18 MB) and small bands: before, it
    made int64 and float32 copies of the whole image (over 300 MB). `Result.areas` likewise counts
    without an int64 copy of the label map."""
    import tracemalloc

    from ovss.core import viz
    from ovss.core.result import Result

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    lab = (rng.random((2000, 3000)) * 5).astype(np.int32)
    pal = viz.palette_for(list("abcde"))
    tracemalloc.start()
    try:
        viz.overlay(img, lab, pal)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        areas = Result(labels=lab, scores=np.zeros((5, 2, 2), np.float32), class_names=list("abcde"),
                       palette=pal).areas()
        _, peak_areas = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * img.nbytes, f"overlay peak {peak / 1e6:.1f} MB for a {img.nbytes / 1e6:.1f} MB image"
    assert peak_areas < 0.6 * lab.nbytes, f"areas peak {peak_areas / 1e6:.1f} MB"
    assert abs(sum(areas.values()) - 1) < 1e-9
