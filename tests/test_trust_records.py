"""Trust, issue 16: damaged checkpoints refused on resume, reproducible weight
hashes, a failed run leaves an earlier run as it was, and clear messages
(TOML for every pipeline, describe's defaults, where a bad value came from,
ONNX output shape and file mode)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import c4s_core
from c4s_core.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TINY_IR = {"widths": [8, 8, 16, 16], "input_size": 16, "embedding_dim": 16, "device": "cpu"}
MATCHER_SETS = [
    "--set", 'data=[{dataset: {name: synthfaces, options: {num_identities: 8, size: 32, images_per_identity: 1, sketches_per_identity: 1}}}]',
    "--set", "backbone={name: ir_18, options: {widths: [8, 8, 16, 16], input_size: 16, embedding_dim: 16}}",
    "--set", "batch_size=8", "--set", "val_fraction=0.25", "--set", "device=cpu", "--set", "threads=1",
]


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A train-matcher run stopped after 1 of 3 epochs (resumable)."""
    out = tmp_path_factory.mktemp("tm") / "run"
    res = run_cli("train-matcher", "--out", out, "--no-progress", *MATCHER_SETS,
                  "--set", "epochs=3", "--set", "stop_after=1")
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors"])
def test_resume_refuses_a_damaged_checkpoint(stopped_run, tmp_path, name):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    flip_byte(run / "last" / name)
    before = (run / "last" / name).read_bytes()
    res = run_cli("train-matcher", "--out", run, "--no-progress", "--resume", *MATCHER_SETS, "--set", "epochs=3")
    assert res.exit_code != 0
    assert f"last/{name}" in res.output and "damaged" in res.output, res.output
    assert "Traceback" not in res.output
    assert (run / "last" / name).read_bytes() == before  # nothing trained on, nothing rewritten


def test_an_intact_checkpoint_still_resumes(stopped_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    res = run_cli("train-matcher", "--out", run, "--no-progress", "--resume", *MATCHER_SETS, "--set", "epochs=2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["epochs_done"] == 2


def test_a_state_from_before_hashes_still_loads(tmp_path):
    """State JSONs written before the hash was recorded are the bare skeleton."""
    import torch

    from c4s_core.training import flatten_state, load_state, save_state

    save_state(tmp_path, "s", {"w": torch.arange(3.0), "n": 4})
    tensors, skeleton = flatten_state({"w": torch.arange(3.0), "n": 4})
    (tmp_path / "s.json").write_text(json.dumps(skeleton))  # the old layout
    got = load_state(tmp_path, "s")
    assert got["n"] == 4 and got["w"].tolist() == [0.0, 1.0, 2.0]


_HASH_SCRIPT = """
import sys, torch
from c4s_core.training import save_weights
torch.manual_seed(0)
sd = {f"layer{i}.weight": torch.randn(3, 3) for i in range(6)}
print(save_weights(sys.argv[1], sd, {"format": "c4s-matcher", "backbone": "ir_18", "a": "1", "b": "2", "c": "3"}))
"""


def test_weight_hashes_equal_across_processes(tmp_path):
    """safetensors orders its metadata differently per process (a hash map);
    the written bytes, and so the matcher hash, must not depend on it. Eight
    processes with five metadata keys: 120 orders, so an unordered header
    shows up with near certainty."""
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    hashes, files = set(), set()
    for i in range(8):
        path = tmp_path / f"w{i}.safetensors"
        out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        hashes.add(out)
        files.add(path.read_bytes())
    assert len(files) == 1 and len(hashes) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w0.safetensors"), "pt") as f:  # still a valid file, metadata kept
        assert f.metadata()["backbone"] == "ir_18" and len(list(f.keys())) == 6


def test_canonical_safetensors_keeps_the_tensors(tmp_path):
    import torch
    from safetensors.torch import load, save

    from c4s_core.training import canonical_safetensors

    sd = {"b": torch.arange(5, dtype=torch.int64), "a": torch.randn(2, 7), "c": torch.ones(1, dtype=torch.bfloat16)}
    data = canonical_safetensors(save(sd, metadata={"z": "1", "y": "22"}))
    assert int.from_bytes(data[:8], "little") % 8 == 0
    got = load(data)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert canonical_safetensors(data) == data


# -- a failed run leaves an earlier one as it was -------------------------------------------


def test_a_failed_run_keeps_the_earlier_runs_records(tmp_path):
    out = tmp_path / "eval"
    data = "{name: synthfaces, options: {num_identities: 6, size: 64}}"
    res = run_cli("evaluate", "--out", out, "--no-progress", "--set", f"probes={data}", "--set", f"gallery={data}")
    assert res.exit_code == 0, res.output
    before = {n: (out / n).read_bytes() for n in ("config.yaml", "run.json", "report.json")}
    # a plugin name that does not exist fails after the records would be written
    res = run_cli("evaluate", "--out", out, "--no-progress", "--set", "probes={name: no_such_dataset}")
    assert res.exit_code != 0
    assert {n: (out / n).read_bytes() for n in before} == before


def test_a_failed_run_leaves_no_empty_out_folder(tmp_path):
    out = tmp_path / "new" / "eval"
    res = run_cli("evaluate", "--out", out, "--no-progress", "--set", "probes={name: no_such_dataset}")
    assert res.exit_code != 0 and "no_such_dataset" in res.output
    assert not out.exists()


def test_a_failed_run_keeps_files_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    res = run_cli("evaluate", "--out", out, "--no-progress", "--set", "probes={name: no_such_dataset}")
    assert res.exit_code != 0
    assert (out / "notes.txt").read_text() == "keep"
    assert not (out / "config.yaml").exists() and not (out / "run.json").exists()


# -- messages ------------------------------------------------------------------------------


def _pipelines():
    from c4s_core.pipelines import PIPELINES

    return sorted(PIPELINES)


@pytest.mark.parametrize("pipeline", _pipelines())
def test_every_pipeline_config_round_trips_through_toml(pipeline, tmp_path):
    from c4s_core.config import load_config
    from c4s_core.pipelines import get_pipeline

    res = run_cli("config", "show", pipeline, "--format", "toml")
    assert res.exit_code == 0, res.output
    path = tmp_path / "c.toml"
    path.write_text(res.output)
    mod = get_pipeline(pipeline)
    try:
        want = mod.Config()
    except Exception:  # a config with required fields has no defaults to compare
        pytest.skip(f"{pipeline} has required fields")
    assert load_config(mod.Config, path) == want


def test_describe_shows_factory_defaults():
    res = run_cli("describe", "generator", "diffusion")
    assert res.exit_code == 0, res.output
    lines = {ln.split("(")[0].strip(): ln for ln in res.output.splitlines() if ln.startswith("  ")}
    for key in ("conditioners", "roles", "drop_rates"):
        assert "required" not in lines[key], lines[key]
    assert '"identity": 0.1' in lines["drop_rates"]
    assert "default {}" in lines["roles"]


@pytest.mark.parametrize(("where", "expect"), [("set", "--set lr=abc"), ("file", "config file")])
def test_validation_errors_name_the_source_and_field(tmp_path, where, expect):
    args = ["train-matcher", "--out", tmp_path / "o", "--no-progress"]
    if where == "set":
        args += ["--set", "lr=abc"]
    else:
        cfg = tmp_path / "bad.yaml"
        cfg.write_text("lr: abc\n")
        args += ["--config", cfg]
    res = run_cli(*args)
    assert res.exit_code != 0
    assert "invalid train-matcher config" in res.output and "invalid Config" not in res.output
    line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("lr:"))
    assert expect in line, res.output
    if where == "file":
        assert str(cfg) in line


def test_onnx_output_shape_and_mode(tmp_path):
    import onnx

    from c4s_core.export import ExportMeta, export_onnx

    bb = c4s_core.get_registries().backbone.build("ir_18", TINY_IR)
    meta = ExportMeta.from_backbone(bb, "ir_18")
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    res = export_onnx(bb.model, meta, tmp_path / "model.onnx", images, check_batches=[1, 3])
    proto = onnx.load(res.path)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert [dims[0].dim_param, dims[1].dim_value] == ["batch", 16]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(Path(res.path).stat().st_mode) == 0o666 & ~umask
