import json
import os
import subprocess
import sys

import yaml
from click.testing import CliRunner

from c4s_core import __version__
from c4s_core.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0, res.output
    assert __version__ in res.output


def test_plugins_json_lists_components_with_origin():
    res = invoke("plugins", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    comp = {(c["kind"], c["name"]): c for c in data["components"]}
    pf = comp[("dataset", "paired_folder")]
    assert pf["plugin"] == "datasets" and pf["distribution"] == "clip4sketch" and "cufs" in pf["aliases"]
    names = {p["name"] for p in data["plugins"]}
    assert {"datasets", "synthfaces"} <= names


def test_plugins_filters():
    data = json.loads(invoke("plugins", "--json", "--kind", "dataset").output)
    assert {c["kind"] for c in data["components"]} == {"dataset"}
    data = json.loads(invoke("plugins", "--json", "--no-builtins").output)
    assert data["plugins"] == [] and data["components"] == []
    data = json.loads(invoke("plugins", "--json", "--hook", "register_datasets").output)
    assert "datasets" in {p["name"] for p in data["plugins"]}


def test_plugins_table_and_block():
    res = invoke("plugins")
    assert res.exit_code == 0 and "paired_folder" in res.output
    res = invoke("--block", "styles", "plugins", "--json")
    data = json.loads(res.output)
    assert "styles" in data["blocked"]
    assert not [c for c in data["components"] if c["plugin"] == "styles"]


def test_describe_and_unknown_component():
    res = invoke("describe", "dataset", "cufs")
    assert res.exit_code == 0, res.output
    assert "on_unpaired" in res.output and "clip4sketch" in res.output
    res = invoke("describe", "dataset", "paired_foldr")
    assert res.exit_code == 1
    assert "Did you mean 'paired_folder'" in res.output
    assert "Traceback" not in res.output


def test_config_show_roundtrips_yaml_and_toml(tmp_path):
    res = invoke("config", "show", "synth", "--set", "sheet_identities=3")
    assert res.exit_code == 0, res.output
    data = yaml.safe_load(res.output)
    assert data["sheet_identities"] == 3 and data["dataset"]["name"] == "synthfaces"
    f = tmp_path / "synth.yaml"
    f.write_text(res.output)
    res2 = invoke("config", "show", "synth", "--config", str(f), "--format", "toml")
    assert res2.exit_code == 0, res2.output
    t = tmp_path / "synth.toml"
    t.write_text(res2.output)
    res3 = invoke("config", "show", "synth", "--config", str(t), "--format", "json")
    assert json.loads(res3.output)["sheet_identities"] == 3


def test_config_errors_name_the_field(tmp_path):
    res = invoke("config", "show", "synth", "--set", "sheet_identities=-1")
    assert res.exit_code == 1 and "sheet_identities" in res.output
    res = invoke("config", "show", "synth", "--set", "sheet_identitis=2")
    assert "sheet_identitis: unknown field" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed")
    res = invoke("config", "show", "synth", "--config", str(bad))
    assert res.exit_code == 1 and str(bad) in res.output
    res = invoke("config", "show", "synthe")
    assert res.exit_code == 1 and "Did you mean 'synth'" in res.output


def test_synth_pipeline_writes_and_resumes(tmp_path):
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--no-progress", "--set", "dataset.options.num_identities=3"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["identities"] == 3 and summary["written"] == summary["images"] > 0
    assert (out / "manifest.jsonl").exists() and (out / "config.yaml").exists()
    assert (out / "contact_sheet.png").exists()
    again = json.loads(invoke(*args).output)
    assert again["written"] == 0 and again["kept"] == summary["images"]
    # the saved config reruns the same stage
    res = invoke("synth", "--config", str(out / "config.yaml"), "--no-progress")
    assert res.exit_code == 0 and json.loads(res.output)["kept"] == summary["images"]


def test_unwritable_output_is_a_clear_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    res = invoke("synth", "--out", str(f), "--no-progress")
    assert res.exit_code == 1 and "not a folder" in res.output


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from c4s_core.cli import main\n"
        "sys.argv=['c4s','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy=[m for m in ('torch','diffusers','open_clip','onnxruntime','dlib','skimage') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    for args in ([], ["plugins"]):
        c = code.replace("'--help'", ", ".join(repr(a) for a in (["--help"] if not args else args)))
        out = subprocess.run([sys.executable, "-c", c], capture_output=True, text=True,
                             env={**os.environ}, timeout=60)
        assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "c4s_core", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
