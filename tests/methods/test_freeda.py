"""FreeDA against its reference (tests/golden/freeda_small.safetensors, made by
tests/golden/make_freeda_golden.py from aimagelab/freeda@bee96c5), and its pieces: the bank,
the exact kNN, the Felzenszwalb port."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.data.bank import load_bank, save_bank
from ovss.ops.knn import knn_search
from ovss.ops.superpixels import felzenszwalb_numpy

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
STEP = 4


def _golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN / "freeda_small.safetensors"))


def _dino(g):
    from make_freeda_golden import small_dino

    m = small_dino()
    m.load_state_dict({k[5:]: v for k, v in g.items() if k.startswith("dino.")})
    return m


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """ovss's freeda on the golden's scene, bank (ovss layout, exact torch search) and DINO."""
    from make_freeda_golden import K_SEARCH, SP, scene

    from ovss.heads.vfm import register_vfm

    g = _golden()
    img = scene()
    assert int(img.astype(np.int64).sum()) == int(g["image_sum"][0])
    register_vfm("freeda-golden-dino", _dino(g))
    bank = save_bank(tmp_path_factory.mktemp("bank"), g["bank.keys"], g["bank.prototypes"], write_index=False)
    plug = (f"freeda:bank={bank},vfm=freeda-golden-dino,dino_size=518,k_search={K_SEARCH},"
            f"scale={float(SP['scale'])},sigma={SP['sigma']},min_size={SP['min_size']},ensemble=0.8,knn=torch")
    seg = ovss.load("freeda", backbone="tiny-synthetic", device="cpu", overrides={"plugins": plug, "protocol.short_side": 448, "protocol.crop": 448,
                                                                   "protocol.stride": 224})  # tiny-synthetic's own: 96, whole
    queries = F.normalize(g["text_raw"], dim=-1)
    state = seg.preprocess(img)
    with seg.trace() as t:
        scores = seg.stitched_logits(state, queries)
    return g, seg, img, scores, t


def test_retrieved_prototypes_match_the_reference(run):
    g, *_, t = run
    protos = t["freeda.prototypes"][0]
    assert torch.allclose(protos, g["ref.proto_emb"], atol=1e-6)
    assert torch.allclose(F.normalize(g["text_raw"], dim=-1), g["ref.text_emb"], atol=1e-6)


def test_superpixels_match_skimage_on_the_reference_crop(run):
    g, _, img, _, t = run
    ours = t["freeda.superpixels"][0]
    assert torch.equal(ours.to(torch.int16), g["ref.labels_sp.0"])
    # the numpy port itself (the trace may have come from scikit-image when it is installed)
    port = felzenszwalb_numpy(img[:, :448].astype(np.float32) / np.float32(255), 100, 0.7, 20)
    assert np.array_equal(port, g["ref.labels_sp.0"].numpy().astype(np.int64))


def test_region_scores_and_label_map_match_the_reference(run):
    g, _, _, scores, t = run
    diffs = []
    for w in range(2):
        ours, ref = t["freeda.region"][w], g[f"ref.region.{w}"]
        # superpixels that miss every sample of the feature grid have no pooled feature: NaN
        # here, sigmoid(-1e5) = 0 in the reference's dense map; both keep the patch score there
        invalid = ours.isnan().any(1)
        assert invalid.sum() < len(ours) and (ref[invalid] == 0).all()
        diffs.append((ours[~invalid] - ref[~invalid]).abs().max().item())
        diffs.append((t["freeda.scores"][w][:, ::STEP, ::STEP] - g[f"ref.scores.{w}"]).abs().max().item())
    diffs.append((scores[:, ::STEP, ::STEP] - g["ref.scores"]).abs().max().item())
    print("freeda parity max abs diffs (region w0, scores w0, region w1, scores w1, stitched):", diffs)
    assert max(diffs) < 1e-4, diffs
    assert torch.equal(scores.argmax(0).to(torch.uint8), g["ref.label_map"])


def test_exact_knn_returns_the_nearest_keys_stably():
    gen = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(300, 16, generator=gen), dim=-1)
    keys[7] = keys[3]  # a tie: the smaller index first
    q = torch.cat([keys[3:4], F.normalize(torch.randn(4, 16, generator=gen), dim=-1)])
    s, i = knn_search(q, keys, 10, chunk=64)
    full = q @ keys.T
    assert i[0, :2].tolist() == [3, 7]
    assert torch.allclose(s, full.gather(1, i))
    assert torch.equal(torch.sort(full, dim=1, descending=True, stable=True).indices[:, :10], i)
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatIP(16)
    index.add(keys.numpy())
    _, fi = index.search(q.numpy(), 10)
    assert np.array_equal(fi[1:], i[1:].numpy())  # rows without exact ties


def test_bank_round_trip_and_search_backends(tmp_path):
    gen = torch.Generator().manual_seed(1)
    keys = F.normalize(torch.randn(50, 8, generator=gen), dim=-1)
    protos = torch.randn(50, 6, generator=gen)
    save_bank(tmp_path / "b", keys, protos, {"note": "test"})
    bank = load_bank(tmp_path / "b", cache=False)
    assert torch.equal(bank.keys, keys) and torch.equal(bank.prototypes, protos) and bank.meta["note"] == "test"
    q = keys[:3] + 0.01
    _, i = bank.search(q, 4, backend="torch")
    cp = bank.class_prototypes(q, 4, backend="torch")
    assert torch.allclose(cp[:, 0], protos[i].mean(1), atol=1e-6)
    if bank.index is not None:  # faiss installed: the flat index gives the same neighbours
        _, fi = bank.search(q, 4, backend="faiss")
        assert torch.equal(fi, i)


def test_released_layout_is_read_with_faiss(tmp_path):
    faiss = pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(2)
    keys = F.normalize(torch.randn(12, 8, generator=gen), dim=-1).numpy()
    (tmp_path / "prototype_embeddings").mkdir()
    (tmp_path / "faiss_index").mkdir()
    for j in range(12):
        np.save(tmp_path / "prototype_embeddings" / f"{j:03d}.npy", np.full(5, j, np.float32))
    index = faiss.IndexFlatIP(8)
    index.add(keys)
    faiss.write_index(index, str(tmp_path / "faiss_index" / "knn.index"))
    bank = load_bank(tmp_path, cache=False)
    cp = bank.class_prototypes(torch.from_numpy(keys[[4]]), 1)
    assert cp.shape == (1, 1, 5) and float(cp[0, 0, 0]) == 4.0


def test_freeda_without_a_bank_says_how_to_give_one():
    seg = ovss.load("freeda", backbone="tiny-synthetic", device="cpu",
                    overrides={"plugins": "freeda:vfm=none,k_search=1"})
    with pytest.raises(ValueError, match="bank"):
        seg(np.zeros((32, 32, 3), np.uint8), ["a", "b"])


@pytest.mark.parametrize("params", [(100, 0.7, 20), (100, 1.0, 20), (100, 1.0, 100), (20, 0.5, 50)],
                         ids=["voc20", "context59", "coco-stuff", "cityscapes"])
def test_felzenszwalb_port_equals_skimage_on_scenes(params):
    """The numpy port against scikit-image (when installed) with each preset's parameters."""
    sk = pytest.importorskip("skimage.segmentation")
    from ovss.data.synthetic import make_scene

    scale, sigma, min_size = params
    for seed in range(3):
        img = make_scene(seed, size=80).image.astype(np.float32) / np.float32(255)
        ref = sk.felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
        assert np.array_equal(felzenszwalb_numpy(img, scale, sigma, min_size), ref), (params, seed)
