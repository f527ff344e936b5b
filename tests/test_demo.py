"""`c4s demo` end to end on a tiny configuration: every stage runs, the report
and the deployed model exist, each stage's saved config reruns it."""

import json
from pathlib import Path

from click.testing import CliRunner
from tinyclip import TINY_CLIP

from c4s_core.cli import cli
from c4s_core.pipelines import demo


def synth(seed, prefix, n, sketches):
    return {"name": "synthfaces", "options": {"num_identities": n, "images_per_identity": 1,
                                              "sketches_per_identity": sketches, "seed": seed, "prefix": prefix,
                                              "size": 32, "styles": ["pencil"]}}


def tiny_config(tmp_path) -> Path:
    cfg = {
        "search_probes": 3, "top_k": 3,
        "experiment": {
            "arms": ["real", "diffusion"], "styles": ["pencil"],
            "train": synth(0, "tr", 8, 1), "test": synth(1, "te", 8, 1), "new_identities": synth(2, "nw", 6, 0),
            "distractors": synth(3, "dx", 5, 0),
            "diffusion": {"name": "diffusion", "options": {
                "preset": "tiny", "device": "cpu", "ema_decay": 0.9, "block_out_channels": [8, 16],
                "norm_num_groups": 4, "cross_attention_dim": 16,
                "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                                 {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}},
            "diffusion_steps": 2,
            "generator_options": {"batch_size": 4, "checkpoint_every": 0, "sample_every": 0, "val_every": 0,
                                  "grid_identities": 0, "condition_size": 32, "val_fraction": 0.0},
            "sampler": {"name": "dpmsolver++", "options": {"steps": 2}}, "num_per_style": 1,
            "matcher": {"backbone": {"name": "ir_18", "options": {"widths": [8, 8, 16, 16], "input_size": 32,
                                                                  "embedding_dim": 16, "device": "cpu"}},
                        "epochs": 1, "batch_size": 8, "device": "cpu", "threads": 1},
            "evaluation": {"worst": 0},
        },
    }
    p = tmp_path / "demo.yaml"
    import yaml

    p.write_text(yaml.safe_dump(cfg))
    return p


def test_demo_defaults_validate():
    cfg = demo.Config()
    assert cfg.experiment.arms == ["real", "diffusion"] and len(cfg.experiment.styles) >= 2


def test_demo_tiny_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--config", str(tiny_config(tmp_path)), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["best_arm"] in ("real", "diffusion") and s["searched"] == 3 and s["gallery_size"] == 8 + 5
    assert s["machine"]["torch_threads"] >= 1 and s["machine"]["cpu_capability"]  # what figures depend on
    assert set(s["metrics"]) == {"real", "diffusion", "hog"}
    report = (out / "report.md").read_text()
    assert "## Deployment" in report and "| te00000 |" in report
    assert "experiment/cmc.png" in report
    for f in ("config.yaml", "experiment/config.yaml", "experiment/cmc.png", "export/model.onnx",
              "deploy/index/index.json", "deploy/search.json",
              "experiment/02-generator-diffusion/config.yaml", "experiment/03-generated-diffusion/manifest.jsonl"):
        assert (out / f).is_file(), f
    hits = json.loads((out / "deploy" / "search.json").read_text())
    assert len(hits) == 3 and all(len(h["hits"]) == 3 for h in hits)
    # a stage's saved config reruns that stage on its own
    stage = out / "experiment" / "05-evaluate-hog-distractors"
    res = CliRunner().invoke(cli, ["evaluate", "--config", str(stage / "config.yaml"),
                                   "--out", str(tmp_path / "again"), "--no-progress"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    first = json.loads((stage / "report.json").read_text())
    assert again["rank"] == first["rank"]


def test_real_data_demo_config(cufs, shared_data):
    """The documented real-data config validates and its datasets build (the run itself is long)."""
    import c4s_core
    from c4s_core.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(demo.Config, root / "examples" / "configs" / "demo-cufs.yaml")
    exp = cfg.experiment
    # paths in the example are relative to the project root, beside ../shared/data
    regs = c4s_core.get_registries()
    fix = {"../shared/data": str(shared_data)}

    def build(spec):
        opts = {k: (v.replace("../shared/data", fix["../shared/data"]) if isinstance(v, str) else v)
                for k, v in spec.options.items()}
        return regs.dataset.build(spec.name, opts)

    train = build(exp.train)
    assert len(train.identities()) == 268 and exp.test is None and exp.test_fraction == 0.2
    assert len(build(exp.new_identities)) == 200 and len(build(exp.distractors)) == 500


def _hide_dlib(monkeypatch):
    """A base install: ``import dlib`` fails (as without the dlib extra)."""
    import sys

    monkeypatch.setitem(sys.modules, "dlib", None)


def test_demo_defaults_leave_out_what_needs_the_dlib_extra(monkeypatch):
    _hide_dlib(monkeypatch)
    cfg = demo.Config()
    cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={
        "evaluation": cfg.experiment.evaluation.model_copy(update={"baselines": ["hog", "dlib_resnet"]})})})
    ran, left = demo.without_missing_extras(cfg)
    conds = [c["name"] for c in ran.experiment.diffusion.options["conditioners"]]
    assert "dlib_id" not in conds and "photo_patches" in conds and "clip_text" in conds
    assert ran.experiment.evaluation.baselines == ["hog"]
    assert [lo["component"] for lo in left] == ["conditioner dlib_id of the diffusion generator", "baseline dlib_resnet"]
    assert all("pip install 'clip4sketch[dlib]'" in lo["reason"] and "dlib-bin" in lo["reason"] for lo in left)
    assert "photo_patches" in left[0]["instead"]


def test_demo_runs_without_the_dlib_extra(tmp_path, monkeypatch):
    """A tiny demo asking for dlib_id and dlib_resnet runs on the base install and says what it left out."""
    import yaml

    _hide_dlib(monkeypatch)
    p = tiny_config(tmp_path)
    cfg = yaml.safe_load(p.read_text())
    exp = cfg["experiment"]
    exp["diffusion"]["options"]["conditioners"].insert(0, {"name": "dlib_id"})
    exp["evaluation"]["baselines"] = ["hog", "dlib_resnet"]
    p.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--config", str(p), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "warning: left out conditioner dlib_id of the diffusion generator" in res.stderr
    assert "left out baseline dlib_resnet" in res.stderr and "pip install 'clip4sketch[dlib]'" in res.stderr
    s = json.loads(res.stdout)
    assert [lo["component"] for lo in s["left_out"]] == ["conditioner dlib_id of the diffusion generator",
                                                        "baseline dlib_resnet"]
    assert set(s["metrics"]) == {"real", "diffusion", "hog"}
    report = (out / "report.md").read_text()
    assert "## Left out" in report and "pip install 'clip4sketch[dlib]'" in report
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the config that ran, rerunnable as is
    assert [c["name"] for c in saved["experiment"]["diffusion"]["options"]["conditioners"]] == [
        "clip_image", "clip_text", "photo_patches"]
    assert json.loads((out / "run.json").read_text())["left_out"] == s["left_out"]
