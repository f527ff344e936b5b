"""train-generator and generate under ``torchrun`` (two CPU processes, gloo):
DDP training equals one process with the same global batch, a run resumes
with another number of processes, and distributed generation writes the same
set (files, bytes, manifest) as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tinyclip import TINY_CLIP

from c4s_core.pipelines import get_pipeline

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def train_config(out: Path, **kw) -> dict:
    # options spelt out in full: a --config file merges component options into the
    # defaults' options, a Python Config replaces them
    base = dict(
        dataset={"name": "synthfaces", "options": {"num_identities": 5, "size": 32, "images_per_identity": 1, "sketches_per_identity": 2,
                                                   "styles": ["line", "pencil"]}},
        generator={"name": "diffusion", "options": {
            "preset": "tiny", "device": "cpu", "ema_decay": 0.9,
            "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                             {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]}},
        steps=STEPS, batch_size=4, grad_accum=2, lr=1e-3, warmup_steps=1, checkpoint_every=2, keep_checkpoints=5,
        sample_every=0, val_every=0, val_fraction=0.2, grid_identities=0, condition_size=32, out=str(out),
    )
    base.update(kw)
    return base


def torchrun(nproc: int, pipeline: str, cfg: dict, tmp: Path, *flags: str) -> dict:
    """Run ``c4s PIPELINE`` under torchrun with ``nproc`` CPU processes; rank 0's summary."""
    path = tmp / f"{pipeline}-{nproc}-{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "C4S_LOAD_PLUGINS": ""}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "-m", "c4s_core", pipeline, "--config", str(path), "--no-progress", *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:] + res.stdout[-2000:]
    return json.JSONDecoder().raw_decode(res.stdout[res.stdout.index("{"):])[0]


def run_inline(pipeline: str, cfg: dict) -> dict:
    mod = get_pipeline(pipeline)
    return mod.run(mod.Config(**cfg), progress=False)


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    out = {}
    for f in ("model.safetensors", "ema.safetensors"):
        out.update({f"{f}:{k}": v.numpy() for k, v in load_file(str(folder / f)).items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal up to float rounding. AdamW's first steps move each weight by about
    lr (1e-3) whatever the gradient's size, so a weight whose gradient is near zero
    may move differently after rounding-level differences: allow 2e-4 anywhere,
    but ask nearly every tensor to agree to 1e-5 (a wrong batch split moves them all)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    bad = [k for k in wa if not np.allclose(wa[k], wb[k], atol=2e-4, rtol=2e-3)]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}: max diff {np.abs(wa[bad[0]] - wb[bad[0]]).max()}"
    loose = [k for k in wa if not np.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4)]
    assert len(loose) <= 0.05 * len(wa), f"{len(loose)} of {len(wa)} tensors differ by more than 1e-5: {loose[:5]}"


def set_files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name not in ("config.yaml", "run.json")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The torchrun processes run with OMP_NUM_THREADS=1; so does the in-process
    reference (another thread count changes float rounding, and a pixel may flip)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, STEPS steps straight; two processes stopped at STEPS/2."""
    tmp = tmp_path_factory.mktemp("dist-gen")
    one = run_inline("train-generator", train_config(tmp / "one", cache_dir=str(tmp / "cache1")))
    two = torchrun(2, "train-generator", train_config(tmp / "two", stop_after=STEPS // 2), tmp)
    return tmp, one, two


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    tmp, one, two = runs
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["per_rank_batch_size"] == 2 and two["effective_batch_size"] == 8 == one["effective_batch_size"]
    assert two["distributed"]["backend"] == "gloo" and two["distributed"]["world_size"] == 2
    run_json = json.loads((tmp / "two" / "run.json").read_text())
    assert run_json["distributed"]["effective_batch"] == 8 and run_json["distributed"]["lr"] == 1e-3
    assert two["stopped_early"] and two["step"] == STEPS // 2
    # rank 0 alone wrote: one checkpoint folder per save, no stray temp folders
    ck = sorted(p.name for p in (tmp / "two" / "checkpoints").iterdir())
    assert ck == [f"step_{STEPS // 2:07d}"]
    mid = f"checkpoints/step_{STEPS // 2:07d}"
    assert_same_weights(tmp / "one" / mid, tmp / "two" / mid)
    h1 = json.loads((tmp / "one" / "history.json").read_text())[: STEPS // 2]
    h2 = json.loads((tmp / "two" / "history.json").read_text())
    assert np.allclose([h["loss"] for h in h1], [h["loss"] for h in h2], rtol=1e-4)


def test_two_process_run_resumes_in_one_process(runs):
    tmp, one, _ = runs
    s = run_inline("train-generator", train_config(tmp / "two", resume=True))
    assert s["step"] == STEPS and s["steps_run"] == STEPS - STEPS // 2 and s["world_size"] == 1
    assert_same_weights(tmp / "one" / "generator", tmp / "two" / "generator")
    h1 = json.loads((tmp / "one" / "history.json").read_text())
    h2 = json.loads((tmp / "two" / "history.json").read_text())
    assert [h["step"] for h in h2] == list(range(1, STEPS + 1))
    assert np.allclose([h["loss"] for h in h1], [h["loss"] for h in h2], rtol=1e-4)


def test_one_process_run_resumes_in_two_processes(runs, tmp_path):
    tmp, _, _ = runs
    run_inline("train-generator", train_config(tmp_path / "r", stop_after=STEPS // 2))
    s = torchrun(2, "train-generator", train_config(tmp_path / "r"), tmp_path, "--resume")
    assert s["step"] == STEPS and s["steps_run"] == STEPS - STEPS // 2 and s["world_size"] == 2
    assert_same_weights(tmp / "one" / "generator", tmp_path / "r" / "generator")


@pytest.mark.parametrize("kind", ["procedural", "diffusion"])
def test_distributed_generate_equals_single_process(runs, tmp_path, kind):
    tmp, _, _ = runs
    cfg = dict(
        dataset={"name": "synthfaces", "options": {"num_identities": 3, "size": 32, "images_per_identity": 1,
                                                   "sketches_per_identity": 0}},
        styles=["pencil", "line"], num_per_style=2 if kind == "procedural" else 1, batch_size=2, condition_size=32,
        similarity=kind == "diffusion", seed=3,
    )
    if kind == "diffusion":
        cfg.update(checkpoint=str(tmp / "one" / "generator"), sampler={"name": "ddim", "options": {"steps": 2}},
                   guidance={"identity": 2.0, "style": 2.0})
    single = run_inline("generate", {**cfg, "out": str(tmp_path / "single")})
    multi = torchrun(2, "generate", {**cfg, "out": str(tmp_path / "multi")}, tmp_path)
    assert single["complete"] and multi["complete"] and multi["world_size"] == 2
    assert multi["shard"] == "1/2" and 0 < multi["batches"] < single["batches"]
    assert multi["written_all_ranks"] == single["written"] == single["jobs"]
    a, b = set_files(tmp_path / "single"), set_files(tmp_path / "multi")
    assert sorted(a) == sorted(b)
    # generate.json holds the config as given (a YAML file sorts its keys): compare its content
    assert json.loads(a.pop("generate.json")) == json.loads(b.pop("generate.json"))
    assert [k for k in a if a[k] != b[k]] == []
    assert not list((tmp_path / "multi").glob("manifest.shard-*"))  # parts merged and removed
    recs = [json.loads(ln) for ln in (tmp_path / "multi" / "manifest.jsonl").read_text().splitlines()]
    assert sum(r["modality"] == "sketch" for r in recs) == single["jobs"]
