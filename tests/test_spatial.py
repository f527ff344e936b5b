"""Spatial conditions (``photo_map``) and the identity loss of the ``diffusion`` generator."""

from __future__ import annotations

import numpy as np
import pytest
from test_diffusion import synth_pairs
from tinyclip import TINY_CLIP

from c4s_core import get_registries
from c4s_core.cache import condition_shape
from c4s_core.errors import ConfigError

TINY_IR = {"name": "ir_18", "options": {"input_size": 32, "widths": [8, 8, 16, 16], "embedding_dim": 16, "dropout": 0.0}}


def spatial_options(**kw):
    opts = {"preset": "tiny", "device": "cpu", "ema_decay": 0.0, "prediction_type": "v_prediction",
            "conditioners": [{"name": "photo_map", "options": {"size": 32}},
                             {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}
    opts.update(kw)
    return opts


def test_photo_map_is_the_grey_or_rgb_photo_in_minus_one_to_one():
    reg = get_registries().conditioner
    grey, rgb = reg.build("photo_map", {"size": 16}), reg.build("photo_map", {"size": 16, "channels": "rgb"})
    assert (grey.kind, grey.role, condition_shape(grey), condition_shape(rgb)) == ("spatial", "identity", (1, 16, 16), (3, 16, 16))
    photo = np.zeros((32, 32, 3), np.uint8)
    photo[:, 16:] = (255, 0, 0)  # right half pure red
    g, c = grey.encode([photo]).numpy()[0], rgb.encode([photo]).numpy()[0]
    assert np.allclose(g[0, :, :8], -1.0) and np.allclose(c[:, :, :8], -1.0)
    assert np.allclose(c[0, :, 8:], 1.0) and np.allclose(c[1:, :, 8:], -1.0)
    # luminance of pure red (PIL: 299/1000 of 255 = 76) mapped to [-1, 1]
    assert np.allclose(g[0, :, 8:], 76 / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(Exception, match="photo_map"):
        grey.encode([np.zeros((4, 4), np.float32)])


def test_spatial_conditions_widen_the_unet_input_and_steer_samples(tmp_path):
    gen = get_registries().generator.build("diffusion", spatial_options())
    assert gen.unet_config["in_channels"] == 4 and gen.roles == ["identity", "style"]
    photos, sketches, styles = synth_pairs()
    cond = gen.encode_conditions(photos, styles)
    assert cond[0].shape == (8, 1, 32, 32) and cond[1].ndim == 3
    gen.fit(sketches, cond, out=tmp_path / "g", steps=3, batch_size=4, lr=1e-3, checkpoint_every=0, progress=False)
    a = gen.sample(photos[:2], ["line", "line"], sampler="ddim", seed=0, output="float")
    b = gen.sample(photos[2:4], ["line", "line"], sampler="ddim", seed=0, output="float")
    assert np.abs(a - b).max() > 1e-3  # other photos, same noise: other samples
    # identity guidance 0: the photo map is replaced by its learned null value, so the photo no longer matters
    a0 = gen.sample(photos[:2], ["line", "line"], sampler="ddim", seed=0, guidance={"identity": 0.0}, output="float")
    b0 = gen.sample(photos[2:4], ["line", "line"], sampler="ddim", seed=0, guidance={"identity": 0.0}, output="float")
    assert np.abs(a0 - b0).max() < 1e-5
    # batch composition does not change a sample (per-image generators; maps are per-row)
    one = gen.sample(photos[1:2], ["line"], sampler="ddim", seed=0, seeds=[7], output="float")
    two = gen.sample(photos[:2], ["line", "line"], sampler="ddim", seed=0, seeds=[3, 7], output="float")
    assert np.abs(one[0] - two[1]).max() < 1e-4


def test_spatial_generator_round_trips_and_refuses_a_wrong_map(tmp_path):
    from c4s_plugins.diffusion import DiffusionGenerator

    from c4s_core.errors import DataError

    gen = get_registries().generator.build("diffusion", spatial_options())
    photos, sketches, styles = synth_pairs()
    cond = gen.encode_conditions(photos, styles)
    with pytest.raises(DataError, match="photo_map"):
        gen.fit(sketches, [cond[0][:, :, :16, :16], cond[1]], out=tmp_path / "bad", steps=1, batch_size=4,
                progress=False)
    gen.fit(sketches, cond, out=tmp_path / "g", steps=2, batch_size=4, checkpoint_every=0, progress=False)
    gen.save_pretrained(tmp_path / "saved")
    back = DiffusionGenerator.from_pretrained(tmp_path / "saved")
    rec = back.conditioner_records()[0]
    assert (rec["kind"], rec["shape"]) == ("spatial", [1, 32, 32])
    x = gen.sample(photos[:2], styles[:2], sampler="ddim", seed=1, guidance={"identity": 2.0, "style": 1.0})
    y = back.sample(photos[:2], styles[:2], sampler="ddim", seed=1, guidance={"identity": 2.0, "style": 1.0})
    assert np.array_equal(x, y)


def test_only_spatial_conditions_still_cross_attend_to_one_learned_token(tmp_path):
    gen = get_registries().generator.build(
        "diffusion", spatial_options(conditioners=[{"name": "photo_map", "options": {"size": 16, "channels": "rgb"}}]))
    assert gen.unet_config["in_channels"] == 6 and gen.model.const is not None
    photos, sketches, styles = synth_pairs()
    gen.fit(sketches, gen.encode_conditions(photos, None), out=tmp_path, steps=2, batch_size=4, progress=False,
            checkpoint_every=0)
    assert gen.model.const.grad is not None  # it takes part, so DDP sees every parameter used


def test_token_only_generators_keep_their_parameter_names():
    """Folders saved before spatial conditions load unchanged: no new parameters without them."""
    gen = get_registries().generator.build("diffusion", spatial_options(conditioners=[
        {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]))
    names = {k.split(".")[0] for k in gen.model.state_dict()}
    assert names == {"unet", "proj", "type_emb", "null"} and gen.unet_config["in_channels"] == 3


def _loss_parts(gen, x0, cond, seed):
    import torch

    t = [torch.from_numpy(c) for c in cond]
    g = torch.Generator().manual_seed(seed)
    return gen.loss(x0, t, g)


def test_identity_loss_adds_the_weighted_cosine_term_on_low_noise_rows():
    import torch
    import torch.nn.functional as F
    from c4s_plugins._diffusion_model import to_tensor

    photos, sketches, styles = synth_pairs()
    plain = get_registries().generator.build("diffusion", spatial_options())
    il = get_registries().generator.build("diffusion", spatial_options(
        identity_loss={"weight": 2.0, "max_timestep": 600, "backbone": TINY_IR}))
    il.model.load_state_dict(plain.model.state_dict())
    cond = plain.encode_conditions(photos, styles)
    x0 = to_tensor(sketches)
    base, total = _loss_parts(plain, x0, cond, 5), _loss_parts(il, x0, cond, 5)
    # the term, recomputed by hand from the same draws (noise, t, keep come from one generator, in that order)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (len(x0),), generator=g)
    keep = il.drop_mask(len(x0), g)
    sched = il.train_scheduler()
    xt = sched.add_noise(x0, noise, t)
    with torch.no_grad():
        v = il.model(xt, t, [torch.from_numpy(c) for c in cond], keep)
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat = ab.sqrt() * xt - (1 - ab).sqrt() * v
    net = il._id_net

    def emb(x):
        x01 = F.interpolate(((x.clamp(-1, 1) + 1) / 2), size=(32, 32), mode="bilinear", align_corners=False)
        return F.normalize(net.forward(net.to_input(x01)), dim=1)

    low = t < 600
    assert 0 < int(low.sum()) < len(x0)  # the check covers both kinds of rows
    term = (1 - (emb(x0_hat[low]) * emb(x0[low])).sum(1)).sum() / len(x0)
    assert float(total - base) == pytest.approx(2.0 * float(term), rel=1e-4, abs=1e-6)
    # gradients reach the UNet through the term; the recogniser stays frozen
    total.backward()
    assert all(p.grad is None for p in net.model.parameters())
    assert il.model.unet.conv_in.weight.grad is not None


def test_identity_loss_is_recorded_and_needs_a_torch_backbone(tmp_path):
    photos, sketches, styles = synth_pairs()
    gen = get_registries().generator.build("diffusion", spatial_options(
        identity_loss={"weight": 0.5, "max_timestep": 1000, "backbone": TINY_IR}))
    r = gen.fit(sketches, gen.encode_conditions(photos, styles), out=tmp_path, steps=2, batch_size=4,
                checkpoint_every=0, progress=False)
    assert all(0.0 <= h["identity_loss"] <= 2.0 for h in r["history"])
    bad = get_registries().generator.build("diffusion", spatial_options(
        identity_loss={"backbone": {"name": "hog"}}))
    with pytest.raises(ConfigError, match="identity_loss.backbone 'hog'"):
        bad.fit(sketches, bad.encode_conditions(photos, styles), out=tmp_path / "b", steps=1, batch_size=4,
                progress=False)


def test_identity_loss_refuses_a_recogniser_that_embeds_everyone_alike(tmp_path, monkeypatch):
    import torch

    photos, sketches, styles = synth_pairs()
    gen = get_registries().generator.build("diffusion", spatial_options(
        identity_loss={"weight": 0.5, "max_timestep": 1000, "backbone": TINY_IR}))
    conds = gen.encode_conditions(photos, styles)
    # one embedding for every face (as the shipped mfn_human nearly gives): spread 0
    same = torch.nn.functional.normalize(torch.ones(1, 8), dim=1)
    monkeypatch.setattr(type(gen), "_identity_embed", lambda self, x: same.expand(len(x), -1))
    with pytest.raises(ConfigError, match=r"embeds the training sketches alike: 1 - mean cosine .* is 0\.0000"):
        gen.fit(sketches, conds, out=tmp_path / "a", steps=1, batch_size=4, checkpoint_every=0, progress=False)
    assert not (tmp_path / "a" / "checkpoints").exists() or not any((tmp_path / "a" / "checkpoints").iterdir())
    gen.config.identity_loss.min_spread = 0.0  # the check is off: it trains
    r = gen.fit(sketches, conds, out=tmp_path / "b", steps=1, batch_size=4, checkpoint_every=0, progress=False)
    assert r["history"][-1]["identity_loss"] == pytest.approx(0.0, abs=1e-6)
