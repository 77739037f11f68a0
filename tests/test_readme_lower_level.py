"""The README's "Lower level" examples run as written (offline: the shipped demo CLIP and example
scene), each block continuing the one before."""

import re
import warnings
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("\n### Lower level\n")
    end = text.index("\n#", start + 1)
    return text[start:end]


def test_lower_level_examples_run(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path / "cache"))
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) == 7  # queries=, features, preprocess, float images, clip=, trace, dino=
    code = "\n".join(blocks)
    for needle in ("queries=q", "seg.logits(", "seg.features(", "cls_token=True", "normalize=False",
                   "seg.preprocess(", "np.float32", "clip=seg.clip", "trace=True", "seg.trace()", "dino="):
        assert needle in code, needle
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the examples draw no warning (float images on the 0-255 scale)
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    assert namespace["traced"].trace is not None


def test_float_images_in_0_1_draw_a_warning():
    """Float images are on the 0-255 scale; one with every value in [0, 1] is most likely a
    [0, 1] image passed by mistake: it runs as given, with a warning saying so."""
    import numpy as np
    import pytest

    import ovss

    seg = ovss.load("maskclip", backbone="tiny-synthetic", device="cpu")
    img = np.full((20, 30, 3), 0.5, np.float32)
    with pytest.warns(UserWarning, match="0-255 scale"):
        state = seg.preprocess(img)
    assert state.rgb.dtype == np.float32 and float(state.rgb.max()) == 0.5  # as given
