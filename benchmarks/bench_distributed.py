"""train-matcher, train-generator and generate throughput with 1 and N torchrun
processes on this machine.

Prints one JSON line: for each process count, train-matcher images/s (median
over the epochs after the first), train-generator images/s (training loop of the
diffusion generator) and generate images/s (sampling loop of the trained
generator, slowest rank), with the CPU threads each process used (the cores are
shared out evenly), the effective batch and the speed-up. A report, no assertion.

    .venv/bin/python benchmarks/bench_distributed.py [--procs 1,2] [--epochs 3] [--size 64] [--device cpu]
        [--gen-preset tiny] [--gen-steps 20] [--gen-batch 16] [--gen-identities 8] [--sampler-steps 10]
        [--threads 0] [--skip matcher|generator]
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


TINY_CLIP = {  # a random tiny open_clip: no download
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def _threads(nproc: int, args) -> int:
    return args.threads or max(1, (os.cpu_count() or 1) // nproc)


def _torchrun(nproc: int, pipeline: str, cfg: dict, tmp: Path, args, *flags: str) -> tuple[dict | None, list[str], float]:
    import yaml

    threads = _threads(nproc, args)
    path = tmp / f"{pipeline}-{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "C4S_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                          "-m", "c4s_core", pipeline, "--config", str(path), "--no-progress", *flags],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode:
        return None, [ln for ln in (res.stderr + res.stdout).splitlines() if "Error" in ln][:3], wall
    return json.JSONDecoder().raw_decode(res.stdout[res.stdout.index("{"):])[0], [], wall


def run_generator(nproc: int, args, tmp: Path) -> dict:
    """train-generator then generate with ``nproc`` processes (the generate step uses
    the 1-process checkpoint when there is one, so every count samples the same model)."""
    threads = _threads(nproc, args)
    out = tmp / f"gen{nproc}"
    cond = [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
            {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]
    train = {
        "dataset": {"name": "synthfaces", "options": {"num_identities": args.gen_identities, "size": 64,
                                                      "images_per_identity": 1, "sketches_per_identity": 2,
                                                      "styles": ["line", "pencil"]}},
        "generator": {"name": "diffusion", "options": {"preset": args.gen_preset, "device": args.device,
                                                       "conditioners": cond}},
        "steps": args.gen_steps, "batch_size": args.gen_batch, "lr": 1e-3, "warmup_steps": 0,
        "checkpoint_every": 0, "sample_every": 0, "val_every": 0, "val_fraction": 0.0, "grid_identities": 0,
        "condition_size": 32, "out": str(out),
    }
    rec: dict = {"processes": nproc, "threads_per_process": threads}
    s, err, wall = _torchrun(nproc, "train-generator", train, tmp, args)
    if s is None:
        return {**rec, "train_error": err}
    rec.update(train_images_per_s=round(s["images_per_s"], 2), train_steps=s["steps_run"],
               train_effective_batch=s["effective_batch_size"], train_per_rank_batch=s["per_rank_batch_size"],
               train_wall_s_with_startup=round(wall, 1))
    ck = tmp / "gen1" / "generator"
    gen_cfg = {
        "checkpoint": str(ck if ck.is_dir() else out / "generator"), "device": args.device,
        "dataset": {"name": "synthfaces", "options": {"num_identities": args.gen_identities, "size": 64,
                                                      "images_per_identity": 1, "sketches_per_identity": 0}},
        "styles": ["pencil", "line"], "num_per_style": 2, "batch_size": 4, "condition_size": 32,
        "sampler": {"name": "ddim", "options": {"steps": args.sampler_steps}}, "similarity": False,
        "out": str(tmp / f"set{nproc}"),
    }
    g, err, wall = _torchrun(nproc, "generate", gen_cfg, tmp, args)
    if g is None:
        return {**rec, "generate_error": err}
    rec.update(generate_images_per_s=g["images_per_s"], generate_images=g["written_all_ranks"],
               generate_wall_s_with_startup=round(wall, 1))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2", help="Process counts to measure, comma-separated.")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--identities", type=int, default=40)
    ap.add_argument("--size", type=int, default=64, help="Image and backbone input size (a multiple of 16).")
    ap.add_argument("--batch", type=int, default=32, help="Global batch (divisible by every process count).")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--gen-preset", default="tiny", choices=["tiny", "small", "default"], help="Diffusion UNet preset.")
    ap.add_argument("--gen-steps", type=int, default=20, help="train-generator optimizer steps.")
    ap.add_argument("--gen-batch", type=int, default=16, help="train-generator global batch.")
    ap.add_argument("--gen-identities", type=int, default=8, help="Identities to train on and generate for.")
    ap.add_argument("--sampler-steps", type=int, default=10, help="DDIM steps per generated image.")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per process for the generator runs (0: cores / processes).")
    ap.add_argument("--skip", default="", help="Comma-separated parts to skip: matcher, generator.")
    args = ap.parse_args()
    import torch

    skip = set(filter(None, args.skip.split(",")))
    procs = [int(p) for p in args.procs.split(",")]
    with tempfile.TemporaryDirectory() as d:
        runs = [run_one(p, args, Path(d)) for p in procs] if "matcher" not in skip else []
        gen_runs = [run_generator(p, args, Path(d)) for p in sorted(procs)] if "generator" not in skip else []
    for rs, keys in ((runs, ("images_per_s",)), (gen_runs, ("train_images_per_s", "generate_images_per_s"))):
        for key in keys:
            base = next((r[key] for r in rs if r.get("processes") == 1 and r.get(key)), None)
            for r in rs:
                if base and r.get(key):
                    r[key.replace("images_per_s", "speedup_vs_1")] = round(r[key] / base, 2)
    print(json.dumps({
        "benchmark": "distributed", "device": args.device, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "platform": platform.platform(),
        "train_matcher": {"backbone": "ir_18 widths [16,32,64,128]", "input_size": args.size, "runs": runs},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "generator": {"preset": args.gen_preset, "conditioners": "tiny random clip_image + clip_text",
                      "train_batch": args.gen_batch, "sampler": f"ddim {args.sampler_steps} steps", "runs": gen_runs},
    }))


if __name__ == "__main__":
    main()
