"""Wall time and peak memory (RSS) of each stage of a `c4s experiment` run; prints JSON.

    python benchmarks/bench_experiment.py OUT                     # read a finished (or partial) run
    python benchmarks/bench_experiment.py OUT --config FILE       # run (or resume) it first, then read it

Every stage writes ``stage.json`` with its seconds and peak RSS when it finishes
(stages skipped by --resume keep the figures of the run that did them), so the
figures describe the documented size: examples/experiments/clip4sketch-real.yaml.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def stages(out: Path) -> list[dict]:
    marks = sorted(out.glob("01-data/*/stage.json")) + sorted(out.glob("[0-9][0-9]-*/stage.json"))
    rows = []
    for m in marks:
        rec = json.loads(m.read_text())
        rows.append({"stage": rec["stage"], "folder": str(m.parent.relative_to(out)), "seconds": rec.get("seconds"),
                     "peak_rss_mb": rec.get("peak_rss_mb")})
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="Experiment output folder.")
    ap.add_argument("--config", default=None, help="Run `c4s experiment --config FILE --resume --out OUT` first.")
    args = ap.parse_args()
    out = Path(args.out)
    wall = None
    if args.config:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "c4s_core", "experiment", "--config", args.config, "--out", str(out),
                        "--resume", "--no-progress"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = round(time.perf_counter() - t, 1)
    rows = stages(out)
    if not rows:
        sys.exit(f"{out}: no stage.json files (not an experiment folder, or nothing finished yet)")
    secs = [r["seconds"] for r in rows if r["seconds"] is not None]
    mem = [r["peak_rss_mb"] for r in rows if r["peak_rss_mb"] is not None]
    print(json.dumps({"benchmark": "experiment", "out": str(out), "cpus": os.cpu_count(), "wall_s": wall,
                      "stages_s_total": round(sum(secs), 1), "peak_rss_mb_max": max(mem) if mem else None,
                      "complete": (out / "results.json").is_file(), "stages": rows}, indent=2))
