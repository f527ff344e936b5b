"""Rank-1 (and AUC) of the training-free matchers on CUFS pairs (prints JSON).

HOG vs dlib_resnet, sketches as probes against photos, through the evaluate
pipeline: once with the sketches as given (CUFS is pre-aligned) and once with
each sketch randomly shifted, scaled and rotated. HOG is run both on the fixed
centre crop and on the dlib aligner's crops.

    .venv/bin/python benchmarks/bench_matchers.py [--limit 268] [--shift 0.1 --scale 0.1 --rotate 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("C4S_SHARED_DATA", ROOT.parent / "shared" / "data"))

RUNS = (("hog", "center"), ("hog", "dlib"), ("dlib_resnet", "center"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=None, help="pairs (identities) to use; default all")
    ap.add_argument("--shift", type=float, default=0.1)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--rotate", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cufs = SHARED / "cufs_train"
    if not cufs.is_dir():
        print(json.dumps({"skipped": f"{cufs} not found (set C4S_SHARED_DATA)"}))
        return
    from c4s_core.pipelines import evaluate

    ds = {"name": "paired_folder", "options": {"root": str(cufs)}}
    pert = {"shift": a.shift, "scale": a.scale, "rotate": a.rotate, "seed": a.seed}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, aligner in RUNS:
            for perturbed in (False, True):
                t = time.perf_counter()
                cfg = evaluate.Config(
                    probes=ds, gallery=ds, backbone={"name": backbone}, aligner={"name": aligner},
                    limit=a.limit, perturb=pert if perturbed else None,
                    out=Path(tmp) / f"{backbone}-{aligner}-{perturbed}",
                )
                r = evaluate.run(cfg, progress=False)
                rows.append({
                    "backbone": backbone, "aligner": aligner, "sketches": "perturbed" if perturbed else "as given",
                    "rank1": round(r["rank"]["1"], 4), "rank5": round(r["rank"]["5"], 4),
                    "tar@far1e-2": r["tar_at_far"]["1e-02"], "auc": round(r["auc"], 4),
                    "probes": r["counts"]["probes_used"], "no_face": r["counts"]["no_face"],
                    "backbone_no_face": r["counts"]["backbone_no_face"],
                    "seconds": round(time.perf_counter() - t, 1),
                })
    print(json.dumps({"data": "cufs_train", "perturb": pert, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
