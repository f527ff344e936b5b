"""The experiment pipeline: four arms + HOG end to end (tiny), resume, identity
checks, the held-out split and the CUFS example config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tinyclip import TINY_CLIP

from c4s_core.config import validate
from c4s_core.errors import ConfigError, DataError
from c4s_core.pipelines import experiment as ex
from c4s_core.pipelines import experiment_report as rp

ROOT = Path(__file__).resolve().parents[1]


def synth(seed, prefix, n, sketches):
    return {"name": "synthfaces", "options": {"num_identities": n, "images_per_identity": 1,
                                              "sketches_per_identity": sketches, "seed": seed, "prefix": prefix,
                                              "size": 32, "styles": ["pencil"]}}


def tiny(out, **kw):
    base = dict(
        out=out, train=synth(0, "tr", 8, 1), test=synth(1, "te", 8, 1), new_identities=synth(2, "nw", 6, 0),
        diffusion={"name": "diffusion", "options": {
            "preset": "tiny", "device": "cpu", "ema_decay": 0.9, "block_out_channels": [8, 16], "norm_num_groups": 4,
            "cross_attention_dim": 16,
            "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                             {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}},
        diffusion_steps=2, gan={"name": "gan", "options": {"preset": "tiny", "device": "cpu"}}, gan_steps=2,
        procedural={"name": "procedural", "options": {"size": 32}},
        generator_options={"batch_size": 4, "checkpoint_every": 0, "sample_every": 0, "val_every": 0,
                           "grid_identities": 0, "condition_size": 32, "val_fraction": 0.0},
        sampler={"name": "dpmsolver++", "options": {"steps": 2}}, num_per_style=2,
        matcher={"backbone": {"name": "ir_18", "options": {"widths": [8, 8, 16, 16], "input_size": 32,
                                                           "embedding_dim": 16, "device": "cpu"}},
                 "epochs": 2, "batch_size": 8, "device": "cpu", "threads": 1},
        evaluation={"worst": 0},
    )
    base.update(kw)
    return ex.Config(**base)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from c4s_core.plugins import set_registries

    set_registries(None)
    out = tmp_path_factory.mktemp("exp") / "run"
    cfg = tiny(out)
    res = ex.run(cfg, progress=False)
    set_registries(None)
    return cfg, res


def test_four_arms_and_hog_in_one_table_and_one_plot(finished):
    cfg, res = finished
    out = Path(res["out"])
    assert res["arms"] == ["real", "diffusion", "gan", "procedural"]
    assert set(res["metrics"]) == {"real", "diffusion", "gan", "procedural", "hog"}
    for name, by in res["metrics"].items():
        assert set(by) == {"aligned", "perturbed"}, name
        for m in by.values():
            assert 0.0 <= m["rank-1"] <= m["rank-10"] <= 1.0 and 0.0 <= m["AUC"] <= 1.0
    md = (out / "report.md").read_text()
    tables = [ln for ln in md[md.index("## aligned"):md.index("## Verdicts")].splitlines() if ln.startswith("|")]
    assert len(tables) == 2 * (2 + 5)  # a table per protocol: header, rule, four arms and HOG
    matchers = [ln for ln in md[md.index("## Matchers"):md.index("## aligned")].splitlines() if ln.startswith("|")]
    assert len(matchers) == 2 + 4 and "the last epoch" in md  # no validation identities by default
    # each generated set judged by the real-only matcher, beside the real test sketches at the same gallery size
    section = md[md.index("## Identity fidelity"):]
    judge = [ln for ln in section[:section.index("By style")].splitlines() if ln.startswith("|")]
    assert len(judge) == 2 + 3 and [ln.split(" | ")[0] for ln in judge[2:]] == ["| diffusion", "| gan", "| procedural"]
    # and per style: one row per set and style of its sketches or of the real test sketches
    by_style = [ln for ln in section[section.index("By style"):].split("\n\n", 2)[1].splitlines() if ln.startswith("|")]
    assert len(by_style) == 2 + sum(len(j["by_style"]) for j in res["judges"].values())
    for arm, j in res["judges"].items():
        assert j["judge"].endswith("04-matcher-real/last"), arm
        assert j["generated"]["gallery_identities"] == j["real"]["gallery_identities"], arm
        assert 0.0 <= j["generated"]["rank1"] <= j["generated"]["rank10"] <= 1.0 and j["frechet_distance"] >= 0
    assert md.index("## aligned") < md.index("## perturbed")
    assert tables[0] == "| matcher | rank-1 | rank-10 | TAR@FAR=1e-2 | AUC | rank-1 - real-only |"
    assert sum(ln.startswith("| HOG") for ln in tables) == 2
    for arm in ("diffusion", "gan", "procedural"):  # a sentence each: against HOG and against real-only
        line = next(ln for ln in md.splitlines() if ln.startswith(f"- **{arm}**"))
        assert "HOG" in line and "real-only" in line
        assert re.search(r"(beats|does not beat|loses to|ties with) HOG", line)
        assert "rank-1 difference" in line  # decided by the paired interval
        assert f"real + {arm} - real-only: " in md
    assert "real-only" not in next(ln for ln in md.splitlines() if ln.startswith("- **real**"))
    assert (out / "cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every stage folder has its config; the rerunnable pieces are there
    stages = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(stages) == 1 + 2 + 3 + 4 + 2 * 5  # the judge reports live inside 03-generated-*/judge
    assert all((out / s / "config.yaml").is_file() for s in stages)
    assert (out / "02-generator-diffusion" / "generator" / "generator.json").is_file()
    assert json.loads((out / "results.json").read_text())["metrics"] == res["metrics"]


def test_intervals_and_paired_differences(finished):
    """Every evaluation has bootstrap intervals and per-probe ranks; each arm's
    rank-1 difference from real-only (and from HOG) has a paired interval that
    decides its verdict."""
    from c4s_core.pipelines import evaluate

    cfg, res = finished
    out = Path(res["out"])
    for name in ("real", "diffusion", "hog"):
        for p in ("aligned", "perturbed"):
            rep = json.loads((out / f"05-evaluate-{name}-{p}" / "report.json").read_text())
            ci = rep["intervals"]
            assert ci["resamples"] == 1000 and ci["unit"] == "probe identity" and ci["identities"] == 8
            lo, hi = ci["rank"]["1"]
            assert lo <= rep["rank"]["1"] <= hi, (name, p, rep["rank"]["1"], ci)
            assert res["intervals"][name][p]["rank-1"] == [lo, hi]
            recs = evaluate.read_probes(out / f"05-evaluate-{name}-{p}")
            assert len(recs) == 8 and {r["probe"] for r in recs} == {f"te{k:05d}" for k in range(8)}
            curve_rank1 = sum(r["rank"] == 1 for r in recs) / len(recs)
            assert curve_rank1 == pytest.approx(rep["rank"]["1"])
    for arm in ("diffusion", "gan", "procedural"):
        for other in ("real", "hog"):
            for p in ("aligned", "perturbed"):
                d = res["differences"][arm][other][p]
                assert d["difference"] == pytest.approx(res["metrics"][arm][p]["rank-1"] - res["metrics"][other][p]["rank-1"])
                assert d["low"] <= d["difference"] <= d["high"] and d["matched_probes"] == 8
                v = res["verdicts"][arm][other][p]
                assert v["decided_by"].startswith("rank-1 difference")
                assert v["verdict"] == rp._interval_verdict(d)
    assert "real" in res["differences"] and "hog" in res["differences"]["real"]
    # the same evaluation twice: exactly [0, 0], a tie
    recs = {"aligned": evaluate.read_probes(out / "05-evaluate-real-aligned")}
    same = rp._differences(["real"], ["hog"], {"real": recs, "hog": recs}, 500, 0)["real"]["hog"]["aligned"]
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    assert rp._interval_verdict(same) == "ties with"
    # an experiment copied elsewhere and resumed: its new arms' probes lie under another root
    at = lambda root: {"aligned": [{**r, "path": f"{root}/01-data/{r['probe']}/sketch_{r['i']}.png"}  # noqa: E731
                                   for r in recs["aligned"]]}
    d = rp._differences(["real"], ["hog"], {"real": at("/copy"), "hog": at("/original")}, 500, 0)["real"]["hog"]
    assert d["aligned"] is not None and d["aligned"]["matched_probes"] == 8 and d["aligned"]["difference"] == 0.0
    other = {"aligned": [{**r, "path": f"/copy/01-data/{r['probe']}/other.png"} for r in recs["aligned"]]}
    assert rp._differences(["real"], ["hog"], {"real": other, "hog": at("/original")}, 500, 0)["real"]["hog"]["aligned"] is None


def test_point_verdicts_without_bootstrap(finished):
    """bootstrap: 0 keeps the old rule: point values decide."""
    cfg, res = finished
    out = Path(res["out"])
    reports = {n: {p: json.loads((out / f"05-evaluate-{n}-{p}" / "report.json").read_text()) for p in ("aligned",)}
               for n in ("real", "gan", "hog")}
    v = ex._verdicts(["real", "gan"], ["hog"], reports)
    assert v["gan"]["real"]["aligned"]["decided_by"].startswith("point values")
    assert v["gan"]["real"]["aligned"]["verdict"] in ("beats", "does not beat", "ties with")


def test_same_budget_for_every_arm(finished):
    cfg, res = finished
    b = res["budget"]
    n_real = res["data"]["train_images"]
    n_syn = 6 * (1 + 2)  # per new identity: its photo and two sketches
    assert n_real == 16 and b["images_per_epoch"] == n_real + n_syn
    for arm, plan in b["arms"].items():
        assert plan["real_images"] + plan["synthetic_images"] == b["images_per_epoch"], arm
    assert b["arms"]["real"]["ratios"] == [pytest.approx(b["images_per_epoch"] / n_real)]
    steps = {arm: m["optimizer_steps"] for arm, m in res["matchers"].items()}
    assert set(steps.values()) == {b["steps"]} and b["steps"] == 2 * -(-b["images_per_epoch"] // 8)


def test_identities_are_disjoint(finished):
    from c4s_core.plugins import get_registries

    cfg, res = finished
    regs = get_registries()
    ids = {k: set(regs.dataset.build(getattr(cfg, k)).identities()) for k in ("train", "test", "new_identities")}
    assert not ids["test"] & ids["train"] and not ids["test"] & ids["new_identities"]
    assert not ids["train"] & ids["new_identities"]
    gen = [json.loads(ln) for ln in (Path(res["out"]) / "03-generated-gan" / "manifest.jsonl").read_text().splitlines()]
    assert {r["identity"] for r in gen} == ids["new_identities"]


def test_refuses_overlapping_identities(tmp_path):
    cfg = tiny(tmp_path / "o", test=synth(0, "tr", 8, 1))
    with pytest.raises(ConfigError, match=r"train and test share 8 identity name\(s\), e\.g\. tr00000"):
        ex.run(cfg, progress=False)
    cfg = tiny(tmp_path / "o2", new_identities=synth(5, "te", 4, 0))
    with pytest.raises(ConfigError, match="new_identities and test share 4"):
        ex.run(cfg, progress=False)


def test_resume_skips_finished_stages(finished):
    cfg, res = finished
    out = Path(res["out"])
    with pytest.raises(DataError, match="--resume"):
        ex.run(cfg, progress=False)
    weights = out / "04-matcher-gan" / "last" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (out / "05-evaluate-real-perturbed" / "stage.json").unlink()
    res2 = ex.run(cfg.model_copy(update={"resume": True}), progress=False)
    assert "05-evaluate-real-perturbed" not in res2["skipped_stages"]
    # 3 + 3: each generated set's report and judge
    assert len(res2["skipped_stages"]) == 2 + 3 + 3 + 3 + 4 + 2 * 5 - 1
    assert sum(s.endswith("/judge") for s in res2["skipped_stages"]) == 3
    assert weights.stat().st_mtime_ns == before
    assert res2["metrics"] == res["metrics"]


def test_a_copied_experiment_reruns_only_what_changed(finished, tmp_path):
    """An ablation: copy a finished experiment but the stages that the change
    touches (the mixed arms' matchers and their evaluations), change the real
    share, resume: data, generators, generated sets, real-only and the
    baselines are reused."""
    import shutil

    cfg, res = finished
    copy = tmp_path / "share50"
    mixed = re.compile(r"0[45]-(matcher|evaluate)-(diffusion|gan|procedural)")
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if mixed.match(n)])
    gen = copy / "02-generator-diffusion" / "generator" / "model.safetensors"
    before = gen.stat().st_mtime_ns
    matcher = cfg.matcher.model_copy(update={"real_share": 0.5})
    res2 = ex.run(cfg.model_copy(update={"out": copy, "matcher": matcher, "resume": True}), progress=False)
    skipped = set(res2["skipped_stages"])
    assert {"02-generator-diffusion", "02-generator-gan", "03-generated-diffusion", "04-matcher-real",
            "05-evaluate-hog-aligned", "05-evaluate-real-perturbed"} <= skipped
    assert not any(s.startswith(("04-matcher-gan", "05-evaluate-gan")) for s in skipped)
    assert gen.stat().st_mtime_ns == before
    assert res2["budget"]["arms"]["gan"]["real_images"] == res2["budget"]["images_per_epoch"] // 2
    assert res2["metrics"]["real"] == res["metrics"]["real"] and res2["metrics"]["hog"] == res["metrics"]["hog"]
    # the original is untouched, and a stage finished with other settings still refuses
    assert json.loads((Path(res["out"]) / "budget.json").read_text()) == res["budget"]
    with pytest.raises(ConfigError, match="finished with other settings"):
        ex.run(cfg.model_copy(update={"out": copy, "resume": True}), progress=False)


def test_stage_json_written_before_new_fields_is_kept_or_rerun(finished):
    """A matcher finished before train-matcher had val_data is kept (its marker
    upgraded); an evaluation finished before intervals is run again."""
    cfg, res = finished
    out = Path(res["out"])
    tm = ex._matcher_config(cfg, "real", res["data"]["train"], None, res["budget"]["arms"]["real"]["ratios"],
                            out / "04-matcher-real")
    ev = ex._evaluate_config(cfg, res["data"]["test"], ex.ComponentSpec(name="hog"), "aligned", None,
                             out / "05-evaluate-hog-aligned")
    for folder, stage_cfg in (("04-matcher-real", tm), ("05-evaluate-hog-aligned", ev)):
        marker = out / folder / "stage.json"
        rec = json.loads(marker.read_text())
        assert rec["config_hash"] == ex._stage_hash(stage_cfg, out) != ex._stage_hash(stage_cfg, out, legacy=True)
        marker.write_text(json.dumps({**rec, "config_hash": ex._stage_hash(stage_cfg, out, legacy=True)}))
    res2 = ex.run(cfg.model_copy(update={"resume": True}), progress=False)
    assert "04-matcher-real" in res2["skipped_stages"] and "05-evaluate-hog-aligned" not in res2["skipped_stages"]
    for folder, stage_cfg in (("04-matcher-real", tm), ("05-evaluate-hog-aligned", ev)):
        assert json.loads((out / folder / "stage.json").read_text())["config_hash"] == ex._stage_hash(stage_cfg, out)
    assert res2["metrics"] == res["metrics"]


def test_validation_identities_pick_the_checkpoint(tmp_path):
    """matcher.val_fraction carves validation identities out of the training split:
    disjoint from the test split and from what the matcher trains on; best/ is
    evaluated and the report names its epoch and steps."""
    from c4s_core.data.manifest import read_manifest
    from c4s_core.plugins import get_registries

    m = tiny(tmp_path / "x").matcher.model_dump()
    cfg = tiny(tmp_path / "v", arms=["real"], matcher={**m, "val_fraction": 0.25, "epochs": 3},
               evaluation={"worst": 0, "protocols": ["aligned"], "baselines": [], "bootstrap": 200})
    res = ex.run(cfg, progress=False)
    out = Path(res["out"])
    val = {r["identity"] for r in read_manifest(out / "01-data" / "val.jsonl")}
    fit = {r["identity"] for r in read_manifest(out / "01-data" / "matcher-train.jsonl")}
    test = set(get_registries().dataset.build(cfg.test).identities())
    train = set(get_registries().dataset.build(cfg.train).identities())
    assert len(val) == 2 and fit | val == train and not val & fit and not val & test
    stage = json.loads((out / "04-matcher-real" / "stage.json").read_text())["summary"]
    assert stage["classes"] == 6 and stage["val_probes"] == 2 and stage["val_gallery"] == 2
    assert res["budget"]["images_per_epoch"] == res["data"]["matcher_train_images"] == 12
    sel = res["matchers"]["real"]
    hist = stage["history"]
    best = max(range(3), key=lambda e: (hist[e]["val_rank1"], -e)) + 1
    assert sel["selected"] == "best" and sel["selected_epoch"] == stage["best_epoch"] == best
    assert sel["selected_steps"] == hist[best - 1]["step"] == best * sel["optimizer_steps"] // 3
    assert sel["selected_val_rank1"] == hist[best - 1]["val_rank1"]
    import yaml

    ec = yaml.safe_load((out / "05-evaluate-real-aligned" / "config.yaml").read_text())
    assert ec["backbone"]["options"]["path"].endswith("04-matcher-real/best")
    md = (out / "report.md").read_text()
    assert "best epoch by rank-1 on 2 validation identities" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| real |"))
    assert f"| {best} | {sel['selected_steps']} |" in row


def test_stage_json_written_before_relative_hashing_is_upgraded(finished, tmp_path):
    cfg, res = finished
    out = Path(res["out"])
    marker = out / "04-matcher-real" / "stage.json"
    tm = ex._matcher_config(cfg, "real", res["data"]["train"], None, res["budget"]["arms"]["real"]["ratios"],
                            out / "04-matcher-real")
    old = ex._stage_hash(tm)
    assert old != ex._stage_hash(tm, out)
    rec = json.loads(marker.read_text())
    marker.write_text(json.dumps({**rec, "config_hash": old}))
    res2 = ex.run(cfg.model_copy(update={"resume": True}), progress=False)
    assert "04-matcher-real" in res2["skipped_stages"]
    assert json.loads(marker.read_text())["config_hash"] == ex._stage_hash(tm, out)


def test_test_fraction_carves_a_disjoint_split(tmp_path):
    from c4s_core.data.manifest import read_manifest

    cfg = tiny(tmp_path / "o", test=None, test_fraction=0.25, arms=["real"])
    data = ex._prepare_data(cfg, tmp_path / "data", lambda m: None)
    assert data["split"]["test_identities"] == 2 and data["split"]["train_identities"] == 6
    tr = {r["identity"] for r in read_manifest(tmp_path / "data" / "train.jsonl")}
    te = [r for r in read_manifest(tmp_path / "data" / "test.jsonl")]
    assert len(tr) == 6 and not tr & {r["identity"] for r in te}
    assert {r["modality"] for r in te} == {"photo", "sketch"}


def test_bad_settings_fail_at_load():
    from c4s_core.config import load_config

    with pytest.raises(ConfigError, match="may not set"):
        load_config(ex.Config, overrides=["matcher.options={epochs: 3}"])
    with pytest.raises(ConfigError, match="not train-generator fields"):
        load_config(ex.Config, overrides=["generator_options={bogus: 1}"])
    with pytest.raises(ConfigError, match="arms"):
        load_config(ex.Config, overrides=["arms=[real, vae]"])


def test_cufs_config_loads_and_splits(shared_data, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from c4s_core.cli import cli
    from c4s_core.config import load_config

    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(cli, ["config", "show", "experiment", "--config", "examples/configs/experiment-cufs.yaml"])
    assert r.exit_code == 0, r.output
    assert "paired_folder" in r.output and "test: null" in r.output
    cfg = load_config(ex.Config, ROOT / "examples/configs/experiment-cufs.yaml")
    if not (ROOT / cfg.train.options["root"]).is_dir():
        pytest.skip("cufs_train not present")
    data = ex._prepare_data(cfg, tmp_path / "data", lambda m: None)  # builds datasets only: nothing heavy
    sp = data["split"]
    assert sp["train_identities"] + sp["test_identities"] == 268
    assert sp["test_identities"] == round(0.3 * 268)
    assert data["identities"]["new_identities"] == 300
    from c4s_core.data.manifest import read_manifest

    tr = {r["identity"] for r in read_manifest(tmp_path / "data" / "train.jsonl")}
    te = {r["identity"] for r in read_manifest(tmp_path / "data" / "test.jsonl")}
    assert not tr & te and all(Path(r["path"]).is_file() for r in read_manifest(tmp_path / "data" / "test.jsonl"))


def test_bad_generator_options_fail_at_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("gan: {name: gan, options: {preset: small, size: 48}}\n")
    from c4s_core.config import load_config

    with pytest.raises(ConfigError, match=r"(?s)gan: invalid options for generator .gan.*size=48 must be divisible by 2\*\*num_downs"):
        load_config(ex.Config, p)


def test_report_says_why_a_synthetic_arm_does_not_help():
    """The reading names the judge's figures: below the fidelity bar the generator is blamed,
    above it the sketches carry identity and the sentence says so; an arm that beats
    real-only everywhere gets no sentence."""
    from c4s_core.pipelines.experiment import Config
    from c4s_core.pipelines.experiment_report import FIDELITY_BAR, _readings

    cfg = Config(arms=["real", "diffusion", "procedural"])

    def judge(g, r):
        return {"generated": {"rank1": g}, "real": {"rank1": r}, "rank1_ratio": g / r, "frechet_distance": 0.5}

    res = {"verdicts": {"real": {}, "diffusion": {"real": {"forensic": {"verdict": "loses to"},
                                                         "distractors": {"verdict": "beats"}}},
                        "procedural": {"real": {"forensic": {"verdict": "does not beat"}}}},
           "judges": {"diffusion": judge(0.008, 0.55), "procedural": judge(0.5, 0.55)}}
    text = "\n".join(_readings(cfg, res))
    assert "Why real + diffusion does not beat real-only** (forensic)" in text
    assert "judge rank-1 0.008 vs 0.550 for real sketches, ratio 0.01" in text
    assert f"the bar is {FIDELITY_BAR:.1f}" in text
    assert "Real + procedural does not beat real-only** (forensic) although its sketches carry identity" in text
    res["verdicts"]["diffusion"]["real"]["forensic"]["verdict"] = "beats"
    res["verdicts"]["procedural"]["real"]["forensic"]["verdict"] = "beats"
    assert _readings(cfg, res) == []


def test_pretrain_on_synthetic_then_fine_tune_on_real(finished, tmp_path):
    """synthetic_use=pretrain on a copy: the procedural arm trains on its set alone, then
    fine-tunes that matcher on the real data with real-only's budget; real-only and the
    generated sets are reused, the fine-tuned folder names the inner architecture."""
    import shutil

    import yaml

    from c4s_core.matcher_folder import read_matcher

    cfg, res = finished
    copy = tmp_path / "pretrain"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(r"0[45]-(matcher|evaluate)-procedural", n)])
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real", "procedural"],
                                "matcher": cfg.matcher.model_copy(update={"synthetic_use": "pretrain"})})
    res2 = ex.run(c2, progress=False)
    skipped = set(res2["skipped_stages"])
    assert {"04-matcher-real", "03-generated-procedural"} <= skipped and "04-matcher-procedural" not in skipped
    pre = yaml.safe_load((copy / "04-matcher-procedural-pretrain" / "config.yaml").read_text())
    assert [d["dataset"]["name"] for d in pre["data"]] == ["manifest"]  # the generated set only
    fine = yaml.safe_load((copy / "04-matcher-procedural" / "config.yaml").read_text())
    real = yaml.safe_load((copy / "04-matcher-real" / "config.yaml").read_text())
    assert fine["data"] == real["data"]  # real data, real-only's ratio
    assert fine["backbone"]["name"] == "matcher"
    assert Path(fine["backbone"]["options"]["path"]).name == "last"
    _, info = read_matcher(copy / "04-matcher-procedural" / "last")
    assert info["backbone"]["name"] == cfg.matcher.backbone.name
    assert info["weights_sha256"] != read_matcher(copy / "04-matcher-real" / "last")[1]["weights_sha256"]
    m = res2["matchers"]["procedural"]
    assert m["pretrain_steps"] > 0 and m["optimizer_steps"] == res2["matchers"]["real"]["optimizer_steps"]
    assert "synthetic_use: pretrain" in (copy / "report.md").read_text()

    # evaluation.synthetic_only: the pretrain checkpoint alone, added on resume without retraining anything
    c3 = c2.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"synthetic_only": ["aligned"]})})
    res3 = ex.run(c3, progress=False)
    assert "04-matcher-procedural" in res3["skipped_stages"] and "05-evaluate-procedural-aligned" in res3["skipped_stages"]
    edir = copy / "05-evaluate-procedural-pretrain-aligned"
    ev = yaml.safe_load((edir / "config.yaml").read_text())
    assert Path(ev["backbone"]["options"]["path"]).parent.name == "04-matcher-procedural-pretrain"
    row = res3["synthetic_only"]["procedural"]["aligned"]
    assert row["metrics"]["rank-1"] == json.loads((edir / "report.json").read_text())["rank"]["1"]
    assert set(res3["synthetic_only"]) == {"procedural"} and set(row["minus"]) == {"real", "hog"}
    # the paired difference on identical probes is the difference of the two rank-1s
    assert row["minus"]["real"]["difference"] == pytest.approx(
        row["metrics"]["rank-1"] - res3["metrics"]["real"]["aligned"]["rank-1"])
    md = (copy / "report.md").read_text()
    table = [ln for ln in md[md.index("## What each generated set teaches alone"):].splitlines() if ln.startswith("|")]
    assert table[0].endswith("rank-1 - real-only | rank-1 - HOG |") and table[2].startswith("| procedural, aligned | ")
    with pytest.raises(ConfigError, match="synthetic_use: pretrain"):
        validate(ex.Config, {**c3.model_dump(mode="json"), "matcher": cfg.matcher.model_dump(mode="json")}, "test")
    with pytest.raises(ConfigError, match=r"synthetic_only \['perturbed'\] are not in protocols \['aligned'\]"):
        validate(ex.Config, {**c3.model_dump(mode="json"),
                             "evaluation": {"protocols": ["aligned"], "synthetic_only": ["perturbed"]}}, "test")


def test_detour_arm_trains_real_only_again_without_a_generated_set(finished, tmp_path):
    """arm detour, the pretrain design's control: real-only's finished matcher fine-tuned on the
    real data once more with real-only's budget; no generated set, no judge, its own difference row."""
    import shutil

    import yaml

    from c4s_core.matcher_folder import read_matcher

    cfg, res = finished
    copy = tmp_path / "detour"
    # procedural stays (the budget is the largest arm's data), retrained under the pretrain design
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [
        n for n in names if re.match(r"0[2345]-.*-(diffusion|gan)|0[45]-.*-procedural", n)])
    pre = cfg.matcher.model_copy(update={"synthetic_use": "pretrain"})
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real", "detour", "procedural"], "matcher": pre})
    res2 = ex.run(c2, progress=False)
    assert "04-matcher-real" in res2["skipped_stages"] and res2["arms"] == ["real", "detour", "procedural"]
    assert not list(copy.glob("0[23]-*detour*")) and not (copy / "04-matcher-detour-pretrain").exists()
    fine = yaml.safe_load((copy / "04-matcher-detour" / "config.yaml").read_text())
    real = yaml.safe_load((copy / "04-matcher-real" / "config.yaml").read_text())
    assert fine["data"] == real["data"] and fine["epochs"] == real["epochs"]  # real data, real-only's budget
    assert fine["backbone"] == {"name": "matcher", "options": {"path": str((copy / "04-matcher-real" / "last").resolve())}}
    assert read_matcher(copy / "04-matcher-detour" / "last")[1]["weights_sha256"] != \
        read_matcher(copy / "04-matcher-real" / "last")[1]["weights_sha256"]
    m, r = res2["matchers"]["detour"], res2["matchers"]["real"]
    assert m["optimizer_steps"] == r["optimizer_steps"] == m["pretrain_steps"] > 0
    assert m["pretrained_from"] == "04-matcher-real/last" and "detour" not in res2["judges"]
    d = res2["differences"]["detour"]["real"]["aligned"]
    assert d["difference"] == pytest.approx(res2["metrics"]["detour"]["aligned"]["rank-1"]
                                            - res2["metrics"]["real"]["aligned"]["rank-1"])
    md = (copy / "report.md").read_text()
    assert f"| detour (after real-only's {r['optimizer_steps']} steps) |" in md
    assert "aligned: detour (real-only trained again) - real-only: " in md
    for arms, matcher in ((["detour", "procedural"], pre), (["real", "detour"], cfg.matcher)):
        with pytest.raises(ConfigError, match="needs arm real and matcher.synthetic_use: pretrain"):
            validate(ex.Config, {**c2.model_dump(mode="json"), "arms": arms, "matcher": matcher.model_dump(mode="json")},
                     "test")


def test_matcher_seed_repeats_only_the_matchers(finished, tmp_path):
    """A second seed on a copy: the data split and generated sets are reused, the matcher
    retrains with the new seed and its figures are its own."""
    import shutil

    import yaml

    cfg, res = finished
    copy = tmp_path / "seed7"  # as an ablation: copy all but the stages the change touches
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(r"0[45]-(matcher|evaluate)-real", n)])
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real"],
                                "matcher": cfg.matcher.model_copy(update={"seed": 7})})
    res2 = ex.run(c2, progress=False)
    skipped = set(res2["skipped_stages"])
    assert "05-evaluate-hog-aligned" in skipped and "04-matcher-real" not in skipped
    assert yaml.safe_load((copy / "04-matcher-real" / "config.yaml").read_text())["seed"] == 7
    assert all(res2["data"]["identities"][k] == res["data"]["identities"][k] for k in ("train", "test"))
    assert res2["metrics"]["hog"] == res["metrics"]["hog"]


def test_reading_without_a_ceiling():
    """A judge whose real sketches rank nothing first has no ratio: the reading says the judge
    cannot tell, instead of failing (tiny runs, the demo)."""
    from c4s_core.pipelines.experiment import Config
    from c4s_core.pipelines.experiment_report import _readings

    cfg = Config(arms=["real", "procedural"])
    res = {"verdicts": {"real": {}, "procedural": {"real": {"aligned": {"verdict": "loses to"}}}},
           "judges": {"procedural": {"generated": {"rank1": 0.0}, "real": {"rank1": 0.0}, "rank1_ratio": None,
                                     "frechet_distance": None}}}
    text = "\n".join(_readings(cfg, res))
    assert "the judge cannot say" in text and "ratio –" in text


def test_a_generator_trained_outside_is_used_and_checked(finished, tmp_path):
    """trained_generators: the diffusion arm draws with a generator trained elsewhere
    (here the finished run's), skipping its training stage, with the SDEdit start in
    the procedural pencil; one that learnt from a test person is refused by name."""
    import shutil

    from c4s_core.data.manifest import read_manifest

    cfg, res = finished
    copy = tmp_path / "given"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(r"0[2-5]-.*diffusion", n)])
    trained = Path(res["out"]) / "02-generator-diffusion"
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real", "diffusion"], "strength": 0.5,
                                "start_style": "pencil", "trained_generators": {"diffusion": trained}})
    res2 = ex.run(c2, progress=False)
    assert not (copy / "02-generator-diffusion").exists() and "04-matcher-real" in res2["skipped_stages"]
    recs = [r for r in read_manifest(copy / "03-generated-diffusion" / "manifest.jsonl") if r["modality"] == "sketch"]
    assert len(recs) == 6 * 2 and {(r.get("strength"), r.get("start_style")) for r in recs} == {(0.5, "pencil")}
    given = res2["generators"]["generator-diffusion"]
    assert given["trained"] == str(trained / "generator") and given["shared_with_test"] == 0
    assert given["learnt_identities"] == 8 and given["test_identities_checked"] == 8
    # a checkpoint folder is accepted too; a run that learnt from the test split is refused
    ck = next((trained / "checkpoints").glob("step_*"))
    for folder in (ck, trained / "generator"):
        assert ex._trained_generator(folder, "diffusion", res2["data"]["test"])["weights"] == folder
    leaky = tmp_path / "leaky"
    shutil.copytree(trained, leaky)
    run = json.loads((leaky / "run.json").read_text())
    run["config"]["dataset"] = res2["data"]["test"]
    (leaky / "run.json").write_text(json.dumps(run))
    with pytest.raises(DataError, match="learnt from 8 people of this experiment's test split"):
        ex.run(c2.model_copy(update={"out": tmp_path / "leak", "resume": False,
                                     "trained_generators": {"diffusion": leaky}}), progress=False)
    with pytest.raises(ConfigError, match="neither a train-generator out folder"):
        ex._trained_generator(tmp_path, "diffusion", res2["data"]["test"])
    with pytest.raises(ValueError, match="needs strength < 1"):
        tiny(tmp_path / "x", start_style="pencil")


def test_seeds_pool_copies_made_with_matcher_seed(finished, tmp_path):
    """`c4s seeds` reads real experiment folders: a copy at matcher seed 3 (real and
    procedural retrained), pooled with the original; the per-seed figures are each run's own."""
    import shutil

    import numpy as np

    from c4s_core.pipelines import seeds

    cfg, res = finished
    copy = tmp_path / "seed3"
    pat = r"0[45]-(matcher|evaluate)-(real|procedural)"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(pat, n)])
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real", "procedural"],
                                "matcher": cfg.matcher.model_copy(update={"seed": 3})})
    res2 = ex.run(c2, progress=False)
    pooled = seeds.run(seeds.Config(runs=[res["out"], copy], out=tmp_path / "pooled", resamples=200))
    assert pooled["seeds"] == [0, 3]
    got = json.loads((tmp_path / "pooled" / "results.json").read_text())["differences"]["procedural"]
    for p in res["probes"]:
        d = got[p]
        assert d["b_per_seed"] == pytest.approx([res["metrics"]["real"][p]["rank-1"], res2["metrics"]["real"][p]["rank-1"]])
        assert d["a_per_seed"] == pytest.approx([res["metrics"]["procedural"][p]["rank-1"],
                                              res2["metrics"]["procedural"][p]["rank-1"]])
        assert d["difference"] == pytest.approx(np.mean(d["a_per_seed"]) - np.mean(d["b_per_seed"]))
        assert d["low"] <= d["difference"] <= d["high"]


def test_real_identities_trains_every_matcher_on_few_real_people(finished, tmp_path):
    """matcher.real_identities on a copy: the same test split and generated set, the
    matchers see only 3 real people (the same 3 for every arm), HOG is not rerun."""
    import shutil

    from c4s_core.data.manifest import read_manifest

    cfg, res = finished
    copy = tmp_path / "few"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(r"0[45]-(matcher|evaluate)-(real|procedural)", n)])
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real", "procedural"],
                                "matcher": cfg.matcher.model_copy(update={"real_identities": 3})})
    res2 = ex.run(c2, progress=False)
    kept = read_manifest(copy / "01-data" / "matcher-train-3.jsonl")
    people = {r["identity"] for r in kept}
    assert len(people) == 3 and all(p.startswith("tr") for p in people)  # train's prefix
    assert res2["data"]["real_subset"] == {"identities": 3, "of": res["data"]["identities"]["train"], "images": len(kept)}
    assert res2["matchers"]["real"]["classes"] == 3
    assert f"train on only 3 of the {res['data']['identities']['train']} real training people" in (copy / "report.md").read_text()
    assert res2["matchers"]["procedural"]["classes"] == 3 + res["data"]["identities"]["new_identities"]
    assert res2["data"]["identities"]["test"] == res["data"]["identities"]["test"]
    assert "05-evaluate-hog-aligned" in res2["skipped_stages"] and "04-matcher-real" not in res2["skipped_stages"]
    with pytest.raises(DataError, match="real_identities=99: the matchers' training split has only"):
        ex.run(c2.model_copy(update={"matcher": cfg.matcher.model_copy(update={"real_identities": 99})}), progress=False)


def test_judge_table_names_the_judge_it_used():
    """A copy that retrains real-only still reports the judge it was copied with: the table names that folder."""
    j = {"generated": {"rank1": 0.5, "rank10": 0.8, "gap": 0.6}, "real": {"rank1": 0.8, "gap": 0.7}, "rank1_ratio": 0.625,
         "frechet_distance": 0.2, "identities": 10, "distractors": 5, "style": None,
         "diversity": {"generated": {"within_identity": 0.1}},
         "judge": "/runs/first/04-matcher-real/last"}
    text = "\n".join(rp._judge_table({"diffusion": j}))
    assert "`/runs/first/04-matcher-real/last`" in text and "| diffusion | 0.500 | 0.800 | 0.625 |" in text
    assert "By style" not in text  # a judge.json from before by_style
    j["by_style"] = {"fs2k_0": {"generated": {"rank1": 0.2}, "real": {"rank1": 0.5}, "rank1_ratio": 0.4},
                     "pencil": {"generated": {"rank1": 0.9}, "real": None, "rank1_ratio": None}}
    text = "\n".join(rp._judge_table({"diffusion": j}))
    assert "| diffusion | fs2k_0 | 0.200 | 0.500 | 0.400 |" in text and "| diffusion | pencil | 0.900 | – | – |" in text


def test_negatives_add_strangers_photos_to_every_batch(finished, tmp_path):
    """matcher.negatives on a copy: real-only trains with the new identities' photos as
    extra negatives (a photo-only source, never a pair), and says so in the report."""
    import shutil

    import yaml

    cfg, res = finished
    copy = tmp_path / "neg"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(r"0[45]-(matcher|evaluate)-real", n)])
    m = cfg.matcher.model_copy(update={"negatives": 3, "options": {"loss": "pairs"}})
    res2 = ex.run(cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real"], "matcher": m}), progress=False)
    tm = yaml.safe_load((copy / "04-matcher-real" / "config.yaml").read_text())
    assert tm["pair_negatives"] == 3 and tm["loss"] == "pairs"
    assert [d["modality"] for d in tm["data"]] == [None, "photo"]
    n_new = res["data"]["identities"]["new_identities"]
    assert res2["matchers"]["real"]["classes"] == res["data"]["identities"]["train"] + n_new
    assert f"holds 3 photos of the new identities' {n_new} people as extra negatives" in (copy / "report.md").read_text()
    with pytest.raises(ValueError, match="set matcher.options.loss"):
        ex.MatcherSettings(negatives=3)
    clash = cfg.model_copy(update={"out": tmp_path / "clash", "arms": ["real"], "matcher": m,
                                   "new_identities": ex.ComponentSpec.model_validate(synth(0, "tr", 4, 0))})
    with pytest.raises(ConfigError, match="train and negatives share 4"):
        ex.run(clash, progress=False)


def test_flip_fusion_reaches_every_evaluation_with_the_option(finished, tmp_path):
    import shutil

    import yaml

    cfg, res = finished
    copy = tmp_path / "flip"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if n.startswith("05-")])
    ev = cfg.evaluation.model_copy(update={"flip_fusion": True, "protocols": ["aligned"]})
    res2 = ex.run(cfg.model_copy(update={"out": copy, "resume": True, "evaluation": ev}), progress=False)
    opts = yaml.safe_load((copy / "05-evaluate-real-aligned" / "config.yaml").read_text())["backbone"]["options"]
    assert opts["flip_fusion"] is True
    # a baseline stays plain unless flip_baselines names it
    hog = yaml.safe_load((copy / "05-evaluate-hog-aligned" / "config.yaml").read_text())["backbone"]
    assert "flip_fusion" not in (hog.get("options") or {})
    assert "04-matcher-real" in res2["skipped_stages"]  # only the evaluations run again
    assert "the baselines embed plainly" in (copy / "report.md").read_text()
    ev = ev.model_copy(update={"flip_baselines": ["hog"]})
    shutil.rmtree(copy / "05-evaluate-hog-aligned")  # resume refuses a stage finished with other settings
    ex.run(cfg.model_copy(update={"out": copy, "resume": True, "evaluation": ev}), progress=False)
    hog = yaml.safe_load((copy / "05-evaluate-hog-aligned" / "config.yaml").read_text())["backbone"]
    assert hog["options"]["flip_fusion"] is True
    assert "and by hog" in (copy / "report.md").read_text()
    with pytest.raises(ValueError, match=r"flip_baselines \['dlib_r29'\] are not in baselines"):
        ex.Evaluation(baselines=["hog"], flip_baselines=["dlib_r29"])
    # the plain run's stages never saw the option (their hashes are unchanged)
    plain = yaml.safe_load((Path(res["out"]) / "05-evaluate-hog-aligned" / "config.yaml").read_text())
    assert "flip_fusion" not in (plain["backbone"].get("options") or {})


def test_identity_filter_trains_and_judges_the_kept_sketches(finished, tmp_path):
    """identity_filter on a copy: the procedural set is filtered (03-filtered-procedural),
    its matcher trains on the kept sketches only and the judge reads them; the set, the
    real-only matcher and its evaluations are reused."""
    import shutil

    import yaml

    from c4s_core.data.manifest import read_manifest

    cfg, res = finished
    copy = tmp_path / "filtered"
    shutil.copytree(res["out"], copy, ignore=lambda d, names: [n for n in names if re.match(r"0[45]-(matcher|evaluate)-procedural", n)])
    enc = {"name": "r29_id", "options": {"pretrained": False, "device": "cpu", "tokens": "global",
                                         "input_template": "dlib_chip", "input_size": 112}}
    ipe = json.loads((copy / "budget.json").read_text())["images_per_epoch"]  # fewer sketches: pin real-only's budget
    c2 = cfg.model_copy(update={"out": copy, "resume": True, "arms": ["real", "procedural"],
                                "matcher": cfg.matcher.model_copy(update={"images_per_epoch": ipe}),
                                "identity_filter": ex.FilterSettings(far=0.5, encoder=enc)})
    res2 = ex.run(c2, progress=False)
    skipped = set(res2["skipped_stages"])
    assert {"04-matcher-real", "03-generated-procedural", "05-evaluate-real-aligned"} <= skipped
    assert "04-matcher-procedural" not in skipped
    kept = read_manifest(copy / "03-filtered-procedural" / "manifest.jsonl")
    every = read_manifest(copy / "03-generated-procedural" / "manifest.jsonl")
    n_kept, n_all = (sum(r["modality"] == "sketch" for r in m) for m in (kept, every))
    f = res2["generators"]["generated-procedural"]["filter"]
    assert 0 < n_kept < n_all and (f["kept_sketches"], f["sketches"]) == (n_kept, n_all)
    assert 0 < f["impostor_share_accepted"] <= 0.5
    tm = yaml.safe_load((copy / "04-matcher-procedural" / "config.yaml").read_text())
    synth = [d for d in tm["data"] if d["dataset"]["name"] == "manifest"]
    assert [Path(d["dataset"]["options"]["path"]).parent.name for d in synth] == ["03-filtered-procedural"]
    j = res2["judges"]["procedural"]
    assert j["generated"]["probes"] == n_kept  # the judge ranks the kept sketches only
    assert (copy / "03-filtered-procedural" / "judge" / "report.json").is_file()
    assert (f"procedural {n_kept} of {n_all} sketches ({f['kept_identities']} of 6 people, threshold "
            f"{f['threshold']:.3f})") in (copy / "report.md").read_text()
