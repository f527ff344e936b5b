"""The ``gan`` (pix2pix) and ``procedural`` baseline generators."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c4s_core import get_registries
from c4s_core.errors import ConfigError
from c4s_core.pipelines import get_pipeline


def pairs(n=8, size=32):
    ds = get_registries().dataset.build(
        "synthfaces", {"num_identities": n, "size": size, "images_per_identity": 1, "sketches_per_identity": 1,
                       "styles": ["line", "pencil"]})
    photos = [ds[2 * i].image for i in range(n)]
    sketches = np.stack([ds[2 * i + 1].image for i in range(n)])
    styles = [("line", "pencil")[i % 2] for i in range(n)]  # labels for the test: both styles present
    return photos, sketches, styles


def test_gan_trains_and_round_trips(tmp_path):
    from c4s_plugins.gan import GanGenerator

    gen = get_registries().generator.build("gan", {"preset": "tiny", "device": "cpu"})
    photos, sketches, styles = pairs()
    res = gen.fit_pairs(photos, sketches, styles, out=tmp_path / "t", steps=30, batch_size=4, lr=2e-3,
                        checkpoint_every=0, progress=False)
    l1 = [h["loss"] for h in res["history"]]
    assert res["step"] == 30 and np.mean(l1[-5:]) < 0.8 * np.mean(l1[:5]), l1
    assert gen.styles == ["line", "pencil"]
    gen.save_pretrained(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "generator.json").read_text())
    assert meta["generator"] == "gan" and meta["styles"] == ["line", "pencil"] and meta["config"]["lambda_l1"] == 100
    back = GanGenerator.from_pretrained(tmp_path / "g")
    a = gen.sample(photos[:3], styles[:3], seed=4, num_per_input=2, batch_size=6)
    b = back.sample(photos[:3], styles[:3], seed=4, num_per_input=2, batch_size=1)
    assert a.shape == (6, 32, 32, 3) and np.array_equal(a, b)  # same weights; batch-independent dropout masks
    assert np.abs(a[0].astype(int) - a[1]).mean() > 0.5  # dropout noise: K samples differ
    c = back.sample(photos[:1], styles[:1], seeds=[123])
    assert np.array_equal(c, back.sample(photos[:1], styles[:1], seeds=[123]))
    with pytest.raises(ConfigError, match="styles"):
        back.sample(photos[:1], ["charcoal"])


def test_train_generator_dispatches_to_gan_then_generate(tmp_path):
    tg = get_pipeline("train-generator")
    cfg = tg.Config(
        dataset={"name": "synthfaces", "options": {"num_identities": 6, "size": 32, "sketches_per_identity": 2,
                                                   "styles": ["line", "pencil"]}},
        generator={"name": "gan", "options": {"preset": "tiny", "device": "cpu"}},
        steps=4, batch_size=2, checkpoint_every=2, sample_every=4, val_every=4, grid_identities=2,
        condition_size=32, out=tmp_path / "run")
    s = tg.run(cfg, progress=False)
    assert s["step"] == 4 and s["val_loss"] is not None and (tmp_path / "run" / "generator" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "samples" / "step_0000004.png").is_file()
    g = get_pipeline("generate")
    out = g.run(g.Config(checkpoint=tmp_path / "run" / "generator", styles=["line", "pencil"], num_per_style=2,
                         dataset={"name": "synthfaces", "options": {"num_identities": 2, "size": 32,
                                                                    "sketches_per_identity": 0}},
                         condition_size=32, similarity=False, out=tmp_path / "gen"), progress=False)
    assert out["generator"] == "gan" and out["complete"] and out["written"] == 8


def test_procedural_jitter_is_seeded():
    gen = get_registries().generator.build("procedural", {"size": 48})
    photos, _, _ = pairs(2, 64)
    a = gen.sample(photos, ["pencil", "line_drawing"], seed=1, num_per_input=3)
    b = gen.sample(photos, ["pencil", "line_drawing"], seed=1, num_per_input=3)
    assert a.shape == (6, 48, 48, 3) and np.array_equal(a, b)
    assert np.abs(a[0].astype(int) - a[1]).mean() > 0.5
    plain = get_registries().generator.build("procedural", {"size": 48, "jitter": 0}).sample(photos[:1], ["pencil"], num_per_input=2)
    assert np.array_equal(plain[0], plain[1])
    with pytest.raises(ConfigError, match="no renderer"):
        gen.sample(photos[:1], ["forensic_composite"])
