"""The c4s command's malloc tuning (c4s_core/malloc.py) on a training-like step (prints JSON).

A stack of 3x3 convolutions (64 channels, 64 x 64, batch 32: activations of
32 MiB each, above glibc's default mmap threshold) runs forward and backward
in a fresh process with and without the tuning; wall, user and system seconds
per step, and minor page faults, side by side.

    python benchmarks/bench_malloc.py [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

STEP = r"""
import json, os, resource, sys, time
from c4s_core.malloc import tune_malloc
tuned = tune_malloc()
import torch
torch.set_num_threads(int(sys.argv[2]))
net = torch.nn.Sequential(*[torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)])
x = torch.randn(32, 64, 64, 64)
net(x).square().mean().backward()  # warm-up
t0, r0, f0 = time.perf_counter(), os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[1])):
    net.zero_grad()
    net(x).square().mean().backward()
r1, n = os.times(), int(sys.argv[1])
print(json.dumps({"tuned": tuned, "wall_s_per_step": round((time.perf_counter() - t0) / n, 3),
                  "user_s_per_step": round((r1.user - r0.user) / n, 3), "sys_s_per_step": round((r1.system - r0.system) / n, 3),
                  "minor_faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // n,
                  "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    runs = {}
    for name, flag in (("default", "0"), ("tuned", "1")):
        env = {**os.environ, "C4S_MALLOC_TUNE": flag}
        out = subprocess.run([sys.executable, "-c", STEP, str(a.steps), str(a.threads)], env=env, check=True,
                             capture_output=True, text=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"bench": "malloc", "cpu": platform.processor() or platform.machine(), "threads": a.threads,
                      "load_avg_1m": round(os.getloadavg()[0], 2), **runs,
                      "speedup_wall": round(runs["default"]["wall_s_per_step"] / runs["tuned"]["wall_s_per_step"], 2)},
                     indent=1))


if __name__ == "__main__":
    main()
