"""torch.distributed scale-out: shards, manifest merging, global-batch BatchNorm,
and train-matcher under torchrun (2 CPU processes, gloo) against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from c4s_core import distributed as dist
from c4s_core.config import validate
from c4s_core.data.manifest import read_manifest, write_manifest
from c4s_core.errors import ConfigError, DataError
from c4s_core.pipelines import train_matcher as tm

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


# -- splitting work and merging manifests (no processes) ------------------------------------


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
@pytest.mark.parametrize(("n", "world"), [(0, 3), (1, 2), (7, 3), (16, 2), (5, 8), (10, 1)])
def test_shard_indices_partition(n, world, mode):
    shards = [list(dist.shard_indices(n, r, world, mode)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n)) and len(flat) == n  # every index once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    if mode == "contiguous":
        assert flat == list(range(n))  # blocks in rank order
        assert all(s == list(range(s[0], s[0] + len(s))) for s in shards if s)
    else:
        assert all(i % world == r for r, s in enumerate(shards) for i in s)
    assert shards == [list(dist.shard_indices(n, r, world, mode)) for r in range(world)]  # deterministic


def test_shard_indices_refuses_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        dist.shard_indices(4, 2, 2)
    with pytest.raises(ValueError, match="mode"):
        dist.shard_indices(4, 0, 2, "random")


def test_batch_part_weights_sum_to_world():
    for n, world in [(16, 2), (4, 2), (5, 2), (7, 3)]:
        parts = [dist.batch_part(n, r, world) for r in range(world)]
        assert sum(p.size for p in parts) == n
        # DDP averages over ranks: mean of (local mean * weight) is the global mean
        assert sum(p.weight for p in parts) / world == pytest.approx(1.0)
        assert [p.rows.start for p in parts] == sorted(p.rows.start for p in parts)


def test_per_rank_batch_and_single_process_defaults():
    assert dist.per_rank_batch(64, 4) == 16
    with pytest.raises(ConfigError, match=r"batch_size=10 .* 4 processes; use 8 or 12"):
        dist.per_rank_batch(10, 4)
    assert not dist.is_distributed() and dist.world() == 1 and dist.rank() == 0 and dist.is_main()
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}] and dist.broadcast_object(3) == 3
    assert dist.rank0_progress(True) and not dist.rank0_progress(False)
    with dist.init_from_env("cpu") as ctx:  # WORLD_SIZE unset: nothing to join
        assert ctx.world == 1 and ctx.is_main and not ctx.created and not dist.is_distributed()
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert dist.wrap_ddp(m) is m and dist.sync_batchnorm(m) is m and dist.unwrap(m) is m
    info = dist.DistributedInfo.current("cpu", per_rank_batch=32, lr=0.1).as_dict()
    assert info["world_size"] == 1 and info["effective_batch"] == 32 and info["lr"] == 0.1


def test_init_from_env_names_missing_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="torchrun"), dist.init_from_env("cpu"):
        pass


def _recs(paths):
    return [{"path": p, "identity": p.split("/")[0], "modality": "sketch", "style": "pencil", "sha": p[::-1]}
            for p in paths]


def test_merge_manifests(tmp_path):
    a, b, c = tmp_path / "m.part-0.jsonl", tmp_path / "m.part-1.jsonl", tmp_path / "m.part-2.jsonl"
    write_manifest(a, _recs(["id2/pencil_0.png", "id0/pencil_0.png"]))
    write_manifest(b, _recs(["id1/pencil_0.png", "id0/pencil_1.png"]))
    write_manifest(c, [])  # a rank with no work
    n = dist.merge_manifests([b, c, a], tmp_path / "manifest.jsonl")
    merged = read_manifest(tmp_path / "manifest.jsonl")
    assert n == 4 and [r["path"] for r in merged] == sorted(r["path"] for r in merged)
    single = tmp_path / "single.jsonl"  # what one process would write, in any order
    write_manifest(single, _recs(["id0/pencil_1.png", "id2/pencil_0.png", "id1/pencil_0.png", "id0/pencil_0.png"]))
    dist.merge_manifests([single], tmp_path / "single_sorted.jsonl")
    assert (tmp_path / "manifest.jsonl").read_bytes() == (tmp_path / "single_sorted.jsonl").read_bytes()
    # a record written twice (a retried shard) is kept once; a conflicting one is refused
    dist.merge_manifests([a, a, b], tmp_path / "again.jsonl", remove_parts=True)
    assert len(read_manifest(tmp_path / "again.jsonl")) == 4 and not a.exists() and not b.exists()
    write_manifest(a, _recs(["id0/pencil_0.png"]))
    bad = _recs(["id0/pencil_0.png"])
    bad[0]["sha"] = "other"
    write_manifest(b, bad)
    with pytest.raises(DataError, match="disagree"):
        dist.merge_manifests([a, b], tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    assert dist.part_manifest_name(1, 4) == "manifest.part-00001-of-00004.jsonl"


# -- two gloo processes ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_worker(rank, world, port, x, w, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with dist.init_from_env("cpu") as ctx:
        assert ctx.world == world and ctx.backend == "gloo"
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 36, 3), torch.nn.BatchNorm1d(3))
        net = dist.wrap_ddp(dist.sync_batchnorm(net, "cpu"))
        part = dist.batch_part(len(x), rank, world)
        y = net(x[part.rows])
        ((y * w[part.rows]).sum() * world / len(x)).backward()  # DDP averages: global sum / n
        inner = dist.unwrap(net)
        gathered = dist.all_gather_object(y.detach())
        if ctx.is_main:
            torch.save({"y": torch.cat(gathered), "grads": [p.grad for p in inner.parameters()],
                        "state": inner.state_dict()}, out)


def test_sync_batchnorm_two_processes_equal_one_batch(tmp_path):
    """Per-rank halves through (CPU) SyncBatchNorm + DDP give the outputs, gradients
    and running statistics of plain BatchNorm over the whole batch."""
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x, w = torch.randn(7, 3, 8, 8), torch.randn(7, 3)  # 7 rows: an uneven 4/3 split
    mp.spawn(_bn_worker, args=(2, _free_port(), x, w, tmp_path / "r.pt"), nprocs=2, join=True)
    got = torch.load(tmp_path / "r.pt", weights_only=True)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 36, 3), torch.nn.BatchNorm1d(3))
    y = ref(x)
    (y * w).sum().div(len(x)).backward()
    torch.testing.assert_close(got["y"], y.detach(), rtol=1e-5, atol=1e-5)
    for g, p in zip(got["grads"], ref.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    assert set(got["state"]) == set(ref.state_dict())  # same layout as plain BatchNorm
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-5, msg=k)


# -- train-matcher under torchrun -----------------------------------------------------------------

TINY = {
    "data": [{"dataset": {"name": "synthfaces", "options": {
        "num_identities": 12, "size": 32, "images_per_identity": 2, "sketches_per_identity": 1}}}],
    "backbone": {"name": "ir_18", "options": {"widths": [8, 8, 16, 16], "input_size": 16, "embedding_dim": 16}},
    # 27 training images: batches 16 and 11 (each rank: 8/8, then an uneven 6/5, which checks the
    # loss weights); default dropout and AdaFace head. No tiny trailing batch: a 4-row batch
    # (BatchNorm over 4 samples at 1x1) multiplied float rounding ~30x per step, so after six
    # steps two *single-process* runs with other CPU kernels differed by 0.17 in running_var.
    "epochs": 2, "batch_size": 16, "lr": 0.02, "val_fraction": 0.25, "device": "cpu", "threads": 1,
}


def _torchrun(tmp_path, nproc: int, out: Path, env_extra: dict | None = None, **overrides) -> dict:
    import yaml

    cfg = tmp_path / f"cfg-{out.name}.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, **overrides, "out": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "C4S_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "c4s_core", "train-matcher", "--config", str(cfg), "--no-progress"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    # every rank prints the same summary; take the first JSON object
    return json.JSONDecoder().raw_decode(res.stdout[res.stdout.index("{"):])[0]


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


# The runs differ only in the order of float32 sums (BatchNorm statistics and gradients of two
# halves all-reduced, vs one kernel over the batch; other CPU kernels/threads also reorder them).
# Measured: first-step gradients agree to 3e-6 relative, after the 4 steps to 1.3e-4 (also with
# ATEN_CPU_CAPABILITY=default in the torchrun processes), so weights agree to 2e-6 abs (updates are
# lr * grad, so the error is absolute, not relative to the weight) and running statistics (batch
# averages, up to ~7) to 1.2e-5 relative. The tolerances sit ~20x above that and ~100x below real
# DDP mistakes, which move weights by 1.5e-2 (loss weights of the 6/5 split ignored) to 1.4e-1
# (per-rank augmentation) and 6e-2 (per-rank BatchNorm statistics).
W_ATOL, STAT_RTOL = 5e-5, 2e-4


def _assert_same_training(a: Path, b: Path, summary_a: dict, summary_b: dict):
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        stat = k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        torch.testing.assert_close(wb[k], wa[k], rtol=STAT_RTOL if stat else 0.0, atol=W_ATOL,
                                   msg=lambda m, k=k: f"{k}: {m}")
    la = [h["loss"] for h in summary_a["history"]]
    lb = [h["loss"] for h in summary_b["history"]]
    assert lb == pytest.approx(la, rel=1e-5)
    from c4s_core.training import load_state

    sa, sb = load_state(a / "last", "state"), load_state(b / "last", "state")
    assert sa["step"] == sb["step"] and sa["epoch"] == sb["epoch"]
    torch.testing.assert_close(sb["head"]["kernel"], sa["head"]["kernel"], rtol=0.0, atol=W_ATOL)
    torch.testing.assert_close(sb["head"]["batch_mean"], sa["head"]["batch_mean"], rtol=STAT_RTOL, atol=0.0)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    from c4s_core.plugins import set_registries

    set_registries(None)
    out = tmp_path_factory.mktemp("single") / "run"
    return out, tm.run(validate(tm.Config, {**TINY, "out": str(out)}, "test config"), progress=False)


def test_ddp_two_processes_equal_one_process(tmp_path, single_run):
    one, s1 = single_run
    # the two processes use the generic kernels, as a machine with another CPU would: DDP must
    # equal one process whatever reorders the float sums
    s2 = _torchrun(tmp_path, 2, tmp_path / "two", env_extra={"ATEN_CPU_CAPABILITY": "default"})
    assert s2["world_size"] == 2 and s2["per_rank_batch_size"] == 8 and s2["effective_batch_size"] == 16
    assert s2["distributed"]["backend"] == "gloo" and s2["lr"] == 0.02
    assert s1["world_size"] == 1 and s1["effective_batch_size"] == 16
    _assert_same_training(one, tmp_path / "two", s1, s2)
    run_json = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_json["distributed"]["world_size"] == 2 and run_json["distributed"]["effective_batch"] == 16


def test_resume_with_another_number_of_processes(tmp_path, single_run):
    one, s1 = single_run
    first = _torchrun(tmp_path, 2, tmp_path / "mix", stop_after=1)
    assert first["epochs_done"] == 1 and not first["finished"] and first["world_size"] == 2
    # continue the 2-process checkpoint in one process
    resumed = tm.run(validate(tm.Config, {**TINY, "out": str(tmp_path / "mix"), "resume": True}, "t"), progress=False)
    assert resumed["epochs_done"] == 2 and resumed["finished"] and resumed["world_size"] == 1
    _assert_same_training(one, tmp_path / "mix", s1, resumed)


def test_batch_size_must_divide_among_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "C4S_LOAD_PLUGINS": "", "PYTHONWARNINGS": "ignore"}
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({**TINY, "batch_size": 15, "out": str(tmp_path / "odd")}))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "c4s_core", "train-matcher", "--config", str(cfg), "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "batch_size=15" in res.stdout + res.stderr and "use 14 or 16" in res.stdout + res.stderr


R29 = {"backbone": {"name": "dlib_r29", "options": {"pretrained": False, "input_size": 112}},
       "head": {"name": "arcface", "options": {}}, "lr": 0.01}


def test_ddp_fine_tunes_dlib_r29_as_one_process(tmp_path):
    """The pretrained-recogniser backbone (no BatchNorm; per-channel scale
    layers) under torchrun with the margin loss: the same weights as one
    process, within the tolerances above."""
    from c4s_core.plugins import set_registries

    set_registries(None)
    one = tmp_path / "one"
    s1 = tm.run(validate(tm.Config, {**TINY, **R29, "out": str(one)}, "test config"), progress=False)
    s2 = _torchrun(tmp_path, 2, tmp_path / "two", **R29)
    assert s2["world_size"] == 2
    wa, wb = _weights(one), _weights(tmp_path / "two")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0.0, atol=W_ATOL, msg=lambda m, k=k: f"{k}: {m}")
    assert [h["loss"] for h in s2["history"]] == pytest.approx([h["loss"] for h in s1["history"]], rel=1e-5)


def test_pairs_loss_under_torchrun_is_refused_clearly(tmp_path):
    with pytest.raises(AssertionError, match="runs in one process for now"):
        _torchrun(tmp_path, 2, tmp_path / "p", **R29, loss="pairs")
