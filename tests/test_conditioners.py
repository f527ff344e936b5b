"""Conditioners (clip_image, clip_text, adaface_id, photo_patches) and the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core import get_registries
from c4s_core.cache import EmbeddingCache, conditioner_identity, content_hash, encode_cached
from c4s_core.errors import C4SError, ConfigError, DataError


def photos(n=3, seed=0, shape=(40, 36, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def build(name, **opts):
    return get_registries().conditioner.build(name, opts)


def test_clip_image_pooled_and_patches_are_frozen_tokens():
    c = build("clip_image", model_config=TINY_CLIP)
    out = c.encode(photos())
    assert out.shape == (3, 1, 16) == (3, c.num_tokens, c.dim)
    assert not out.requires_grad and out.dtype.is_floating_point
    assert all(not p.requires_grad for p in c.visual.parameters()) and not c.visual.training
    p = build("clip_image", model_config=TINY_CLIP, tokens="patches")
    assert p.encode(photos()).shape == (3, 16, 32) == (3, p.num_tokens, p.dim)
    # same seed: same random tower; another seed: another tower and identity
    c2 = build("clip_image", model_config=TINY_CLIP)
    assert np.allclose(c2.encode(photos()).numpy(), out.numpy())
    c3 = build("clip_image", model_config=TINY_CLIP, seed=1)
    assert c3.identity != c.identity and not np.allclose(c3.encode(photos()).numpy(), out.numpy())


def test_clip_image_from_local_weights_file(tmp_path):
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(123)
    ref = CLIP(**TINY_CLIP).eval()
    path = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    c = build("clip_image", model_config=TINY_CLIP, pretrained=str(path))
    ims = photos(2)
    with torch.no_grad():
        want = ref.encode_image(c.preprocess(ims))
    assert torch.allclose(c.encode(ims)[:, 0], want, atol=1e-5)
    assert c.identity != build("clip_image", model_config=TINY_CLIP).identity  # weights hash in the key
    # a file for another architecture: the error lists the keys that do not fit
    other = dict(TINY_CLIP, embed_dim=8)
    with pytest.raises(DataError, match="do not fit|cannot load"):
        build("clip_image", model_config=other, pretrained=str(path))


def test_uncached_pretrained_tag_says_to_provide_weights_locally():
    with pytest.raises(C4SError, match="never downloads|local"):
        build("clip_image", pretrained="openai")
    with pytest.raises(DataError, match="not found"):
        build("clip_image", model_config=TINY_CLIP, pretrained="/nonexistent/weights.safetensors")
    with pytest.raises(ConfigError, match="model_config"):
        build("clip_image", model_config={"embed_dim": 4})


def test_clip_text_resolves_style_names_and_raw_text():
    c = build("clip_text", model_config=TINY_CLIP)
    assert c.prompts_for("pencil") == list(get_registries().sketch_style.get("pencil").cls.prompts)
    assert c.prompts_for("a crayon drawing") == ["a crayon drawing"]
    out = c.encode([], ["pencil", "charcoal", "pencil", "a crayon drawing", None])
    assert out.shape == (5, 1, 16)
    assert np.allclose(out[0], out[2]) and not np.allclose(out[0], out[1]) and not np.allclose(out[0], out[3])
    first = build("clip_text", model_config=TINY_CLIP, prompts="first").encode([], ["pencil"])
    assert not np.allclose(first[0], out[0])  # mean of all prompts differs from the first one
    seq = build("clip_text", model_config=TINY_CLIP, tokens="sequence")
    assert seq.encode(photos(2), None).shape == (2, 16, 16) == (2, seq.num_tokens, seq.dim)


def test_embedding_cache_round_trip_and_keys(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for fmt in ("npy", "safetensors"):
        cache = EmbeddingCache(tmp_path / fmt, identity="enc-A", fmt=fmt)
        im = photos(1)[0]
        assert cache.get(im, "pencil") is None
        cache.put(a, im, "pencil")
        assert np.array_equal(cache.get(im, "pencil"), a)
        assert cache.get(im, "charcoal") is None  # another part: another key
        assert EmbeddingCache(tmp_path / fmt, identity="enc-B", fmt=fmt).get(im, "pencil") is None
        assert not list((tmp_path / fmt).rglob("*.tmp"))  # atomic writes leave no temp files
    assert content_hash(np.zeros((2, 2), np.uint8)) != content_hash(np.zeros((4,), np.uint8))
    with pytest.raises(ConfigError):
        EmbeddingCache(tmp_path, identity="")


def test_encode_cached_computes_each_image_once(tmp_path):
    c = build("clip_image", model_config=TINY_CLIP)
    calls = []
    real = c.encode

    def counting(ph, st=None):
        calls.append(len(ph))
        return real(ph, st)

    c.encode = counting
    ims = photos(4)
    cache = EmbeddingCache(tmp_path, conditioner_identity(c))
    first = encode_cached(c, ims, ["x"] * 4, cache)
    again = encode_cached(c, ims, ["y"] * 4, EmbeddingCache(tmp_path, conditioner_identity(c)))
    assert calls == [4]  # styles are not part of an image encoder's key
    assert np.array_equal(first, again) and first.shape == (4, 1, 16)
    assert np.allclose(first, encode_cached(c, ims, None, None))


@pytest.fixture
def ir50():
    reg = get_registries().backbone
    if "ir_50" not in reg:
        pytest.skip("backbone ir_50 is not registered (plugins/backbones.py)")
    return reg


def test_adaface_id_embedding_and_feature_map(ir50):
    import torch

    c = build("adaface_id")
    out = c.encode(photos(2, shape=(112, 112, 3)))
    assert out.shape == (2, 1, 512) == (2, c.num_tokens, c.dim)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 1), atol=1e-4)
    m = build("adaface_id", tokens="embedding+map")
    both = m.encode(photos(2, shape=(112, 112, 3)))
    assert both.shape == (2, 50, 512) and torch.allclose(both[:, :1], out, atol=1e-5)


def test_adaface_id_rejects_mismatched_weights(ir50, tmp_path):
    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "matcher.safetensors"
    save_file({"backbone.nope.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(DataError, match="missing keys"):
        build("adaface_id", weights=str(bad))
    with pytest.raises(DataError, match="not found"):
        build("adaface_id", weights=str(tmp_path / "absent.ckpt"))


def test_adaface_id_unknown_backbone_is_a_clear_error():
    with pytest.raises(ConfigError, match="not registered"):
        build("adaface_id", backbone="no_such_ir")


def test_photo_patches_carry_the_photo_and_where_each_patch_lies():
    from PIL import Image

    c = build("photo_patches", size=16, patch=4, freqs=3)
    assert (c.num_tokens, c.dim, c.role, c.uses) == (16, 16 + 12, "appearance", "photo")
    ph = photos(2, shape=(48, 48, 3))
    t = c.encode(ph).numpy()
    assert t.shape == (2, 16, 28) and t.dtype == np.float32
    # the pixel part reassembles the small grey photo exactly
    grey = np.asarray(Image.fromarray(ph[1]).convert("L").resize((16, 16), Image.BOX), np.float32) / 127.5 - 1
    img = t[1, :, :16].reshape(4, 4, 4, 4).transpose(0, 2, 1, 3).reshape(16, 16)
    np.testing.assert_allclose(img, grey, atol=1e-6)
    # position codes: the same for every photo, distinct for every token
    np.testing.assert_array_equal(t[0, :, 16:], t[1, :, 16:])
    assert len({tuple(np.round(r, 5)) for r in t[0, :, 16:]}) == 16
    # different photos, different tokens; the cache key follows the options
    assert not np.allclose(t[0, :, :16], t[1, :, :16])
    assert c.identity != build("photo_patches", size=16, patch=2).identity
    with pytest.raises(ConfigError, match="patch=5 must divide size=16"):
        build("photo_patches", size=16, patch=5)
    with pytest.raises(DataError, match="photo #0 must be uint8"):
        c.encode([np.zeros((8, 8), np.uint8)])


def test_photo_patches_condition_a_generator_and_its_guidance_role():
    gen = get_registries().generator.build("diffusion", {
        "preset": "tiny", "device": "cpu", "block_out_channels": [8, 16], "norm_num_groups": 4,
        "cross_attention_dim": 16,
        "conditioners": [{"name": "photo_patches", "options": {"size": 16, "patch": 4}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]})
    from c4s_core.config import ComponentSpec

    ph, ddim = photos(2, shape=(32, 32, 3)), ComponentSpec(name="ddim", options={"steps": 3})
    a = gen.sample(ph, ["pencil", "pencil"], sampler=ddim, guidance={"appearance": 2.0}, seed=0)
    b = gen.sample(ph, ["pencil", "pencil"], sampler=ddim, guidance={"appearance": 2.0}, seed=0)
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, b)
