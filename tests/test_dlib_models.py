"""dlib's pretrained descriptor as backbone (dlib_resnet) and conditioner
(dlib_id), and the hog baseline backbone."""

from __future__ import annotations

import numpy as np
import pytest

import c4s_core
from c4s_core.data.io import list_images, load_image


@pytest.fixture
def faces(cufs):
    files = list_images(cufs / "photos")[:3] + list_images(cufs / "sketches")[:1]
    return [load_image(f) for f in files]


def test_components_registered():
    regs = c4s_core.get_registries()
    assert "hog" in regs.backbone
    pytest.importorskip("dlib")
    assert "dlib_resnet" in regs.backbone and "dlib" in regs.aligner and "dlib_id" in regs.conditioner
    assert regs.backbone.get("dlib_resnet").origin.plugin == "dlib"


def test_hog_backbone():
    bb = c4s_core.get_registries().backbone.build("hog")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (130, 100, 3), dtype=np.uint8) for _ in range(3)]
    e = bb.embed(imgs)
    assert e.shape == (3, bb.embedding_dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e, bb.embed(imgs))
    assert bb.input_size == (112, 112) and bb.color_order == "RGB"


def test_hog_flip_fusion_is_blind_to_mirroring():
    regs = c4s_core.get_registries()
    plain, fused = regs.backbone.build("hog"), regs.backbone.build("hog", {"flip_fusion": True})
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(2)]  # its size: no resize
    mirrors = [im[:, ::-1].copy() for im in imgs]
    np.testing.assert_allclose(fused.embed(imgs), fused.embed(mirrors), atol=1e-6)  # the same two views
    assert np.abs(plain.embed(imgs) - plain.embed(mirrors)).max() > 1e-2
    assert fused.embedding_dim == plain.embedding_dim


def test_dlib_resnet_is_deterministic(faces):
    pytest.importorskip("dlib")
    bb = c4s_core.get_registries().backbone.build("dlib_resnet")
    a, b = bb.embed(faces), bb.embed(faces[::-1])[::-1]
    assert a.shape == (4, 128) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert bb.last_no_face == 0
    sim = a @ a.T
    assert sim[0, 1] < 0.95  # different people differ


def test_dlib_resnet_falls_back_on_no_face():
    pytest.importorskip("dlib")
    bb = c4s_core.get_registries().backbone.build("dlib_resnet")
    e = bb.embed([np.full((120, 100, 3), 200, np.uint8)])
    assert e.shape == (1, 128) and np.isfinite(e).all() and bb.last_no_face == 1


def test_dlib_id_conditioner_encodes_and_caches(faces, tmp_path):
    pytest.importorskip("dlib")
    torch = pytest.importorskip("torch")
    cond = c4s_core.get_registries().conditioner.build("dlib_id", {"cache_dir": str(tmp_path / "emb")})
    assert cond.dim == 128 and cond.num_tokens == 1
    t = cond.encode(faces[:2], styles=["pencil", "pencil"])
    assert isinstance(t, torch.Tensor) and t.shape == (2, 1, 128) and t.dtype == torch.float32
    assert len(list((tmp_path / "emb").rglob("*.npy"))) == 2
    calls = []
    real = cond.encoder.embed
    cond.encoder.embed = lambda ims: calls.append(len(ims)) or real(ims)
    t2 = cond.encode(faces[:3])
    assert calls == [1]  # two from the cache, one computed
    torch.testing.assert_close(t2[:2], t)
