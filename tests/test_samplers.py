"""Samplers: diffusers schedulers built from the generator's training schedule."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core import ComponentSpec, get_registries
from c4s_core.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """One tiny checkpoint (trained 3 steps) that every sampler runs on."""
    from c4s_core.plugins import set_registries

    set_registries(None)
    regs = get_registries()
    gen = regs.generator.build("diffusion", {
        "preset": "tiny", "device": "cpu", "ema_decay": 0.9,
        "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]})
    ds = regs.dataset.build("synthfaces", {"num_identities": 4, "size": 32, "images_per_identity": 1,
                                           "sketches_per_identity": 1})
    photos = [ds[2 * i].image for i in range(4)]
    sketches = np.stack([ds[2 * i + 1].image for i in range(4)])
    styles = ["pencil", "charcoal", "pencil", "line"]
    gen.fit(sketches, gen.encode_conditions(photos, styles), out=tmp_path_factory.mktemp("g"), steps=3,
            batch_size=4, lr=1e-3, checkpoint_every=0, progress=False)
    return gen, photos, styles

NAMES = ["ddpm", "ddim", "dpmsolver++", "unipc", "euler", "euler_ancestral"]
TRAIN = {"num_train_timesteps": 200, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
         "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": True}


@pytest.mark.parametrize("name", NAMES)
def test_make_scheduler_uses_the_training_schedule(name):
    s = get_registries().sampler.build(name, {"steps": 7})
    sch = s.make_scheduler(TRAIN)
    assert len(sch.timesteps) == 7
    assert sch.config.num_train_timesteps == 200
    assert sch.config.beta_schedule == "squaredcos_cap_v2"
    assert sch.config.prediction_type == "v_prediction"
    assert max(int(t) for t in sch.timesteps) < 200
    # a bare int is num_train_timesteps (the example plugin's contract)
    assert s.make_scheduler(50).config.num_train_timesteps == 50
    with pytest.raises(ConfigError, match="exceeds"):
        get_registries().sampler.build(name, {"steps": 300}).make_scheduler(TRAIN)


def test_sampler_specific_options():
    reg = get_registries().sampler
    assert reg.build("ddim", {"eta": 0.5}).step_kwargs() == {"eta": 0.5}
    dpm = reg.build("dpmsolver++", {"order": 3, "steps": 5}).make_scheduler(TRAIN)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 3
    assert reg.build("ddpm", {"steps": 5, "variance_type": "fixed_large"}).make_scheduler().config.variance_type == "fixed_large"
    assert reg.build("euler", {"steps": 5, "timestep_spacing": "trailing"}).make_scheduler().config.timestep_spacing == "trailing"
    assert reg.get("dpmpp").name == "dpmsolver++" and reg.get("euler_a").name == "euler_ancestral"
    with pytest.raises(ConfigError):
        reg.build("ddim", {"eta": 2.0})


@pytest.mark.parametrize("name", NAMES)
def test_each_sampler_swaps_on_one_checkpoint(tiny_generator, name):
    gen, photos, styles = tiny_generator
    out = gen.sample(photos[:2], styles[:2], sampler=ComponentSpec(name=name, options={"steps": 4}),
                     guidance={"appearance": 1.5, "style": 2.0}, seed=1)
    assert out.shape == (2, gen.size, gen.size, 3) and out.dtype == np.uint8
    raw = gen.sample(photos[:2], styles[:2], sampler=ComponentSpec(name=name, options={"steps": 4}),
                     guidance={"appearance": 1.5, "style": 2.0}, seed=1, output="float")
    assert raw.shape == (2, 3, gen.size, gen.size) and np.isfinite(raw).all()
    assert np.array_equal(out, np.clip(np.rint((np.clip(raw, -1, 1) + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def test_example_plugin_deis_sampler_works_with_the_generator(tiny_generator, monkeypatch):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "c4s-example-plugin" / "c4s_example_plugin.py"
    spec = importlib.util.spec_from_file_location("c4s_example_plugin_t", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # pydantic resolves annotations through it
    spec.loader.exec_module(mod)
    gen, photos, styles = tiny_generator
    deis = mod.DEIS(mod.DEIS.Config(steps=4))
    out = gen.sample(photos[:1], styles[:1], sampler=deis, seed=0)
    assert out.shape == (1, gen.size, gen.size, 3)
    with pytest.raises(ConfigError, match="beta_schedule"):
        gen.sample(photos[:1], styles[:1], sampler=mod.DEIS(mod.DEIS.Config(steps=4, beta_schedule="squaredcos_cap_v2")), seed=0)
