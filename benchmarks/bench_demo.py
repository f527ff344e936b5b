"""Wall time of each `c4s demo` stage and of the whole demo (default config); prints JSON.

    python benchmarks/bench_demo.py [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="Demo folder (default: a temp folder).")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="c4s-bench-demo-")) / "demo"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "c4s_core", "demo", "--out", str(out), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t
    s = json.loads((out / "summary.json").read_text())
    stages = {}
    for marker in sorted((out / "experiment").glob("*/stage.json")):
        stages[marker.parent.name] = json.loads(marker.read_text()).get("seconds")
    print(json.dumps({"benchmark": "demo", "cpus": os.cpu_count(), "wall_s": round(wall, 1),
                      "stage_s": s["seconds"], "experiment_stage_s": stages, "best_arm": s["best_arm"]}))
