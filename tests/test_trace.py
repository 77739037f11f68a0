"""The public trace: `seg(image, classes, trace=True).trace` and `with seg.trace() as t:`.

Stage-by-stage parity with the references through the trace is in tests/methods (ResCLIP's seed
map, SC-CLIP's anomaly tokens, CLIPtrase's DBSCAN labels, CASS's head assignment, ...); here the
contract: names declared per plug-in and refiner, nothing recorded (or copied) outside a trace.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import ovss
from ovss.core.registry import PLUGINS, REFINERS
from ovss.core.trace import CORE_NAMES, active, names_of, record, refiner_output_name, tracing
from ovss.methods import get_method, list_methods

SCENE = Path(ovss.__file__).parent / "data" / "assets" / "examples" / "scene_a.png"


class _NoCopy:
    def detach(self):  # a trace would copy: must not happen outside one
        raise AssertionError("copied outside a trace")

    def copy(self):
        raise AssertionError("copied outside a trace")


def test_record_costs_nothing_outside_a_trace():
    assert not active()
    record("x", _NoCopy())  # no copy, no error
    with tracing() as t:
        assert active()
        record("y", torch.ones(2))
        v = torch.zeros(3)
        record("z", v)
        v += 1  # the trace holds a copy
    assert not active() and set(t) == {"y", "z"} and torch.equal(t["z"][0], torch.zeros(3))
    record("after", torch.ones(1))
    assert "after" not in t


def test_every_plugin_and_refiner_declares_its_names():
    for reg in (PLUGINS, REFINERS):
        for name in reg:
            if not reg.module_of(name).startswith("ovss."):
                continue  # a user's plug-in (e.g. docs/architecture.md's) may record nothing
            cls = reg.get(name)
            names = cls.trace_names
            assert isinstance(names, tuple) and names and all(isinstance(n, str) for n in names), name
            prefix = {"lposs_plus": "lposs_plus."}.get(name, name + ".")
            assert all(n.startswith(prefix) for n in names), (name, names)
    for name in (n for n in REFINERS if REFINERS.module_of(n).startswith("ovss.")):
        assert refiner_output_name(REFINERS.get(name)()) in REFINERS.get(name).trace_names, name


@pytest.mark.parametrize("method", list_methods())
def test_each_method_lists_its_trace_names(method):
    r = get_method(method).recipe
    names = names_of(r)
    assert names[:len(CORE_NAMES)] == CORE_NAMES
    for piece in (*r.plugins, *r.refiners):
        assert set(type(piece).trace_names) <= set(names)


def test_a_traced_call_returns_every_declared_name():
    seg = ovss.load("naclip", backbone="tiny-synthetic", device="cpu")  # NACLIP's PAMR
    assert seg.trace_names == (*CORE_NAMES, "pamr.output")
    res = seg(SCENE, "sky, grass|lawn, road", trace=True)
    assert set(res.trace) == set(seg.trace_names)
    h, w = res.labels.shape
    assert res.trace["logits"][0].shape == (4, h, w) and res.trace["probs"][0].shape == (3, h, w)
    assert torch.equal(res.trace["pamr.output"][0], res.trace["logits"][0])
    with seg.trace() as t:
        again = seg(SCENE, "sky, grass|lawn, road")
    assert again.trace is None and set(t) == set(res.trace)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(t.values(), (res.trace[k] for k in t)))
    plain = seg(SCENE, "sky, grass|lawn, road")
    assert plain.trace is None and np.array_equal(plain.labels, res.labels)


def test_lower_level_calls_record_in_a_trace_block():
    seg = ovss.load("maskclip", backbone="tiny-synthetic", device="cpu")
    state = seg.preprocess(SCENE)
    _, q = seg.queries("sky, grass, road")
    with seg.trace() as t:
        low = seg.stitched_logits(state, q)
    assert set(t) == {"input", "stitched_logits"} and torch.equal(t["stitched_logits"][0], low)


def test_methods_command_prints_the_trace_names(capsys):
    from ovss.apps.cli import main

    assert main(["methods", "resclip"]) == 0
    out = capsys.readouterr().out
    assert "  trace: input, stitched_logits, logits, probs, rcs.attention, sfr.seed_labels" in out
    assert main(["methods", "cliptrase"]) == 0
    out = capsys.readouterr().out
    assert "cluster.dbscan" in out and "clsprior.prior (presets voc20-repo-224" in out
