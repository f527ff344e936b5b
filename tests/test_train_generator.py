"""The train-generator pipeline: tiny runs on synthfaces, outputs, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core.errors import DataError
from c4s_core.pipelines import get_pipeline


def config(out, **kw):
    tg = get_pipeline("train-generator")
    base = dict(
        dataset={"name": "synthfaces", "options": {"num_identities": 10, "size": 32, "sketches_per_identity": 2,
                                                   "styles": ["line", "pencil"]}},
        generator={"name": "diffusion", "options": {
            "preset": "tiny", "device": "cpu", "ema_decay": 0.9,
            "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                             {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}},
        steps=6, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=2, sample_every=3, val_every=3,
        grid_identities=2, condition_size=32, grid_sampler={"name": "ddim", "options": {"steps": 2}},
        out=out,
    )
    base.update(kw)
    return tg, tg.Config(**base)


def test_pipeline_writes_a_loadable_generator(tmp_path):
    from c4s_plugins.diffusion import DiffusionGenerator

    tg, cfg = config(tmp_path / "run", procedural_styles=["xdog"])
    s = tg.run(cfg, progress=False)
    out = tmp_path / "run"
    assert s["step"] == 6 and not s["stopped_early"]
    assert s["dataset"]["pairs"] == 10 * 2 + 10  # two sketches per identity + one xdog rendering
    assert s["dataset"]["val_identities"] == 1 and "xdog" in s["dataset"]["styles"]
    assert s["val_loss"] is not None and np.isfinite(s["val_loss"])
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_0000003.png", "step_0000006.png"]
    assert len(list((out / "checkpoints").glob("step_*"))) == 2  # keep_checkpoints
    hist = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist] == list(range(1, 7))
    gen = DiffusionGenerator.from_pretrained(out / "generator")
    meta = json.loads((out / "generator" / "generator.json").read_text())
    assert meta["dataset"]["hash"] == s["dataset"]["hash"] and meta["step"] == 6
    img = gen.sample([np.zeros((32, 32, 3), np.uint8)], ["pencil"], sampler="euler", seed=0)
    assert img.shape == (1, 32, 32, 3)
    # the embedding cache is filled: a second run encodes nothing new
    n_files = len(list((out / "cache").rglob("*.npy")))
    assert n_files > 0


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    from safetensors.torch import load_file

    tg, straight = config(tmp_path / "a", sample_every=0, val_every=0, grid_identities=0)
    tg.run(straight, progress=False)
    _, first = config(tmp_path / "b", sample_every=0, val_every=0, grid_identities=0, stop_after=3)
    s1 = tg.run(first, progress=False)
    assert s1["stopped_early"] and s1["step"] == 3 and not (tmp_path / "b" / "generator").exists()
    _, second = config(tmp_path / "b", sample_every=0, val_every=0, grid_identities=0, resume=True)
    s2 = tg.run(second, progress=False)
    assert s2["step"] == 6 and s2["steps_run"] == 3
    for f in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "generator" / f))
        b = load_file(str(tmp_path / "b" / "generator" / f))
        assert a.keys() == b.keys()
        for k in a:
            assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6), k
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert np.allclose([h["loss"] for h in ha], [h["loss"] for h in hb])


def test_unpaired_dataset_is_a_clear_error(tmp_path):
    tg, cfg = config(tmp_path / "c", dataset={"name": "synthfaces", "options": {
        "num_identities": 3, "size": 32, "sketches_per_identity": 0}})
    with pytest.raises(DataError, match="no photo/sketch pairs"):
        tg.run(cfg, progress=False)


def test_cli_lists_resume_flag():
    from click.testing import CliRunner

    from c4s_core.cli import cli

    res = CliRunner().invoke(cli, ["train-generator", "--help"])
    assert res.exit_code == 0, res.output
    assert "--resume" in res.output
