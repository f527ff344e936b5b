"""train-matcher throughput with 1 and N torchrun processes on this machine.

Prints one JSON line: images/s (median over the epochs after the first) for each
process count, with the CPU threads each process used (the cores are shared out
evenly), the effective batch and the speed-up. A report, no assertion.

    .venv/bin/python benchmarks/bench_distributed.py [--procs 1,2] [--epochs 3] [--size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(nproc: int, args, tmp: Path) -> dict:
    import yaml

    cores = os.cpu_count() or 1
    threads = max(1, cores // nproc)
    out = tmp / f"p{nproc}"
    cfg = {
        "data": [{"dataset": {"name": "synthfaces", "options": {
            "num_identities": args.identities, "size": args.size, "images_per_identity": 2,
            "sketches_per_identity": 2}}}],
        "backbone": {"name": "ir_18", "options": {"widths": [16, 32, 64, 128], "input_size": args.size}},
        "epochs": args.epochs, "batch_size": args.batch, "val_fraction": 0.0, "device": args.device,
        "threads": threads, "out": str(out),
    }
    path = tmp / f"cfg{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "C4S_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                          "-m", "c4s_core", "train-matcher", "--config", str(path), "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode:
        return {"processes": nproc, "error": [ln for ln in (res.stderr + res.stdout).splitlines() if "Error" in ln][:3]}
    s = json.JSONDecoder().raw_decode(res.stdout[res.stdout.index("{"):])[0]
    rates = [h["images_per_s"] for h in s["history"]]
    steady = rates[1:] or rates
    return {"processes": nproc, "threads_per_process": threads, "images_per_s": round(statistics.median(steady), 1),
            "images_per_s_by_epoch": rates, "effective_batch": s["effective_batch_size"],
            "per_rank_batch": s["per_rank_batch_size"], "train_images": s["train_images"],
            "wall_s_with_startup": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2", help="Process counts to measure, comma-separated.")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--size", type=int, default=64, help="Image and backbone input size (a multiple of 16).")
    ap.add_argument("--batch", type=int, default=32, help="Global batch (divisible by every process count).")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as d:
        runs = [run_one(int(p), args, Path(d)) for p in args.procs.split(",")]
    base = next((r["images_per_s"] for r in runs if r.get("processes") == 1 and "images_per_s" in r), None)
    for r in runs:
        if base and "images_per_s" in r:
            r["speedup_vs_1"] = round(r["images_per_s"] / base, 2)
    print(json.dumps({
        "benchmark": "distributed_train_matcher", "backbone": "ir_18 widths [16,32,64,128]",
        "input_size": args.size, "device": args.device, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "platform": platform.platform(), "runs": runs,
        "generation": "not measured here (the generate pipeline gets its torchrun support separately)",
    }))


if __name__ == "__main__":
    main()
