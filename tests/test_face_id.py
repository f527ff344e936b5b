"""The r29_id conditioner: dlib ResNet-29 identity tokens (global + feature map)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import c4s_core
from c4s_core import weights as store

torch = pytest.importorskip("torch")
REAL_HOME = store.home()  # where `c4s weights fetch` put the real weights, before conftest's tmp home

CPU = {"pretrained": False, "device": "cpu"}


def build(**opts):
    return c4s_core.get_registries().conditioner.build("r29_id", {**CPU, **opts})


def photos(n=3, size=112, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("opts, n_tok, dim", [
    ({"tokens": "global"}, 1, 128),
    ({"tokens": "spatial"}, 4, 256 + 16),
    ({"tokens": "spatial", "position_code": False}, 4, 256),
    ({}, 1 + 4, 128 + 256 + 16),
    ({"map": "penultimate", "freqs": 2}, 1 + 16, 128 + 256 + 8),
])
def test_token_shapes_match_dim_and_num_tokens(opts, n_tok, dim):
    from c4s_plugins.face_id import grid_position_code

    c = build(**opts)
    assert (c.num_tokens, c.dim, c.role, c.uses) == (n_tok, dim, "identity", "photo")
    t = c.encode(photos(3, 112) + photos(1, 80, seed=1))  # any size in; resized onto the chip
    assert t.dtype == torch.float32 and tuple(t.shape) == (4, n_tok, dim)
    assert tuple(c.encode([]).shape) == (0, n_tok, dim)
    t = t.numpy()
    g = 128 if c.config.tokens != "spatial" else 0
    if g:  # global token: unit descriptor in its own block, zeros elsewhere
        np.testing.assert_allclose(np.linalg.norm(t[:, 0, :128], axis=1), 1.0, atol=1e-5)
        assert not t[:, 0, 128:].any()
    if c.config.tokens != "global":
        sp = t[:, 1 if g else 0:]
        assert not sp[..., :g].any()
        np.testing.assert_allclose(np.linalg.norm(sp[..., g:g + 256], axis=2), 1.0, atol=1e-4)
        if c.config.position_code:
            np.testing.assert_array_equal(sp[0, :, g + 256:], grid_position_code(*c.map_hw, c.config.freqs))


def test_position_code_is_photo_patches_code():
    # one formula for both conditioners: a 2x2 grid with 4 frequencies
    pp = c4s_core.get_registries().conditioner.build("photo_patches", {"size": 8, "patch": 4, "freqs": 4})
    from c4s_plugins.face_id import grid_position_code

    np.testing.assert_allclose(grid_position_code(2, 2, 4), pp._pos, atol=1e-6)


def test_cached_equals_uncached_and_second_call_hits(tmp_path):
    ph = photos(5)
    plain = build().encode(ph).numpy()
    c = build(cache_dir=str(tmp_path / "emb"))
    first = c.encode(ph).numpy()
    calls = c.forward_calls
    assert calls >= 1 and len(list((tmp_path / "emb").rglob("*.npy"))) == 5
    second = c.encode(ph).numpy()
    assert c.forward_calls == calls  # every photo came from the cache
    np.testing.assert_allclose(first, plain, atol=1e-6)
    np.testing.assert_array_equal(second, first)
    # a new photo alone is computed; a changed option is a different identity (no stale tokens)
    c.encode(ph + photos(1, seed=9))
    assert c.forward_calls == calls + 1
    assert build(tokens="global").identity != c.identity
    assert build(seed=1).identity != c.identity
    assert build(device="cpu", batch_size=2).identity == build().identity


def test_different_photos_give_different_tokens():
    c = build()
    a, b = c.encode(photos(2, seed=3)).numpy()
    assert not np.allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(c.encode(photos(2, seed=3)).numpy()[0], a, atol=1e-6)  # deterministic


def test_weights_file_option(tmp_path):
    from safetensors.torch import save_file

    c = build()
    sd = {f"backbone.{k}": v.contiguous() for k, v in c.backbone.model.state_dict().items()}
    save_file(sd, str(tmp_path / "ft.safetensors"))
    d = build(weights=str(tmp_path / "ft.safetensors"), seed=5)
    np.testing.assert_allclose(d.encode(photos(2)).numpy(), c.encode(photos(2)).numpy(), atol=1e-6)
    assert "file-" in d.identity and d.identity != c.identity
    with pytest.raises(c4s_core.errors.DataError, match="weights file not found"):
        build(weights=str(tmp_path / "nope.safetensors"))


def test_missing_weights_name_the_fetch_command():
    # conftest points C4S_HOME at an empty folder
    with pytest.raises(store.WeightsError, match="c4s weights fetch face_api_resnet"):
        c4s_core.get_registries().conditioner.build("r29_id", {"device": "cpu"})


def test_generator_trains_with_it_and_reloads(tmp_path):
    from c4s_plugins.diffusion import DiffusionGenerator

    from c4s_core.pipelines import get_pipeline

    tg = get_pipeline("train-generator")
    cond = {"name": "r29_id", "options": {**CPU, "tokens": "global+spatial"}}
    cfg = tg.Config(
        dataset={"name": "synthfaces", "options": {"num_identities": 6, "size": 32, "sketches_per_identity": 1,
                                                   "styles": ["pencil"]}},
        generator={"name": "diffusion", "options": {"preset": "tiny", "device": "cpu", "ema_decay": 0.9,
                                                    "conditioners": [cond]}},
        steps=2, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=0, sample_every=0, val_every=0,
        grid_identities=0, condition_size=32, out=tmp_path / "run")
    s = tg.run(cfg, progress=False)
    assert s["step"] == 2
    meta = json.loads((tmp_path / "run" / "generator" / "generator.json").read_text())
    (rec,) = meta["conditioners"]
    built = build(tokens="global+spatial")
    assert (rec["name"], rec["role"], rec["num_tokens"], rec["dim"]) == ("r29_id", "identity", 5, 400)
    assert rec["identity"] == built.identity
    gen = DiffusionGenerator.from_pretrained(tmp_path / "run" / "generator")  # identity checked on load
    assert gen.cond_names == ["r29_id"] and gen.roles == ["identity"]
    ph = photos(1, 32)
    np.testing.assert_allclose(gen.conditioners[0].encode(ph).numpy(), built.encode(ph).numpy(), atol=1e-6)
    img = gen.sample(ph, ["pencil"], sampler="euler", seed=0)
    assert img.shape == (1, 32, 32, 3)


def test_real_weights_genuine_closer_than_impostors(cufs, monkeypatch, capsys):
    """CUFS photo vs the same person's sketch, both aligned on the ArcFace
    template at 112 px as the generator gets them: the global token of the
    genuine pair is closer (cosine) than the impostors', on average."""
    pytest.importorskip("dlib")
    if not (REAL_HOME / "weights" / "face_api_resnet" / "source.json").is_file():
        pytest.skip(f"face_api_resnet is not fetched in {REAL_HOME} (c4s weights fetch face_api_resnet)")
    monkeypatch.setenv("C4S_HOME", str(REAL_HOME))
    from c4s_core.data.io import load_image

    stems = sorted(p.name for p in (cufs / "photos").iterdir() if (cufs / "sketches" / p.name).is_file())[:60]
    assert len(stems) >= 20
    regs = c4s_core.get_registries()
    al = regs.aligner.build("dlib", {"template": "arcface", "size": 112, "cnn_fallback": False})
    P = [r.image for r in al.align([load_image(cufs / "photos" / s) for s in stems])]
    S = [r.image for r in al.align([load_image(cufs / "sketches" / s) for s in stems])]
    c = regs.conditioner.build("r29_id", {"device": "cpu"})
    tp, ts = c.encode(P).numpy(), c.encode(S).numpy()
    assert tp.shape == (len(stems), 5, 400)
    sim = tp[:, 0, :128] @ ts[:, 0, :128].T
    n = len(stems)
    gen = np.diag(sim)
    imp_rows = (sim.sum(1) - gen) / (n - 1)  # each photo's mean impostor cosine
    imp = sim[~np.eye(n, dtype=bool)]
    rank1 = float((sim.argmax(1) == np.arange(n)).mean())
    with capsys.disabled():
        print(f"\nr29_id global token on {n} CUFS pairs: genuine {gen.mean():.3f} +- {gen.std():.3f}, "
              f"impostor {imp.mean():.3f} +- {imp.std():.3f}, genuine > own mean impostor for "
              f"{(gen > imp_rows).mean():.3f} of photos, rank-1 photo->sketch {rank1:.3f}")
    assert gen.mean() > imp.mean() + 0.03
    assert (gen > imp_rows).mean() >= 0.9
    # realign (dlib's own chip from dlib's 5 points) finds every face on these crops
    r = regs.conditioner.build("r29_id", {"device": "cpu", "tokens": "global", "realign": True})
    r.encode(P[:4])
    assert r.last_no_face == 0
