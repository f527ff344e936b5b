"""Built-in torch backbones: AdaFace/insightface weight layout, loading, embedding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import c4s_core
from c4s_core.errors import ConfigError, DataError

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

TINY = {"widths": [8, 8, 16, 16], "input_size": 32, "embedding_dim": 32, "device": "cpu"}

# Names verified in mk-minchul/AdaFace net.py (Backbone: input_layer, body of
# BasicBlockIR, output_layer = BN2d, Dropout, Flatten, Linear, BN1d(affine=False)).
ADAFACE_KEYS = [
    "input_layer.0.weight",  # Conv2d(3, 64)
    "input_layer.1.running_var",  # BatchNorm2d
    "input_layer.2.weight",  # PReLU
    "body.0.res_layer.0.weight",  # BN
    "body.0.res_layer.1.weight",  # conv3x3
    "body.0.res_layer.3.weight",  # PReLU
    "body.0.res_layer.4.weight",  # conv3x3, stride
    "body.0.res_layer.5.bias",
    "body.3.shortcut_layer.0.weight",  # first unit of stage 2 (64 -> 128): conv1x1
    "body.3.shortcut_layer.1.running_mean",
    "output_layer.0.weight",
    "output_layer.3.weight",  # Linear(512*7*7, 512)
    "output_layer.3.bias",
    "output_layer.4.running_mean",  # BatchNorm1d(512, affine=False)
]
# insightface arcface_torch backbones/mobilefacenet.py
MBF_KEYS = [
    "layers.0.layers.0.weight",
    "layers.1.layers.2.weight",
    "layers.2.layers.0.layers.0.weight",
    "layers.3.layers.0.layers.2.layers.1.running_var",
    "conv_sep.layers.0.weight",
    "features.layers.0.layers.0.weight",
    "features.layers.2.weight",
    "features.layers.3.weight",
]


def build(name, **opts):
    return c4s_core.get_registries().backbone.build(name, opts)


def test_plugins_import_no_torch():
    code = "import sys, c4s_plugins.backbones, c4s_plugins.heads; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registered_with_aliases():
    reg = c4s_core.get_registries().backbone
    for name, alias in [("ir_18", "r18"), ("ir_34", "r34"), ("ir_50", "r50"), ("ir_101", "r100"),
                        ("mobilefacenet", "mbf"), ("matcher", "checkpoint")]:
        assert reg.get(alias).name == name
    with pytest.raises(ConfigError, match="multiple of 16"):
        reg.config("ir_18", {"input_size": 100})


def test_ir50_official_layout():
    b = build("ir_50", device="cpu")
    sd = b.model.state_dict()
    for k in ADAFACE_KEYS:
        assert k in sd, k
    assert "output_layer.4.weight" not in sd  # affine=False
    assert "body.0.shortcut_layer.0.weight" not in sd  # 64 -> 64: MaxPool2d(1, 2)
    assert tuple(sd["output_layer.3.weight"].shape) == (512, 512 * 7 * 7)
    assert tuple(sd["input_layer.0.weight"].shape) == (64, 3, 3, 3)
    units = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert len(units) == 3 + 4 + 14 + 3
    n = sum(p.numel() for p in b.model.parameters())
    assert 43.0e6 < n < 44.2e6  # AdaFace IR-50: 43.6M parameters
    assert (b.input_size, b.embedding_dim, b.color_order) == ((112, 112), 512, "BGR")


@pytest.mark.parametrize("name,units", [("ir_18", 8), ("ir_34", 16), ("ir_101", 49)])
def test_ir_depths(name, units):
    b = build(name, **TINY)
    assert len({k.split(".")[1] for k in b.model.state_dict() if k.startswith("body.")}) == units


def test_adaface_ckpt_round_trip(tmp_path):
    src = build("ir_50", device="cpu")
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load would show
        for m in src.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = {f"model.{k}": v for k, v in src.model.state_dict().items()}
    sd["head.kernel"] = torch.randn(512, 10)  # AdaFace checkpoints carry the head too
    sd["head.batch_mean"] = torch.ones(1)
    path = tmp_path / "adaface_ir50.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    dst = build("ir_50", device="cpu", weights=str(path))
    for k, v in src.model.state_dict().items():
        assert torch.equal(v, dst.model.state_dict()[k]), k
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    np.testing.assert_allclose(src.embed(imgs), dst.embed(imgs), atol=1e-6)


def test_wrong_checkpoint_lists_keys(tmp_path):
    from safetensors.torch import save_file

    sd = dict(build("ir_18", **TINY).model.state_dict())
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(DataError) as err:
        build("ir_34", **TINY, weights=str(path))
    msg = str(err.value)
    assert "missing keys" in msg and "body.8.res_layer.0.weight" in msg
    assert "unexpected keys" in msg and "extra.weight" in msg
    assert "shape mismatches" in msg and str(path) in msg
    with pytest.raises(DataError, match="not found"):
        build("ir_18", **TINY, weights=str(tmp_path / "nope.safetensors"))


def test_safetensors_weights_load(tmp_path):
    from c4s_core.training import save_weights

    a = build("ir_18", **TINY)
    save_weights(tmp_path / "w.safetensors", {f"module.{k}": v for k, v in a.model.state_dict().items()})
    b = build("ir_18", **TINY, weights=str(tmp_path / "w.safetensors"))
    img = [np.full((40, 40, 3), 90, np.uint8)]
    np.testing.assert_allclose(a.embed(img), b.embed(img), atol=1e-6)


def test_embed_contract_bgr_and_normalisation():
    b = build("ir_18", **TINY)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    e = b.embed(imgs)
    assert e.dtype == np.float32 and e.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # by hand: resize, RGB -> BGR, (x/255 - 0.5)/0.5
    from c4s_core.data.io import resize

    x = np.stack([resize(im, 32)[:, :, ::-1] for im in imgs]).astype(np.float32)
    x = torch.from_numpy((x / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(b.model.eval()(x), dim=1).numpy()
    np.testing.assert_allclose(e, ref, atol=1e-5)
    assert not b.model.training
    assert b.embed([]).shape == (0, 32)


def test_flip_fusion_embeds_an_image_and_its_mirror_alike(tmp_path):
    from c4s_core.pipelines.train_matcher import save_matcher

    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]  # at input size: no resize
    mirrors = [im[:, ::-1].copy() for im in imgs]
    plain, fused = build("ir_18", **TINY), build("ir_18", **TINY, flip_fusion=True)
    fused.model.load_state_dict(plain.model.state_dict())
    # f(x) + f(mirror x) is the same sum for the mirror; one view alone is not mirror-blind
    np.testing.assert_allclose(fused.embed(imgs), fused.embed(mirrors), atol=1e-6)
    assert np.abs(plain.embed(imgs) - plain.embed(mirrors)).max() > 1e-2
    assert plain.architecture() == fused.architecture()  # not part of the network
    # a matcher folder takes it as an option of its own
    save_matcher(tmp_path / "m", plain, "ir_18", {"data_hash": "abc"})
    mf = build("matcher", path=str(tmp_path / "m"), device="cpu", flip_fusion=True)
    np.testing.assert_allclose(mf.embed(imgs), fused.embed(imgs), atol=1e-6)
    assert np.abs(mf.embed(imgs) - plain.embed(imgs)).max() > 1e-2


def test_mobilefacenet_layout_and_tiny():
    full = build("mobilefacenet", device="cpu")
    sd = full.model.state_dict()
    for k in MBF_KEYS:
        assert k in sd, k
    assert tuple(sd["features.layers.0.layers.0.weight"].shape) == (512, 1, 7, 7)  # GDC over 7x7
    assert tuple(sd["layers.0.layers.0.weight"].shape) == (128, 3, 3, 3)  # 64 * scale 2
    tiny = build("mbf", device="cpu", width=0.125, input_size=32, embedding_dim=64)
    e = tiny.embed([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 200, np.uint8)])
    assert e.shape == (2, 64)


def test_matcher_folder_rebuilds_backbone(tmp_path):
    from c4s_core.pipelines.train_matcher import save_matcher

    a = build("ir_18", **TINY)
    info = save_matcher(tmp_path / "m", a, "ir_18", {"data_hash": "abc"})
    assert info["backbone"] == {"name": "ir_18", "options": {
        "embedding_dim": 32, "input_size": 32, "widths": [8, 8, 16, 16], "dropout": 0.4}}
    m = build("matcher", path=str(tmp_path / "m"), device="cpu")
    assert (m.input_size, m.embedding_dim, m.color_order) == ((32, 32), 32, "BGR")
    img = [np.full((50, 50, 3), 120, np.uint8), np.eye(50, dtype=np.uint8)[:, :, None].repeat(3, 2) * 255]
    np.testing.assert_allclose(a.embed(img), m.embed(img), atol=1e-6)
    with pytest.raises(DataError, match="no matcher.json"):
        build("matcher", path=str(tmp_path))
