"""Trust, issue 16 items 6-7: generator folders and checkpoints record their
files' sha256 and refuse a damaged file, naming it; train-generator --resume
refuses changed settings and a damaged checkpoint; a run without --resume
refuses an old run's checkpoints (they would mix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core import get_registries
from c4s_core.errors import ConfigError, DataError
from c4s_core.pipelines import get_pipeline

STEP2 = "checkpoints/step_0000002"


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def tg_config(out, kind="diffusion", **kw):
    tg = get_pipeline("train-generator")
    gens = {
        "diffusion": {"name": "diffusion", "options": {
            "preset": "tiny", "device": "cpu", "ema_decay": 0.9,
            "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                             {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}},
        "gan": {"name": "gan", "options": {"preset": "tiny", "device": "cpu"}},
    }
    base = dict(
        dataset={"name": "synthfaces", "options": {"num_identities": 6, "size": 32, "sketches_per_identity": 1,
                                                   "styles": ["line", "pencil"]}},
        generator=gens[kind], steps=4, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
        sample_every=0, val_every=0, grid_identities=0, val_fraction=0.0, condition_size=32, out=out,
    )
    base.update(kw)
    return tg, tg.Config(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per generator kind: a run stopped after 2 of 4 steps (checkpoint step_2)."""
    from c4s_core.plugins import set_registries

    root = tmp_path_factory.mktemp("gentrust")
    done = {}
    for kind in ("diffusion", "gan"):
        set_registries(None)
        tg, cfg = tg_config(root / kind, kind, stop_after=2)
        s = tg.run(cfg, progress=False)
        assert s["stopped_early"] and (root / kind / STEP2 / "trainer_state.pt").is_file()
        done[kind] = root / kind
    return done


def copy_run(runs, kind, tmp_path) -> Path:
    run = tmp_path / kind
    shutil.copytree(runs[kind], run)
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 6: generator folders are verified on load -------------------------------------


def test_generator_json_records_every_file_hash(runs):
    import hashlib

    for kind, names in (("diffusion", ["ema.safetensors", "model.safetensors"]),
                        ("gan", ["discriminator.safetensors", "model.safetensors"])):
        ck = runs[kind] / STEP2
        rec = json.loads((ck / "generator.json").read_text())["weights_sha256"]
        assert sorted(rec) == sorted(names + ["history.json", "trainer_state.pt"]), kind
        for name, want in rec.items():
            assert hashlib.sha256((ck / name).read_bytes()).hexdigest() == want, (kind, name)


@pytest.mark.parametrize("name", ["ema.safetensors", "model.safetensors"])
def test_damaged_diffusion_folder_is_refused_by_load_and_generate(runs, tmp_path, name):
    from c4s_plugins.diffusion import DiffusionGenerator

    run = copy_run(runs, "diffusion", tmp_path)
    folder = run / "generator"
    DiffusionGenerator.from_pretrained(run / STEP2).save_pretrained(folder)
    DiffusionGenerator.from_pretrained(folder)  # intact: loads
    flip_byte(folder / name)
    with pytest.raises(DataError, match=rf"generator/{name}.*damaged"):
        DiffusionGenerator.from_pretrained(folder)
    g = get_pipeline("generate")
    cfg = g.Config(checkpoint=folder, styles=["pencil"], num_per_style=1, condition_size=32, similarity=False,
                   dataset={"name": "synthfaces", "options": {"num_identities": 2, "size": 32,
                                                              "sketches_per_identity": 0}},
                   sampler={"name": "ddim", "options": {"steps": 2}}, out=tmp_path / "gen")
    with pytest.raises(DataError, match=rf"generator/{name}.*damaged"):
        g.run(cfg, progress=False)
    assert not list((tmp_path / "gen").rglob("*.png"))


@pytest.mark.parametrize("name", ["model.safetensors", "discriminator.safetensors"])
def test_damaged_gan_folder_is_refused(runs, tmp_path, name):
    from c4s_core.pipelines.generate import load_generator

    run = copy_run(runs, "gan", tmp_path)
    folder = run / STEP2
    assert load_generator(folder).G is not None
    flip_byte(folder / name)
    with pytest.raises(DataError, match=rf"{name}.*damaged"):
        load_generator(folder)


def test_a_listed_file_that_went_missing_is_refused(runs, tmp_path):
    from c4s_plugins.diffusion import DiffusionGenerator

    run = copy_run(runs, "diffusion", tmp_path)
    (run / STEP2 / "ema.safetensors").unlink()  # else the EMA would silently start from the raw weights
    with pytest.raises(DataError, match="ema.safetensors is missing"):
        DiffusionGenerator.from_pretrained(run / STEP2)


def test_folders_from_before_hashes_load_with_a_warning(runs, tmp_path):
    from c4s_plugins.diffusion import DiffusionGenerator
    from c4s_plugins.gan import GanGenerator

    for kind, cls in (("diffusion", DiffusionGenerator), ("gan", GanGenerator)):
        folder = copy_run(runs, kind, tmp_path) / STEP2
        meta = json.loads((folder / "generator.json").read_text())
        del meta["weights_sha256"]
        (folder / "generator.json").write_text(json.dumps(meta))
        with pytest.warns(UserWarning, match="no content hashes"):
            cls.from_pretrained(folder)


# -- item 7: train-generator --resume -----------------------------------------------------


@pytest.mark.parametrize("change, field", [
    ({"lr": 2e-3}, "lr"),
    ({"batch_size": 3}, "batch_size"),
    ({"generator": {"name": "diffusion", "options": {
        "preset": "tiny", "device": "cpu", "ema_decay": 0.9, "drop_rates": {"identity": 0.5},
        "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}}},
     "generator.options.drop_rates.identity"),
    ({"generator": {"name": "diffusion", "options": {
        "preset": "tiny", "device": "cpu", "ema_decay": 0.9, "drop_all": 0.3,
        "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}}},
     "generator.options.drop_all"),
])
def test_resume_with_changed_settings_is_refused(runs, tmp_path, change, field):
    run = copy_run(runs, "diffusion", tmp_path)
    before = snapshot(run)
    tg, cfg = tg_config(run, resume=True, **change)
    with pytest.raises(ConfigError, match=rf"--resume: the config differs .* in {field} \("):
        tg.run(cfg, progress=False)
    assert snapshot(run) == before  # refused before anything was written


def test_resume_may_change_steps_and_spell_out_defaults(runs, tmp_path):
    run = copy_run(runs, "diffusion", tmp_path)
    tg, cfg = tg_config(run, resume=True, steps=3, lr=2e-3)
    with pytest.raises(ConfigError, match="in lr"):  # the settings are really checked...
        tg.run(cfg, progress=False)
    opts = {**cfg.generator.options, "drop_all": 0.1}  # ...but the default, spelled out, is no change
    tg, cfg = tg_config(run, resume=True, steps=3, generator={"name": "diffusion", "options": opts})
    s = tg.run(cfg, progress=False)
    assert s["step"] == 3 and s["steps_run"] == 1
    meta = json.loads((run / "generator" / "generator.json").read_text())
    assert meta["train_config"]["lr"] == 1e-3 and meta["train_config"]["steps"] == 3


@pytest.mark.parametrize("kind", ["diffusion", "gan"])
def test_fresh_run_over_an_old_run_is_refused(runs, tmp_path, kind):
    run = copy_run(runs, kind, tmp_path)
    before = snapshot(run)
    tg, cfg = tg_config(run, kind, steps=6)
    with pytest.raises(DataError, match="already holds a training run.*pass --resume"):
        tg.run(cfg, progress=False)
    assert snapshot(run) == before  # no new checkpoint beside the old ones


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    tg, cfg = tg_config(tmp_path / "empty", resume=True)
    with pytest.raises(DataError, match="--resume: no checkpoint in"):
        tg.run(cfg, progress=False)


@pytest.mark.parametrize("kind, name", [
    ("diffusion", "model.safetensors"), ("diffusion", "ema.safetensors"), ("diffusion", "trainer_state.pt"),
    ("gan", "model.safetensors"), ("gan", "discriminator.safetensors"),
])
def test_resume_refuses_a_damaged_checkpoint(runs, tmp_path, kind, name):
    run = copy_run(runs, kind, tmp_path)
    target = run / STEP2 / name
    flip_byte(target, len(target.read_bytes()) // 2 if name.endswith(".pt") else -5)
    before = snapshot(run)
    tg, cfg = tg_config(run, kind, resume=True)
    with pytest.raises(DataError, match=rf"{STEP2}/{name}: content hash .* damaged"):
        tg.run(cfg, progress=False)
    assert snapshot(run) == before


def test_fit_itself_refuses_a_damaged_checkpoint(runs, tmp_path):
    """The check is in the generator too, not only in the pipeline."""
    run = copy_run(runs, "diffusion", tmp_path)
    flip_byte(run / STEP2 / "ema.safetensors")
    gen = get_registries().generator.build("diffusion", tg_config(run)[1].generator.options)
    with pytest.raises(DataError, match=r"ema.safetensors: content hash .* damaged"):
        gen.fit(np.zeros((4, 32, 32, 3), np.uint8), [np.zeros((4, c.num_tokens, c.dim), np.float32)
                                                      for c in gen.conditioners],
                out=run, steps=4, batch_size=2, resume=True, progress=False)


def test_cli_resume_with_changed_settings_names_the_field(runs, tmp_path):
    from click.testing import CliRunner

    from c4s_core.cli import cli

    run = copy_run(runs, "gan", tmp_path)
    before = snapshot(run)
    res = CliRunner().invoke(cli, ["train-generator", "--config", str(run / "config.yaml"), "--out", str(run),
                                   "--no-progress", "--resume", "--set", "batch_size=4"])
    assert res.exit_code != 0 and "batch_size (2 then, 4 now)" in res.output, res.output
    assert "Traceback" not in res.output
    assert snapshot(run) == before
