"""The train-matcher pipeline: learning, exact resume, matcher folders, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import c4s_core
from c4s_core.config import validate
from c4s_core.errors import ConfigError, DataError
from c4s_core.pipelines import train_matcher as tm

torch = pytest.importorskip("torch")


def cfg(out, **kw):
    base = {
        "data": [{"dataset": {"name": "synthfaces", "options": {
            "num_identities": 12, "size": 32, "images_per_identity": 2, "sketches_per_identity": 2}}}],
        "backbone": {"name": "ir_18", "options": {"widths": [8, 8, 16, 16], "input_size": 16, "embedding_dim": 16}},
        "epochs": 2, "batch_size": 16, "val_fraction": 0.25, "device": "cpu", "threads": 1, "out": str(out),
    }
    base.update(kw)
    return validate(tm.Config, base, "test config")


def test_default_config_is_valid():
    c = tm.Config()
    assert c.backbone.name == "ir_18" and c.head.name == "adaface" and c.data[0].dataset.name == "synthfaces"
    reg = c4s_core.get_registries()
    reg.backbone.config(c.backbone.name, c.backbone.options)
    reg.head.config(c.head.name, c.head.options)


def test_learns_well_above_chance(tmp_path):
    c = cfg(tmp_path / "run", epochs=16, batch_size=32,
            data=[{"dataset": {"name": "synthfaces", "options": {
                "num_identities": 40, "size": 32, "images_per_identity": 3, "sketches_per_identity": 3}}}],
            backbone={"name": "ir_18", "options": {"widths": [8, 16, 16, 32], "input_size": 32, "embedding_dim": 64}})
    s = tm.run(c, progress=False)
    assert s["chance_rank1"] == pytest.approx(0.1) and s["val_probes"] == 30 and s["classes"] == 30
    assert s["best_val_rank1"] >= 3 * s["chance_rank1"], s["history"]
    assert s["history"][-1]["loss"] < s["history"][0]["loss"]
    best = json.loads((tmp_path / "run" / "best" / "matcher.json").read_text())
    assert best["val_rank1"] == s["best_val_rank1"] and best["epoch"] == s["best_epoch"]
    assert best["color_order"] == "BGR" and best["input_size"] == [32, 32] and best["data_hash"] == s["data_hash"]
    # the trained matcher through the registry, as evaluate uses it
    m = c4s_core.get_registries().backbone.build("matcher", {"path": str(tmp_path / "run"), "device": "cpu"})
    ds = c4s_core.get_registries().dataset.build("synthfaces", {"num_identities": 3, "size": 32})
    e = m.embed([ds[i].image for i in range(len(ds))])
    assert e.shape == (12, 64) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = tm.run(cfg(tmp_path / "a"), progress=False)
    first = tm.run(cfg(tmp_path / "b", stop_after=1), progress=False)
    assert first["epochs_done"] == 1 and not first["finished"]
    resumed = tm.run(cfg(tmp_path / "b", resume=True), progress=False)
    assert resumed["epochs_done"] == 2 and resumed["finished"]
    wa, wb = _weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last")
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    la = [h["loss"] for h in straight["history"]]
    lb = [h["loss"] for h in resumed["history"]]
    assert lb == pytest.approx(la, rel=1e-5)
    from c4s_core.training import load_state

    sa, sb = load_state(tmp_path / "a" / "last", "state"), load_state(tmp_path / "b" / "last", "state")
    torch.testing.assert_close(sa["head"]["kernel"], sb["head"]["kernel"])
    assert sa["step"] == sb["step"] and sa["epoch"] == 2


def test_refusals(tmp_path):
    with pytest.raises(DataError, match="no checkpoint"):
        tm.run(cfg(tmp_path / "r", resume=True), progress=False)
    tm.run(cfg(tmp_path / "r", epochs=1), progress=False)
    with pytest.raises(DataError, match="--resume"):
        tm.run(cfg(tmp_path / "r", epochs=1), progress=False)
    with pytest.raises(ConfigError, match="lr"):
        tm.run(cfg(tmp_path / "r", epochs=2, lr=0.5, resume=True), progress=False)
    with pytest.raises(DataError, match="val_fraction"):
        tm.run(cfg(tmp_path / "v", val_fraction=0.99), progress=False)
    with pytest.raises(ConfigError, match="not trainable"):
        tm.run(cfg(tmp_path / "h", backbone={"name": "hog", "options": {"size": 32}}), progress=False)


def test_sources_ratio_and_modality(tmp_path):
    c = cfg(tmp_path / "m", epochs=1, val_fraction=0.0, data=[
        {"dataset": {"name": "synthfaces", "options": {"num_identities": 6, "size": 32}}, "modality": "photo"},
        {"dataset": {"name": "synthfaces", "options": {"num_identities": 6, "size": 32}}, "modality": "sketch",
         "ratio": 0.5},
    ])
    s = tm.run(c, progress=False)
    assert s["train_images"] == 24 and s["classes"] == 6 and s["val_probes"] == 0
    assert s["history"][0]["val_rank1"] is None
    idx = tm._epoch_indices(np.arange(24), np.array([0] * 12 + [1] * 12), [1.0, 0.5], 0, 0)
    assert len(idx) == 18 and len(set(idx.tolist())) == 18


def test_training_state_round_trip(tmp_path):
    from c4s_core.training import load_state, rng_state, save_state, set_rng_state

    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"opt": opt.state_dict(), "rng": rng_state(), "t": (1, "a"), "x": [np.float32(2.5)]}
    save_state(tmp_path, "s", state)
    back = load_state(tmp_path, "s")
    torch.testing.assert_close(back["opt"]["state"][0]["momentum_buffer"], torch.ones(3))
    assert back["t"] == (1, "a") and back["x"] == [2.5]
    a = torch.rand(3)
    set_rng_state(back["rng"])
    torch.testing.assert_close(torch.rand(3), a)
    opt.load_state_dict(back["opt"])
