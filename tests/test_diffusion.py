"""The ``diffusion`` generator: config checks, condition dropout, training,
guidance, determinism and save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core import ComponentSpec, get_registries
from c4s_core.errors import C4SError, ConfigError


def tiny_options(**kw):
    opts = {
        "preset": "tiny", "device": "cpu", "ema_decay": 0.9,
        "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}],
    }
    opts.update(kw)
    return opts


def synth_pairs(n=8, size=32):
    ds = get_registries().dataset.build(
        "synthfaces", {"num_identities": n, "size": size, "images_per_identity": 1, "sketches_per_identity": 1,
                       "styles": ["line", "pencil"]})
    photos = [ds[2 * i].image for i in range(n)]
    sketches = np.stack([ds[2 * i + 1].image for i in range(n)])
    styles = [ds[2 * i + 1].style for i in range(n)]
    return photos, sketches, styles


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A tiny generator trained a few steps (shared by the tests of this module)."""
    from c4s_core.plugins import set_registries

    set_registries(None)
    gen = get_registries().generator.build("diffusion", tiny_options())
    photos, sketches, styles = synth_pairs()
    tokens = gen.encode_conditions(photos, styles)
    gen.fit(sketches, tokens, out=tmp_path_factory.mktemp("tinygen"), steps=4, batch_size=4, lr=1e-3,
            checkpoint_every=0, progress=False)
    return gen, photos, styles


def test_config_checks():
    reg = get_registries().generator
    with pytest.raises(ConfigError, match="norm_num_groups"):
        reg.config("diffusion", {"preset": "tiny", "block_out_channels": [12, 32]})
    with pytest.raises(ConfigError, match="divisible"):
        reg.config("diffusion", {"preset": "tiny", "sample_size": 34, "block_out_channels": [16, 32, 32],
                                 "attention_levels": [False, True, True]})
    with pytest.raises(ConfigError, match="not a role"):
        reg.config("diffusion", {"drop_rates": {"identiy": 0.1}})
    with pytest.raises(ConfigError, match="attention_levels"):
        reg.config("diffusion", {"preset": "tiny", "attention_levels": [True]})


def test_condition_dropout_rates():
    import torch

    gen = get_registries().generator.build(
        "diffusion", tiny_options(drop_rates={"appearance": 0.3, "style": 0.2}, drop_all=0.1, ema_decay=0))
    assert gen.roles == ["appearance", "style"]
    n = 40_000
    keep = gen.drop_mask(n, torch.Generator().manual_seed(0)).numpy()
    app, sty = keep[:, 0], keep[:, 1]
    assert abs(app.mean() - 0.7 * 0.9) < 0.01
    assert abs(sty.mean() - 0.8 * 0.9) < 0.01
    none = (~app & ~sty).mean()  # unconditional batches: drop_all + both dropped independently
    assert abs(none - (0.1 + 0.9 * 0.3 * 0.2)) < 0.01
    # roles drop independently outside drop_all
    both_kept = (app & sty).mean()
    assert abs(both_kept - 0.9 * 0.7 * 0.8) < 0.01


def test_null_tokens_replace_dropped_conditions():
    import torch

    gen = get_registries().generator.build("diffusion", tiny_options(ema_decay=0))
    tok = [torch.randn(2, 1, 16), torch.randn(2, 1, 16)]
    keep = torch.tensor([[True, False], [False, True]])
    ctx = gen.model.context(tok, keep)
    assert ctx.shape == (2, 2, 32)
    assert torch.allclose(ctx[0, 1], gen.model.null[1][0]) and torch.allclose(ctx[1, 0], gen.model.null[0][0])
    assert not torch.allclose(ctx[0, 0], gen.model.null[0][0])


def test_tiny_unet_loss_falls_on_synthfaces(tmp_path):
    gen = get_registries().generator.build("diffusion", tiny_options(ema_decay=0, drop_all=0.0,
                                                                     drop_rates={}))
    photos, sketches, styles = synth_pairs(8)
    tokens = gen.encode_conditions(photos, styles)
    before = gen.validation_loss(sketches, tokens)
    res = gen.fit(sketches, tokens, out=tmp_path, steps=12, batch_size=4, lr=3e-3, checkpoint_every=0,
                  progress=False)
    after = gen.validation_loss(sketches, tokens)
    losses = [h["loss"] for h in res["history"]]
    assert after < 0.85 * before, (before, after)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_sampling_is_deterministic_across_batch_sizes(tiny_generator):
    gen, photos, styles = tiny_generator
    spec = ComponentSpec(name="ddpm", options={"steps": 5})  # stochastic steps: per-image generators matter
    a = gen.sample(photos[:3], styles[:3], sampler=spec, seed=7, num_per_input=2, batch_size=6,
                   guidance={"style": 2.0})
    b = gen.sample(photos[:3], styles[:3], sampler=spec, seed=7, num_per_input=2, batch_size=1,
                   guidance={"style": 2.0})
    assert a.shape == (6, 32, 32, 3)
    assert np.abs(a.astype(int) - b).max() <= 1
    c = gen.sample(photos[:3], styles[:3], sampler=spec, seed=8, num_per_input=2, batch_size=6,
                   guidance={"style": 2.0})
    assert np.abs(a.astype(int) - c).mean() > 1  # another seed, other images
    assert np.abs(a[0].astype(int) - a[1]).mean() > 1  # copies of one input differ


def test_guidance_formula(tiny_generator):
    gen, photos, styles = tiny_generator
    spec = ComponentSpec(name="ddim", options={"steps": 4})
    plain = gen.sample(photos[:2], styles[:2], sampler=spec, seed=3)
    # one guided role at scale 1: eps_u + 1 * (eps_style - eps_u) = eps with every condition kept
    one = gen.sample(photos[:2], styles[:2], sampler=spec, seed=3, guidance={"style": 1.0})
    assert np.abs(plain.astype(int) - one).max() <= 1
    # scale 0 on both roles: the unconditional model
    unc = gen.sample(photos[:2], styles[:2], sampler=spec, seed=3, guidance={"style": 0.0, "appearance": 0.0})
    strong = gen.sample(photos[:2], styles[:2], sampler=spec, seed=3, guidance={"style": 4.0, "appearance": 4.0})
    assert np.abs(unc.astype(int) - strong).mean() > 0.5
    with pytest.raises(ConfigError, match="role"):
        gen.sample(photos[:1], styles[:1], sampler=spec, guidance={"identity": 2.0})


def test_nested_guidance_guides_each_role_given_the_ones_before(tiny_generator):
    gen, photos, styles = tiny_generator
    spec = ComponentSpec(name="ddim", options={"steps": 4})

    def draw(guidance, mode="compositional"):
        return gen.sample(photos[:2], styles[:2], sampler=spec, seed=3, guidance=guidance, guidance_mode=mode,
                          output="float")

    plain = gen.sample(photos[:2], styles[:2], sampler=spec, seed=3, output="float")
    both = {"appearance": 1.0, "style": 1.0}
    # scales 1 telescope to the plain conditional: u + (a - u) + (a,s - a) = (a,s)
    assert np.abs(draw(both, "nested") - plain).max() < 1e-4
    # the compositional form does not: u + (a - u) + (s - u) != (a,s)
    assert np.abs(draw(both) - plain).mean() > 1e-3
    # last scale 0: the first role's branch alone, i.e. the style dropped and appearance kept
    assert np.abs(draw({"appearance": 1.0, "style": 0.0}, "nested") - draw({"style": 0.0})).max() < 1e-4
    # the order matters
    a_s = draw({"appearance": 2.0, "style": 3.0}, "nested")
    s_a = draw({"style": 3.0, "appearance": 2.0}, "nested")
    assert np.abs(a_s - s_a).mean() > 1e-3
    with pytest.raises(ConfigError, match="guidance_mode"):
        draw(both, "chained")


def test_save_load_round_trip_gives_identical_outputs(tiny_generator, tmp_path):
    from c4s_plugins.diffusion import DiffusionGenerator

    gen, photos, styles = tiny_generator
    gen.meta["dataset"] = {"hash": "abc123"}
    gen.save_pretrained(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "generator.json").read_text())
    assert [c["name"] for c in meta["conditioners"]] == ["clip_image", "clip_text"]
    assert all("random-seed-0" in c["identity"] for c in meta["conditioners"])
    assert meta["noise_schedule"]["num_train_timesteps"] == 1000 and meta["dataset"]["hash"] == "abc123"
    assert {"c4s", "diffusers", "torch"} <= set(meta["versions"])
    assert (tmp_path / "g" / "model.safetensors").is_file() and (tmp_path / "g" / "ema.safetensors").is_file()
    back = DiffusionGenerator.from_pretrained(tmp_path / "g")
    spec = ComponentSpec(name="euler_ancestral", options={"steps": 4})
    for use_ema in (True, False):
        a = gen.sample(photos[:2], styles[:2], sampler=spec, seed=5, use_ema=use_ema, guidance={"style": 2.0})
        b = back.sample(photos[:2], styles[:2], sampler=spec, seed=5, use_ema=use_ema, guidance={"style": 2.0})
        assert np.array_equal(a, b)
    # EMA and raw weights differ after training, and both came back
    import torch

    params = dict(back.model.named_parameters())
    assert any(not torch.equal(back.ema.shadow[k], params[k].float()) for k in back.ema.shadow)
    assert all(torch.equal(back.ema.shadow[k], gen.ema.shadow[k]) for k in gen.ema.shadow)
    # a conditioner that changed since training is refused
    meta["conditioners"][0]["identity"] = "something else"
    (tmp_path / "g" / "generator.json").write_text(json.dumps(meta))
    with pytest.raises(C4SError, match="differs"):
        DiffusionGenerator.from_pretrained(tmp_path / "g")


def test_strength_starts_from_the_noised_photo(tiny_generator):
    """SDEdit start: with an oracle denoiser that knows the clean image, DDIM
    (deterministic) returns the grey photo; the first model input is the photo
    noised to the first kept timestep with the image's own seeded noise, and only
    round(steps * strength) steps run."""
    import torch
    from c4s_plugins.diffusion import _seed_int
    from diffusers import DDPMScheduler

    gen, photos, styles = tiny_generator
    init = gen.init_images(photos[:2])
    assert init.shape == (2, 3, 32, 32) and torch.equal(init[:, 0], init[:, 2])  # grey
    abar = DDPMScheduler.from_config(dict(gen.noise_config)).alphas_cumprod
    assert gen.noise_config["prediction_type"] == "epsilon"
    seen = []

    class Oracle(torch.nn.Module):
        def forward(self, x, t, conds, keep):
            seen.append((int(t[0]), x.clone()))
            a = abar[t].view(-1, 1, 1, 1)
            return (x - a.sqrt() * init.repeat(x.shape[0] // 2, 1, 1, 1)) / (1 - a).sqrt()

    real = gen.model
    gen.model = Oracle()
    try:
        spec = ComponentSpec(name="ddim", options={"steps": 10})
        out = gen.sample(photos[:2], styles[:2], sampler=spec, seed=5, use_ema=False, output="float", strength=0.3)
    finally:
        gen.model = real
    assert len(seen) == 3  # 10 steps, the first 7 skipped
    sch = gen.make_scheduler(get_registries().sampler.build("ddim", {"steps": 10}))
    t0 = sch.timesteps[7]
    assert seen[0][0] == int(t0)
    noise = torch.cat([torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(_seed_int(5, i, 0)))
                       for i in range(2)])
    a0 = abar[t0]
    expected = a0.sqrt() * init + (1 - a0).sqrt() * noise
    assert torch.allclose(seen[0][1], expected, atol=1e-5)
    assert np.abs(out - init.numpy()).max() < 1e-4
    with pytest.raises(ConfigError, match="strength"):
        gen.sample(photos[:1], styles[:1], sampler=spec, strength=0.0)
    with pytest.raises(ConfigError, match="photos"):
        gen.sample(None, styles[:1], sampler=spec, strength=0.5)
