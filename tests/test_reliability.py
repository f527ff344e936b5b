"""Reliability: killed runs resume to the same result, bad inputs and full
disks give clear errors and lose nothing already written."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from c4s_core.cli import cli
from c4s_core.data import io as dio


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".jsonl")
    }


def run_cli(*args):
    return CliRunner().invoke(cli, list(args))


def test_synth_killed_then_resumed_equals_uninterrupted(tmp_path):
    n = "dataset.options.num_identities=120"
    ref = tmp_path / "ref"
    assert run_cli("synth", "--out", str(ref), "--no-progress", "--set", n).exit_code == 0

    out = tmp_path / "killed"
    env = {**os.environ, "C4S_LOAD_PLUGINS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "c4s_core", "synth", "--out", str(out), "--no-progress", "--set", n],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 40:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written_before = len(list(out.rglob("*.png")))
    assert 0 < written_before < 480, "kill landed outside the run; adjust the test size"
    assert not (out / "manifest.jsonl").exists()

    res = run_cli("synth", "--out", str(out), "--no-progress", "--set", n)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["kept"] >= written_before - 1 and summary["written"] + summary["kept"] == 480
    assert tree_digest(out) == tree_digest(ref)
    assert not list(out.rglob("*.tmp"))


def test_full_disk_is_a_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dio.os, "fdopen", lambda fd, mode: FullFile(real_fdopen(fd, mode)))
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    with pytest.raises(dio.DataError, match="No space left on device") as e:
        dio.save_image(target, np.zeros((4, 4, 3), np.uint8))
    assert str(target) in str(e.value)
    assert target.read_bytes() == b"old"  # what was there is not lost
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    res = run_cli("synth", "--out", str(ro / "x"), "--no-progress")
    assert res.exit_code == 1 and "cannot write" in res.output


@pytest.mark.parametrize(
    "args, expect",
    [
        (["evaluate", "--set", "backbone.name=ir5O"], "unknown backbone 'ir5O'"),
        (["evaluate", "--set", "aligner.name=cemter"], "Did you mean 'center'"),
        (["synth", "--set", "dataset.options.num_identities=-3"], "num_identities"),
        (["synth", "--set", "dataset.options.size=9999"], "size"),
        (["demo", "--set", "identities=1"], "identities"),
        (["evaluate", "--set", "perturb.rotate=90"], "perturb.rotate"),
        (["synth", "--set", "datset.name=x"], "datset: unknown field"),
    ],
)
def test_bad_config_values_name_the_field(tmp_path, args, expect):
    res = run_cli(*args, "--out", str(tmp_path / "o"), "--no-progress")
    assert res.exit_code != 0
    assert expect in res.output, res.output
    assert "Traceback" not in res.output


def test_evaluate_skips_and_counts_corrupt_files(tmp_path):
    from PIL import Image

    root = tmp_path / "pairs"
    for d in ("photos", "sketches"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(4):
        img = rng.integers(0, 255, (60, 50, 3), np.uint8)
        Image.fromarray(img).save(root / "photos" / f"p{k}.png")
        Image.fromarray(255 - img).save(root / "sketches" / f"p{k}.png")
    (root / "sketches" / "p3.png").write_bytes(b"")
    spec = json.dumps({"name": "paired_folder", "options": {"root": str(root)}})
    common = ["--set", f"probes={spec}", "--set", f"gallery={spec}", "--out", str(tmp_path / "ev"), "--no-progress"]
    res = run_cli("evaluate", *common)
    assert res.exit_code == 1 and "p3.png" in res.output and "empty file" in res.output
    res = run_cli("evaluate", *common, "--set", "on_error=skip")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["counts"]["skipped_files"] == 1 and report["counts"]["probes_used"] == 3


def _kill_when(proc, path_glob_root: Path, pattern: str, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as a file matching ``pattern`` exists under the root."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(path_glob_root.glob(pattern)):
            time.sleep(0.2)  # let the run get into its next step
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.wait()
    return False


def _weights(path: Path):
    from safetensors.numpy import load_file

    return load_file(str(path))


MATCHER_SETS = [
    "--set", 'data=[{dataset: {name: synthfaces, options: {num_identities: 12, size: 32, images_per_identity: 2, sketches_per_identity: 2}}}]',
    "--set", "backbone={name: ir_18, options: {widths: [8, 8, 16, 16], input_size: 16, embedding_dim: 16}}",
    "--set", "epochs=6", "--set", "batch_size=16", "--set", "val_fraction=0.25", "--set", "device=cpu",
    "--set", "threads=1",
]


def _kill_resume_matches_uninterrupted(tmp_path, command, sets, marker, weights, rtol, atol):
    """Run ``command`` once through; run it again, SIGKILL it once ``marker`` exists,
    --resume it; the final weights must equal the uninterrupted run's."""
    env = {**os.environ, "C4S_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    ref, run = tmp_path / "ref", tmp_path / "run"
    res = run_cli(command, "--out", str(ref), "--no-progress", *sets)
    assert res.exit_code == 0, res.output
    proc = subprocess.Popen([sys.executable, "-m", "c4s_core", command, "--out", str(run), "--no-progress", *sets],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, run, marker), "the run finished before it could be killed; make it longer"
    (run / ".history.json.x1y2z3.tmp").write_bytes(b"{")  # as a kill mid-write leaves, whenever it lands
    res = run_cli(command, "--out", str(run), "--no-progress", "--resume", *sets)
    assert res.exit_code == 0, res.output
    wa, wb = _weights(ref / weights), _weights(run / weights)
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=rtol, atol=atol, err_msg=k)
    assert not list(run.rglob("*.tmp"))
    return res


def test_train_matcher_killed_then_resumed_equals_uninterrupted(tmp_path):
    res = _kill_resume_matches_uninterrupted(tmp_path, "train-matcher", MATCHER_SETS, "last/state.json",
                                             "last/model.safetensors", 1e-5, 1e-6)
    assert json.loads(res.output)["finished"]


GEN_SETS = [
    "--set", "dataset={name: synthfaces, options: {num_identities: 6, images_per_identity: 1, sketches_per_identity: 1, size: 32}}",
    "--set", "generator={name: diffusion, options: {preset: tiny, device: cpu, block_out_channels: [8, 16], norm_num_groups: 4, cross_attention_dim: 16, conditioners: [{name: clip_text, options: {model_config: {embed_dim: 16, vision_cfg: {image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 16}, text_cfg: {context_length: 16, vocab_size: 49408, width: 16, heads: 2, layers: 1}}}}]}}",
    "--set", "steps=40", "--set", "batch_size=4", "--set", "checkpoint_every=5", "--set", "keep_checkpoints=2",
    "--set", "sample_every=0", "--set", "val_every=0", "--set", "grid_identities=0", "--set", "val_fraction=0.0",
    "--set", "condition_size=32", "--set", "aligner=null",
]


def test_train_generator_killed_then_resumed_equals_uninterrupted(tmp_path):
    _kill_resume_matches_uninterrupted(tmp_path, "train-generator", GEN_SETS, "checkpoints/step_*/trainer_state.pt",
                                       "generator/model.safetensors", 1e-4, 1e-5)
