"""CLIP-DIY against its reference (tests/golden/clipdiy_small.safetensors, made by
tests/golden/make_clipdiy_golden.py from wysoczanska/clip-diy and valeoai/FOUND): the crop
grid, scale average and saliency fusion given fixed crop embeddings; and end to end on
clip_small (the HF CLIP vision tower of the same weights in the reference) with FOUND's
saliency from a small random DINO + decoder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ovss.backbones.dino import create_dino
from ovss.backbones.factory import create_clip
from ovss.backbones.found import make_decoder
from ovss.core.segmenter import Segmenter
from ovss.heads.clipdiy import (
    CLIPDIYHead,
    average_scales,
    crop_boxes,
    fuse_saliency,
    group_crops,
    register_found_decoder,
)
from ovss.heads.vfm import register_vfm
from ovss.methods.clipdiy import _MEAN, _STD

GOLDEN = Path(__file__).parents[1] / "golden"
VOCAB = GOLDEN / "tokenizer" / "small_vocab.txt.gz"
CLASSES = ["background", "c1", "c2", "c3", "c4"]


@pytest.fixture(scope="module")
def golden():
    g = load_file(str(GOLDEN / "clipdiy_small.safetensors"))
    register_vfm("golden-found-dino", create_dino(weights={k[13:]: v for k, v in g.items()
                                                           if k.startswith("found.w.dino.")}).model)
    dec = make_decoder({k[16:]: v for k, v in g.items() if k.startswith("found.w.decoder.")})
    register_found_decoder("golden-found", dec, vfm="golden-found-dino")
    return g


def test_crop_grid_is_unfold_in_raster_order():
    img = torch.arange(256 * 256.0).view(1, 1, 256, 256)
    for scale, n in ((256, 1), (128, 9), (64, 49)):
        boxes = crop_boxes(256, scale, 2)
        assert len(boxes) == n
        ref = img.unfold(2, scale, scale // 2).unfold(3, scale, scale // 2).flatten(2, 3)[0, 0]
        ours = torch.stack([img[0, 0, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        assert torch.equal(ours, ref)
    assert sum(len(crop_boxes(256, s, 2)) for s in (256, 128, 64)) == 59  # CLIP forwards per image


class _FixedVisual(torch.nn.Module):
    """Returns the golden's fixed crop embeddings for each batch of crops, by crop count."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x.shape[0]]


def _sal(g):
    return g["grid.saliency64"].repeat_interleave(4, 0).repeat_interleave(4, 1)


def test_grid_average_and_fusion_match_reference(golden):
    g = golden
    table = {n: g[f"grid.emb{n}"] for n in (1, 9, 49)}
    text = g["grid.text"]
    # the pieces
    maps = [group_crops(torch.nn.functional.normalize(table[n], dim=-1) @ text.T, (256, 256)) for n in (1, 9, 49)]
    scores = average_scales(maps, (1.0, 1.0, 1.0))
    d = (scores[:, ::4, ::4] - g["grid.scores"]).abs().max().item()
    assert d < 1e-6, d
    fused = fuse_saliency(scores, _sal(g))
    d = (fused[:, ::4, ::4] - g["grid.fused"]).abs().max().item()
    assert d < 1e-6, d
    assert torch.equal(fused.argmax(0).to(torch.uint8), g["grid.labels"])
    # the head's joint readout, the saliency given as an array
    head = CLIPDIYHead(saliency=_sal(g).numpy())
    img = g["found.256.image"].permute(2, 0, 1)[None].float()
    m, s = torch.tensor(_MEAN).view(1, 3, 1, 1), torch.tensor(_STD).view(1, 3, 1, 1)
    seg = SimpleNamespace(normalization=(_MEAN, _STD), visual=_FixedVisual(table))
    out = head.joint_slide(seg, (img - m) / s, text)
    d = (out[:, ::4, ::4] - g["grid.fused"]).abs().max().item()
    print("grid + fusion: max abs diff", d)  # measured 2.2e-8 (scores up to ~0.4)
    assert d < 1e-6, d
    assert torch.equal(out.argmax(0).to(torch.uint8), g["grid.labels"])


def _segmenter(**over):
    clip = create_clip(str(GOLDEN / "clip_small.safetensors"))
    plug = "clipdiy:vfm=golden-found-dino,decoder=golden-found" + "".join(f",{k}={v}" for k, v in over.items())
    return Segmenter("clipdiy", preset="voc21", clip=clip, device="cpu", tokenizer=VOCAB,
                     overrides={"plugins": plug})


def test_end_to_end_matches_reference(golden):
    g = golden
    seg = _segmenter()
    q = g["e2e.text"]
    img = g["found.256.image"].numpy()
    with seg.trace() as t:
        low = seg.stitched_logits(seg.preprocess(img), q)
    d_scores = (t["clipdiy.scores"][0][:, ::4, ::4] - g["e2e.scores"]).abs().max().item()
    d_fused = (low[:, ::4, ::4] - g["e2e.fused"]).abs().max().item()
    print("e2e: max abs diff scores", d_scores, "fused", d_fused)  # measured 2.2e-8 / 1.5e-8
    assert d_scores < 1e-4 and d_fused < 1e-4
    r = seg(img, CLASSES, queries=q)
    assert np.array_equal(r.labels, g["e2e.labels"].numpy().astype(np.int32))
    # the "torch" resample (bicubic on the device) is close to PIL's, not equal
    low_t = _segmenter(resample="torch").stitched_logits(seg.preprocess(img), q)
    assert (low_t - low).abs().max().item() < 5e-2


def test_saliency_options_and_output_size(golden, tmp_path):
    g = golden
    q = g["e2e.text"]
    img = g["found.256.image"].numpy()[:200, :240]  # not 256 x 256: resized in, nearest out
    seg = _segmenter(saliency="none")
    with seg.trace() as t:
        plain = seg.stitched_logits(seg.preprocess(img), q)
    assert plain.shape == (5, 200, 240) and "clipdiy.saliency" not in t
    assert torch.equal(t["clipdiy.fused"][0], t["clipdiy.scores"][0])
    sal = np.linspace(0, 1, 200 * 240, dtype=np.float32).reshape(200, 240)
    np.save(tmp_path / "s.npy", sal)
    by_file = _segmenter(saliency=str(tmp_path / "s.npy"))
    with by_file.trace() as t:
        fused = by_file.stitched_logits(by_file.preprocess(img), q)
    s256 = t["clipdiy.saliency"][0]
    assert s256.shape == (256, 256)
    want = torch.nn.functional.interpolate((t["clipdiy.scores"][0] * torch.cat([1 - s256[None], s256[None].expand(4, -1, -1)]))[None],
                                           size=(200, 240), mode="nearest")[0]
    assert torch.equal(fused, want)
    from ovss.core.recipe import Recipe

    called = []
    head = CLIPDIYHead(saliency=lambda rgb: called.append(rgb.shape) or sal, vfm="golden-found-dino", decoder="golden-found")
    by_fn = Segmenter("clipdiy", preset="voc21", clip=by_file.clip, device="cpu", tokenizer=VOCAB,
                      overrides={"plugins": (head,)})
    assert isinstance(by_fn.recipe, Recipe)
    assert torch.equal(by_fn.stitched_logits(by_fn.preprocess(img), q), fused) and called == [(200, 240, 3)]


def test_dino_option_replaces_founds_tower(golden):
    clip = create_clip(str(GOLDEN / "clip_small.safetensors"))
    seg = Segmenter("clipdiy", preset="coco-object", clip=clip, device="cpu", tokenizer=VOCAB, dino="golden-found-dino")
    assert seg.recipe.plugins[0].vfm == "golden-found-dino"
    assert list(seg.preset_class_spec().names[:3]) == ["background", "person", "bicycle"]
    assert len(seg.preset_class_spec()) == 81
    with pytest.raises(ValueError, match="has no single-pass features"):
        seg.features(np.zeros((32, 32, 3), np.uint8))


def _ovss(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ovss", *map(str, args)], check=False, capture_output=True, text=True, timeout=600)


def test_cli_methods_and_eval(golden, tiny_clip_dir, tmp_path):
    """`ovss methods clipdiy` shows settings with sources; `ovss eval` runs it with FOUND's DINO
    (`--dino FILE`) and decoder (`--set plugins=clipdiy:decoder=FILE`) given as files."""
    from safetensors.torch import save_file

    r = _ovss("methods", "clipdiy")
    assert r.returncode == 0, r.stderr
    assert "preset voc21" in r.stdout and "cfg_clip_pascal.yaml" in r.stdout and "clipdiy.saliency" in r.stdout
    g = golden
    save_file({k[13:]: v for k, v in g.items() if k.startswith("found.w.dino.")}, str(tmp_path / "dino.safetensors"))
    torch.save({"decoder": {k[16:]: v for k, v in g.items() if k.startswith("found.w.decoder.")}},
               tmp_path / "decoder_weights.pt")
    r = _ovss("eval", "--dataset", "synthetic-scenes", "--root", tmp_path / "gen", "--synthetic-n", "2",
              "--method", "clipdiy", "--backbone", tiny_clip_dir / "model.safetensors", "--out", tmp_path / "o",
              "--device", "cpu", "--quiet", "--dino", tmp_path / "dino.safetensors",
              "--set", f"plugins=clipdiy:decoder={tmp_path / 'decoder_weights.pt'}")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["metrics"]["num_images"] == 2 and 0 <= res["metrics"]["mIoU"] <= 100
    assert "dino.safetensors" in json.dumps(res["settings"]) and "decoder_weights.pt" in json.dumps(res["settings"])


def test_image_resize_is_cv2s_fixed_point_bilinear():
    """`resize_uint8` against cv2.resize(INTER_LINEAR) of uint8 images (opencv-python 5.1, what
    albumentations' Resize runs in clip-diy load_dataset.py:26): up, down and mixed scales."""
    from ovss.heads.clipdiy import resize_uint8

    g = load_file(str(GOLDEN / "clipdiy_cv2_resize.safetensors"))
    for i in range(4):
        im, ref = g[f"case{i}.image"], g[f"case{i}.resized"]
        x = im.permute(2, 0, 1)[None].float()
        ours = resize_uint8(x, tuple(ref.shape[:2]))[0].permute(1, 2, 0)
        assert torch.equal(ours, ref.float()), (i, (ours - ref.float()).abs().max())
        approx = resize_uint8(x, tuple(ref.shape[:2]), "torch")[0].permute(1, 2, 0)
        assert (approx - ref.float()).abs().max() <= 1


def test_end_to_end_off_size_image_matches_reference(golden):
    """A 181 x 243 image as clip-diy's dataset and evaluation handle it: the image and FOUND's map
    through cv2 INTER_LINEAR to 256 x 256, the labels cv2 INTER_NEAREST back (golden made with
    `--cv2`, see tests/golden/README.md)."""
    g = load_file(str(GOLDEN / "clipdiy_cv2_resize.safetensors"))
    seg = _segmenter()
    q = golden["e2e.text"]
    img = g["e2e181.image"].numpy()
    with seg.trace() as t:
        seg.stitched_logits(seg.preprocess(img), q)
    d = (t["clipdiy.fused"][0][:, ::4, ::4] - g["e2e181.fused"]).abs().max().item()
    print("off-size e2e: max abs diff fused", d)  # measured 3.0e-8
    assert d < 1e-4
    r = seg(img, CLASSES, queries=q)
    assert np.array_equal(r.labels, g["e2e181.labels"].numpy().astype(np.int32))
