import json

from click.testing import CliRunner

from c4s_core.cli import cli


def test_demo_small_runs_every_stage_and_writes_report(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, [
        "demo", "--out", str(out), "--no-progress",
        "--set", "identities=6", "--set", "distractors=10", "--set", "backbones=[hog]",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert [e["probes"] for e in summary["evaluations"]] == ["aligned", "perturbed"]
    for e in summary["evaluations"]:
        assert 0.0 <= e["rank-1"] <= e["rank-5"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| hog | aligned |" in report and "01-synth/contact_sheet.png" in report
    for f in ("01-synth/contact_sheet.png", "02-styles/styles.png", "03-evaluate-hog-aligned/cmc.png",
              "config.yaml", "01-synth/config.yaml", "03-evaluate-hog-perturbed/config.yaml"):
        assert (out / f).is_file(), f
    # each stage's saved config reruns that stage
    res = CliRunner().invoke(cli, ["evaluate", "--config", str(out / "03-evaluate-hog-aligned" / "config.yaml"),
                                   "--out", str(tmp_path / "again"), "--no-progress"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    first = json.loads((out / "03-evaluate-hog-aligned" / "report.json").read_text())
    assert again["rank"] == first["rank"]
