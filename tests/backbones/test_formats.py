"""Every CLIP weight format loads to the same canonical tensors and the same embeddings.

One tiny random CLIP is written in each real-world layout (OpenAI state dict and TorchScript
archive, OpenCLIP files and folder, a DDP training checkpoint, a transformers folder); all must
come back identical. The transformers folder is also run through transformers itself, which
proves the HF key conversion (q/k/v stacking, transposed projections) numerically.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from measured import max_abs_diff
from safetensors.torch import save_file
from torch import nn

from ovss.backbones import configs
from ovss.backbones import pretrained as pretrained_mod
from ovss.backbones.clip import CLIP
from ovss.backbones.configs import ClipCfg, TextCfg, VisionCfg
from ovss.backbones.convert import (
    PickleRefusedError,
    WeightsCorruptError,
    detect_format,
    load_canonical,
    read_state,
)
from ovss.backbones.factory import WeightsMismatchError, create_clip, weights_identity
from ovss.backbones.hub import WeightsNotFoundError, download, resolve_weights
from ovss.backbones.pretrained import PretrainedCfg, list_backbones
from ovss.backbones.transformer import LayerNorm, Transformer
from ovss.backbones.vit import VisionTransformer
from ovss.backbones.zoo import get_pretrained

TINY = ClipCfg(
    VisionCfg(width=128, layers=2, heads=2, patch_size=16, image_size=32, output_dim=64),
    TextCfg(width=128, layers=2, heads=2, context_length=77, vocab_size=600, output_dim=64),
)
EOT, SOT = 599, 598  # the largest ids, as in CLIP's vocabulary (argmax finds the EOT token)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------------------------
# Layout helpers (test-side inverses of the converters)


def canonical_to_openai(state: dict) -> dict:
    return {(k.removeprefix("text.")): v for k, v in state.items()}


def canonical_to_hf(state: dict, layers_v: int, layers_t: int) -> dict:
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
        "text_model.embeddings.token_embedding.weight": state["text.token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["text.positional_embedding"],
        "text_model.final_layer_norm.weight": state["text.ln_final.weight"],
        "text_model.final_layer_norm.bias": state["text.ln_final.bias"],
        "text_projection.weight": state["text.text_projection"].t().contiguous(),
        "logit_scale": state["logit_scale"],
    }
    for ours, hf, n in (("visual.", "vision_model.", layers_v), ("text.", "text_model.", layers_t)):
        for i in range(n):
            a, b = f"{ours}transformer.resblocks.{i}.", f"{hf}encoder.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = state[f"{a}attn.in_proj_{kind}"].chunk(3, dim=0)
                out[f"{b}self_attn.q_proj.{kind}"] = q.contiguous()
                out[f"{b}self_attn.k_proj.{kind}"] = k.contiguous()
                out[f"{b}self_attn.v_proj.{kind}"] = v.contiguous()
                out[f"{b}self_attn.out_proj.{kind}"] = state[f"{a}attn.out_proj.{kind}"]
                out[f"{b}layer_norm1.{kind}"] = state[f"{a}ln_1.{kind}"]
                out[f"{b}layer_norm2.{kind}"] = state[f"{a}ln_2.{kind}"]
                out[f"{b}mlp.fc1.{kind}"] = state[f"{a}mlp.c_fc.{kind}"]
                out[f"{b}mlp.fc2.{kind}"] = state[f"{a}mlp.c_proj.{kind}"]
    return out


class OpenAILike(nn.Module):
    """OpenAI CLIP's attribute layout (visual tower + top-level text pieces), for TorchScript."""

    def __init__(self, cfg: ClipCfg):
        super().__init__()
        t = cfg.text
        self.visual = VisionTransformer(cfg.vision)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.zeros(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.act)
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.zeros(t.width, t.output_dim))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        # OpenAI's archives carry these ints in their state dict; the converter must drop them.
        self.register_buffer("input_resolution", torch.tensor(cfg.vision.image_size))
        self.register_buffer("context_length", torch.tensor(t.context_length))
        self.register_buffer("vocab_size", torch.tensor(t.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


class Evil:
    """A harmless stand-in for an arbitrary pickled object."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def random_clip_state(cfg: ClipCfg, seed: int) -> dict:
    """Random weights with every tensor perturbed (LN weights around 1, biases non-zero), rounded
    through fp16 so fp16 files hold exactly the same values."""
    torch.manual_seed(seed)
    model = CLIP(cfg)
    state = {}
    for k, v in model.state_dict().items():
        noise = torch.randn_like(v) * 0.05
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            v = 1.0 + noise
        elif k == "logit_scale":
            v = v.clone()
        elif k.endswith("bias"):
            v = noise
        else:
            v = v + noise
        state[k] = v.half().float()
    return state


def hf_config(cfg: ClipCfg, act: str):
    from transformers import CLIPConfig

    v, t = cfg.vision, cfg.text
    return CLIPConfig(
        text_config={"hidden_size": t.width, "intermediate_size": 4 * t.width, "num_hidden_layers": t.layers,
                     "num_attention_heads": t.heads, "vocab_size": t.vocab_size,
                     "max_position_embeddings": t.context_length, "projection_dim": t.output_dim,
                     "hidden_act": act, "bos_token_id": SOT, "eos_token_id": EOT, "pad_token_id": 0},
        vision_config={"hidden_size": v.width, "intermediate_size": 4 * v.width,
                       "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                       "image_size": v.image_size, "patch_size": v.patch_size,
                       "projection_dim": v.output_dim, "hidden_act": act},
        projection_dim=v.output_dim,
    )


def make_hf_model(state: dict, cfg: ClipCfg, act: str):
    from transformers import CLIPModel

    model = CLIPModel(hf_config(cfg, act)).eval()
    hf_state = canonical_to_hf(state, cfg.vision.layers, cfg.text.layers)
    model.load_state_dict(hf_state, strict=True)
    return model


def open_clip_config(cfg: ClipCfg, quick_gelu: bool) -> dict:
    v, t = cfg.vision, cfg.text
    model_cfg = {
        "embed_dim": t.output_dim,
        "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                       "patch_size": v.patch_size},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers},
    }
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    return {"model_cfg": model_cfg,
            "preprocess_cfg": {"mean": list(pretrained_mod.CLIP_MEAN), "std": list(pretrained_mod.CLIP_STD)}}


def write_tokenizer_files(folder: Path) -> None:
    (folder / "vocab.json").write_text(json.dumps({"a</w>": 0}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def sample_tokens() -> torch.Tensor:
    torch.manual_seed(7)
    rows = []
    for n in (5, 11, 3):
        body = torch.randint(1, SOT, (n,))
        row = torch.cat([torch.tensor([SOT]), body, torch.tensor([EOT])])
        rows.append(torch.cat([row, torch.zeros(TINY.text.context_length - len(row), dtype=torch.long)]))
    return torch.stack(rows)


def sample_images() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(2, 3, 32, 32)


def hf_features(out) -> torch.Tensor:
    """transformers < 5 returns a tensor, >= 5 an output whose pooler_output is projected."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ----------------------------------------------------------------------------------------------
# The same weights in every format


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("weights")
    base = random_clip_state(TINY, seed=0)
    openai = canonical_to_openai(base)
    scalars = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
               "vocab_size": torch.tensor(600)}
    files: dict[str, Path] = {}

    files["openai_fp16_pt"] = root / "ViT-tiny-fp16.pt"
    torch.save({**{k: v.half() for k, v in openai.items()}, **scalars}, files["openai_fp16_pt"])
    files["openai_fp32_pt"] = root / "ViT-tiny-fp32.pt"
    torch.save({**openai, **scalars}, files["openai_fp32_pt"])

    ts = OpenAILike(TINY)
    missing, unexpected = ts.load_state_dict(openai, strict=False)
    assert set(missing) == set(scalars) and not unexpected
    with warnings.catch_warnings():  # torch.jit is deprecated, and tracing warns about shapes
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ts.eval(), sample_images()[:1])
    files["openai_torchscript"] = root / "ViT-tiny-jit.pt"
    traced.save(str(files["openai_torchscript"]))

    files["open_clip_bin"] = root / "open_clip_pytorch_model.bin"
    torch.save(openai, files["open_clip_bin"])
    files["open_clip_safetensors"] = root / "tiny_open_clip.safetensors"
    save_file(openai, str(files["open_clip_safetensors"]))

    oc = root / "open_clip_folder"
    oc.mkdir()
    save_file(openai, str(oc / "open_clip_model.safetensors"))
    (oc / "open_clip_config.json").write_text(json.dumps(open_clip_config(TINY, quick_gelu=True)))
    write_tokenizer_files(oc)
    files["open_clip_folder"] = oc

    oc_gelu = root / "open_clip_folder_gelu"
    oc_gelu.mkdir()
    torch.save(openai, oc_gelu / "open_clip_pytorch_model.bin")
    (oc_gelu / "open_clip_config.json").write_text(json.dumps(open_clip_config(TINY, quick_gelu=False)))

    files["training_ckpt"] = root / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run1", "state_dict": {f"module.{k}": v for k, v in openai.items()}},
               files["training_ckpt"])

    files["ovss_safetensors"] = root / "canonical.safetensors"
    save_file(base, str(files["ovss_safetensors"]))

    single = root / "single_file_folder"
    single.mkdir()
    torch.save(openai, single / "whatever.pth")
    files["single_file_folder"] = single

    hf_dirs = {}
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        for act in ("quick_gelu", "gelu"):
            d = root / f"hf_{act}"
            make_hf_model(base, TINY, act).save_pretrained(str(d))
            hf_dirs[act] = d
        files["hf_folder"] = hf_dirs["quick_gelu"]
        # Older hub repos hold pytorch_model.bin with position_ids buffers.
        d = root / "hf_bin"
        d.mkdir()
        (d / "config.json").write_text((hf_dirs["quick_gelu"] / "config.json").read_text())
        hf_state = canonical_to_hf(base, TINY.vision.layers, TINY.text.layers)
        hf_state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
        hf_state["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
        torch.save(hf_state, d / "pytorch_model.bin")
        files["hf_bin_folder"] = d

    return {"root": root, "base": base, "files": files, "hf_dirs": hf_dirs, "oc_gelu": oc_gelu}


@pytest.fixture(scope="module")
def reference(weights) -> CLIP:
    model = CLIP(TINY).eval()
    model.load_state_dict(weights["base"], strict=True)
    return model


FORMAT_KEYS = ["openai_fp16_pt", "openai_fp32_pt", "openai_torchscript", "open_clip_bin",
               "open_clip_safetensors", "open_clip_folder", "training_ckpt", "ovss_safetensors",
               "single_file_folder", "hf_folder", "hf_bin_folder"]
EXPECTED_FORMAT = {"openai_fp16_pt": "openai", "openai_fp32_pt": "openai", "openai_torchscript": "openai",
                   "open_clip_bin": "open_clip", "open_clip_safetensors": "open_clip",
                   "open_clip_folder": "open_clip", "training_ckpt": "open_clip", "ovss_safetensors": "ovss",
                   "single_file_folder": "open_clip", "hf_folder": "hf", "hf_bin_folder": "hf"}


def _path(weights, key) -> Path:
    if key not in weights["files"]:
        pytest.importorskip("transformers")
    return weights["files"][key]


@pytest.mark.parametrize("key", FORMAT_KEYS)
def test_every_format_gives_identical_canonical_tensors(weights, key):
    state, meta = load_canonical(_path(weights, key))
    assert meta["format"] == EXPECTED_FORMAT[key]
    base = weights["base"]
    assert sorted(state) == sorted(base)
    for k, v in base.items():
        assert torch.equal(state[k].float(), v), k


@pytest.mark.parametrize("key", FORMAT_KEYS)
def test_every_format_gives_identical_embeddings(weights, reference, key):
    loaded = create_clip(str(_path(weights, key)))
    model = loaded.model
    assert not model.training and model.logit_scale.dtype == torch.float32
    assert model.cfg.vision.act == "quick_gelu"
    with torch.no_grad():
        assert torch.equal(model.encode_image(sample_images()), reference.encode_image(sample_images()))
        assert torch.equal(model.encode_text(sample_tokens()), reference.encode_text(sample_tokens()))


def test_training_checkpoint_is_unwrapped(weights):
    state, meta = read_state(weights["files"]["training_ckpt"])
    assert "visual.conv1.weight" in state and not any(k.startswith("module.") for k in state)
    assert meta["extra"] == {"epoch": 3, "name": "run1"}


def test_torchscript_buffers_dropped_and_act_known(weights):
    raw, meta = read_state(weights["files"]["openai_torchscript"])
    assert "input_resolution" in raw and meta["act"] == "quick_gelu"
    state, _ = load_canonical(weights["files"]["openai_torchscript"])
    assert "input_resolution" not in state


def test_detect_format_layouts(weights):
    base = weights["base"]
    assert detect_format(base) == "ovss"
    assert detect_format(canonical_to_openai(base)) == "open_clip"
    assert detect_format({**canonical_to_openai(base), "vocab_size": torch.tensor(600)}) == "openai"
    assert detect_format(canonical_to_hf(base, 2, 2)) == "hf"
    with pytest.raises(ValueError, match="not a CLIP"):
        detect_format({"fc.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_features_match_transformers(weights, act):
    pytest.importorskip("transformers")
    hf = make_hf_model(weights["base"], TINY, act)
    ours = create_clip(str(weights["hf_dirs"][act])).model
    assert ours.cfg.vision.act == act and ours.cfg.text.act == act  # a gelu model stays gelu
    images, tokens = sample_images(), sample_tokens()
    with torch.no_grad():
        hf_image = hf_features(hf.get_image_features(pixel_values=images))
        hf_text = hf_features(hf.get_text_features(input_ids=tokens))
        name = f"backbones.formats.transformers.{act}"
        d_image = max_abs_diff(ours.encode_image(images), hf_image, name + ".image")
        d_text = max_abs_diff(ours.encode_text(tokens), hf_text, name + ".text")
    # measured on an Intel Xeon (this machine), identical with OMP_NUM_THREADS=1, =2 and
    # torch.set_num_threads(1): image 8.4e-7 / 9.5e-7, text 1.8e-6 / 1.6e-6 (quick_gelu / gelu; values
    # up to 3.3): the bound is 5.5x the largest
    assert d_image < 1e-5 and d_text < 1e-5, (d_image, d_text)
    assert torch.allclose(ours.logit_scale, hf.logit_scale)


def test_open_clip_config_activation_respected(weights, reference):
    loaded = create_clip(str(weights["oc_gelu"]))
    assert loaded.model.cfg.vision.act == "gelu" and loaded.model.cfg.text.act == "gelu"
    with torch.no_grad():  # same weights, other activation: the outputs must differ
        images = sample_images()
        assert not torch.allclose(loaded.model.encode_image(images), reference.encode_image(images))
    quick = create_clip(str(weights["files"]["open_clip_folder"]))
    assert quick.model.cfg.vision.act == "quick_gelu"
    forced = create_clip(str(weights["oc_gelu"]), act="quick_gelu")  # an explicit act wins
    assert forced.model.cfg.vision.act == "quick_gelu"


def test_loaded_clip_fields(weights):
    loaded = create_clip(str(weights["files"]["open_clip_folder"]))
    assert loaded.tokenizer_dir == weights["files"]["open_clip_folder"]
    assert loaded.pretrained is None and loaded.format == "open_clip"
    again = create_clip("local-dir:" + str(weights["files"]["open_clip_folder"]))
    assert again.weights_id == loaded.weights_id and loaded.weights_id.startswith("sha256:")
    assert create_clip(str(weights["files"]["open_clip_bin"])).tokenizer_dir is None


def test_weights_identity_partial_hash(tmp_path, monkeypatch):
    from ovss.backbones import factory

    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(3 * 2**20))
    full = weights_identity([f])
    monkeypatch.setattr(factory, "_FULL_HASH_LIMIT", 1024)
    part = weights_identity([f])
    assert full.startswith("sha256:") and part.startswith("sha256p:") and part == weights_identity([f])
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert weights_identity([f]) != part


# ----------------------------------------------------------------------------------------------
# Registry


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setitem(configs.ARCHS, "tiny", TINY)
    cfg = PretrainedCfg(name="tiny-clip", arch="tiny", hf_hub_id="ovss-test/tiny-clip",
                        weights=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
                        config="open_clip_config.json", act="quick_gelu", aliases=("Tiny/16",))
    monkeypatch.setitem(pretrained_mod.PRETRAINED, "tiny-clip", cfg)
    return cfg


def test_registry_names_and_aliases():
    names = list_backbones()
    for n in ("clip-vit-b16", "clip-vit-b32", "clip-vit-l14", "clip-vit-l14-336",
              "openclip-vit-b16-laion2b", "openclip-vit-h14-laion2b"):
        assert n in names
        assert get_pretrained(n).arch in configs.ARCHS
    for alias in ("ViT-B/16", "openai/ViT-B-16", "ViT-B-16.openai", "vit_b_16", "clip-vit-b-16",
                  "openai/clip-vit-base-patch16"):
        assert get_pretrained(alias).name == "clip-vit-b16", alias
    assert get_pretrained("ViT-L/14@336px").name == "clip-vit-l14-336"
    assert get_pretrained("ViT-B-16.laion2b_s34b_b88k").name == "openclip-vit-b16-laion2b"
    assert get_pretrained("ViT-H-14").name == "openclip-vit-h14-laion2b"
    assert list_backbones("openclip-*") == ["openclip-vit-b16-laion2b", "openclip-vit-h14-laion2b"]
    assert get_pretrained("clip-vit-b16").mean == (0.48145466, 0.4578275, 0.40821073)
    assert get_pretrained("openclip-vit-h14-laion2b").act == "gelu"


@pytest.mark.parametrize("key", ["openai_fp16_pt", "openai_torchscript", "open_clip_folder", "hf_folder"])
def test_registered_arch_with_own_weights(weights, reference, tiny_registered, key):
    loaded = create_clip("Tiny/16", weights=_path(weights, key))
    assert loaded.pretrained is tiny_registered
    with torch.no_grad():
        images = sample_images()
        assert torch.equal(loaded.model.encode_image(images), reference.encode_image(images))


# ----------------------------------------------------------------------------------------------
# Bad input


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError, match="nope"):
        create_clip(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        create_clip("clip-vit-b16", weights=missing)


def test_corrupt_random_bytes(tmp_path):
    for name in ("random.pt", "random.safetensors", "random.bin"):
        f = tmp_path / name
        f.write_bytes(os.urandom(4096))
        with pytest.raises(WeightsCorruptError, match=name):
            create_clip(str(f))


def test_corrupt_truncated_files(weights, tmp_path):
    for key in ("open_clip_safetensors", "open_clip_bin"):
        src = weights["files"][key]
        data = src.read_bytes()
        f = tmp_path / ("truncated" + src.suffix)
        f.write_bytes(data[: len(data) // 2])
        with pytest.raises(WeightsCorruptError, match="truncated"):
            read_state(f)


def test_pickled_object_refused(weights, tmp_path):
    state = canonical_to_openai(weights["base"])
    f = tmp_path / "with_object.pt"
    torch.save({"state_dict": state, "hook": Evil()}, f)
    with pytest.raises(PickleRefusedError, match="pickled Python objects") as e:
        create_clip(str(f))
    assert "trust_pickle" in str(e.value) and "Evil" in str(e.value)
    loaded = create_clip(str(f), trust_pickle=True)  # explicit trust: the test's own harmless class
    assert loaded.model.cfg.vision.width == 128


def test_plain_pickle_refused(tmp_path):
    import pickle

    f = tmp_path / "plain.bin"
    with open(f, "wb") as fh:
        pickle.dump({"w": [1.0, 2.0], "obj": Evil()}, fh, protocol=4)
    with pytest.raises(PickleRefusedError, match="pickled Python objects"):
        read_state(f)


def test_other_architecture_mismatch(tmp_path, tiny_registered):
    other = ClipCfg(replace(TINY.vision, width=192, heads=3, layers=3), TINY.text)
    f = tmp_path / "other.safetensors"
    save_file(canonical_to_openai(random_clip_state(other, seed=1)), str(f))
    with pytest.raises(WeightsMismatchError) as e:
        create_clip("tiny-clip", weights=f)
    msg = str(e.value)
    assert "width 192, 3 blocks" in msg and "width 128, 2 blocks" in msg
    assert "unexpected keys (" in msg and "visual.transformer.resblocks.2" in msg
    assert "shape mismatches (" in msg and "visual.conv1.weight: checkpoint (192, 3, 16, 16)" in msg
    with pytest.raises(WeightsMismatchError, match=r"ViT-B/16 \(width 768, 12 blocks"):
        create_clip("clip-vit-b16", weights=f)


def test_not_a_clip_checkpoint(tmp_path):
    f = tmp_path / "resnet.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(f))
    with pytest.raises(WeightsMismatchError, match="fc.weight"):
        create_clip(str(f))


def test_unknown_backbone_name():
    with pytest.raises(KeyError) as e:
        create_clip("clip-vit-b61")
    msg = str(e.value)
    assert "Did you mean: clip-vit-b16" in msg
    assert msg.index("Did you mean") < msg.index("Valid names")  # close matches first
    for n in list_backbones():
        assert n in msg


# ----------------------------------------------------------------------------------------------
# Hub cache


@pytest.fixture
def offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    home = tmp_path / "empty_hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_offline_nothing_cached(offline):
    with pytest.raises(WeightsNotFoundError) as e:
        create_clip("clip-vit-b16")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "openai/clip-vit-base-patch16" in msg and "model.safetensors" in msg
    assert "ovss download clip-vit-b16" in msg and "--weights" in msg and "HF_HOME" in msg
    assert str(offline) in msg  # names the cache it searched
    with pytest.raises(WeightsNotFoundError, match="ovss download hf-hub:org/none"):
        resolve_weights("hf-hub:org/none")


def _fake_snapshot(cache: Path, repo: str, files: dict[str, Path | str]) -> Path:
    """A hub cache laid out as huggingface_hub writes it: models--org--name/{refs,snapshots}."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, src in files.items():
        (snap / name).write_bytes(src.read_bytes() if isinstance(src, Path) else src.encode())
    return snap


def test_load_by_name_from_populated_cache(weights, reference, offline, tmp_path, tiny_registered):
    cache = tmp_path / "hub_cache"
    oc = weights["files"]["open_clip_folder"]
    snap = _fake_snapshot(cache, "ovss-test/tiny-clip", {
        "open_clip_model.safetensors": oc / "open_clip_model.safetensors",
        "open_clip_config.json": oc / "open_clip_config.json",
        "vocab.json": oc / "vocab.json",
        "merges.txt": oc / "merges.txt",
    })
    assert download("tiny-clip", cache_dir=cache) == snap  # what `ovss download` runs; offline: cache hit
    loaded = create_clip("tiny-clip", cache_dir=cache)
    assert loaded.pretrained is tiny_registered and loaded.tokenizer_dir == snap
    assert loaded.weights_path == snap / "open_clip_model.safetensors"
    assert loaded.weights_id == weights_identity([oc / "open_clip_model.safetensors"])
    with torch.no_grad():
        images = sample_images()
        assert torch.equal(loaded.model.encode_image(images), reference.encode_image(images))


def test_cache_bin_fallback_and_hf_home(weights, offline):
    # Only the .bin is cached: offline, the safetensors lookup fails and the .bin is used.
    snap = _fake_snapshot(offline / "hub", "openai/clip-vit-base-patch16", {
        "pytorch_model.bin": weights["files"]["open_clip_bin"],
    })
    assert resolve_weights("ViT-B/16") == snap / "pytorch_model.bin"  # found through HF_HOME
    one_file = "hf-hub:openai/clip-vit-base-patch16/pytorch_model.bin"
    assert resolve_weights(one_file) == snap / "pytorch_model.bin"
