"""Evaluate throughput and ranking time (prints one JSON line).

- ``hog_embed``: HOG embedding alone, images/s on 112x112 crops;
- ``evaluate``: the whole ``c4s evaluate`` pipeline with HOG (read, align,
  embed, match, metrics, figures, report) on CUFS (268 sketches vs 268 photos
  plus ``--distractors`` faces_utk photos) when the shared data is there, else
  on generated pairs; images/s over every image read;
- ``ranking``: :func:`c4s_core.metrics.match` plus the verification metrics on
  random embeddings, 1,000 probes x 10,000 gallery (``--probes/--gallery``),
  with the peak memory numpy allocated (tracemalloc);
- ``ranking_big`` (with ``--big``): 2,000 x 20,000, to check the ~1 GB bound.

    .venv/bin/python benchmarks/bench_evaluate.py [--dim 512] [--distractors 500] [--big]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("C4S_SHARED_DATA", ROOT.parent / "shared" / "data"))


def bench_ranking(P: int, G: int, dim: int, block_mb: int) -> dict:
    from c4s_core import metrics

    rng = np.random.default_rng(0)
    pe = rng.normal(size=(P, dim)).astype(np.float32)
    ge = rng.normal(size=(G, dim)).astype(np.float32)
    pids = [f"i{k}" for k in range(P)]
    gids = [f"i{k}" for k in range(G)]  # every probe has one mate; the rest are distractors
    tracemalloc.start()
    t = time.perf_counter()
    r = metrics.match(pe, ge, pids, gids, block_bytes=block_mb << 20)
    t_match = time.perf_counter() - t
    curve, _ = r.cmc()
    v = metrics.verification(r.genuine, r.impostor)
    t_all = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "probes": P, "gallery": G, "dim": dim, "block_mb": block_mb,
        "match_s": round(t_match, 3), "match_and_metrics_s": round(t_all, 3),
        "pairs_per_s": round(P * G / t_all), "peak_mb": round(peak / 2**20, 1),
        "rank1_random": round(float(curve[0]), 4), "auc_random": round(v["auc"], 4),
    }


def bench_hog(n: int) -> dict:
    from c4s_core.plugins import get_registries

    hog = get_registries().backbone.build("hog")
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(n)]
    hog.embed(ims[:4])  # warm-up (imports)
    t = time.perf_counter()
    hog.embed(ims)
    dt = time.perf_counter() - t
    return {"images": n, "images_per_s": round(n / dt, 1)}


def bench_pipeline(tmp: Path, distractors: int) -> dict:
    from c4s_core.data.io import save_image
    from c4s_core.pipelines import evaluate

    cufs = SHARED / "cufs_train"
    if (cufs / "photos").is_dir():
        data, name = cufs, "cufs_train"
    else:
        data, name = tmp / "pairs", "generated"
        rng = np.random.default_rng(0)
        for k in range(200):
            photo = np.kron(rng.integers(0, 255, (25, 20, 3)), np.ones((10, 10, 1))).astype(np.uint8)
            save_image(data / "photos" / f"p{k}.png", photo)
            save_image(data / "sketches" / f"p{k}.png", 255 - photo)
    ds = {"name": "paired_folder", "options": {"root": str(data)}}
    dist = None
    utk = SHARED / "faces_utk" / "photos"
    if distractors and utk.is_dir():
        dist = {"name": "image_folder", "options": {"root": str(utk), "limit": distractors}}
    t = time.perf_counter()
    r = evaluate.run(evaluate.Config(probes=ds, gallery=ds, distractors=dist, out=tmp / "eval",
                                     subset_pattern=r"^(?P<subset>[^_]+)_"), progress=False)
    dt = time.perf_counter() - t
    c = r["counts"]
    n = c["probes"] + c["gallery"] + c["distractors"]
    return {"data": name, "images": n, "seconds": round(dt, 2), "images_per_s": round(n / dt, 1),
            "rank1": round(r["rank"]["1"], 4), "auc": round(r["auc"], 4),
            "subsets": {k: round(v["rank"]["1"], 4) for k, v in r["subsets"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--gallery", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--block-mb", type=int, default=256)
    ap.add_argument("--hog-images", type=int, default=200)
    ap.add_argument("--distractors", type=int, default=500, help="faces_utk photos added to the gallery")
    ap.add_argument("--big", action="store_true", help="also rank 2,000 x 20,000")
    a = ap.parse_args()
    out = {"cpu_count": os.cpu_count()}
    out["ranking"] = bench_ranking(a.probes, a.gallery, a.dim, a.block_mb)
    if a.big:
        out["ranking_big"] = bench_ranking(2000, 20000, a.dim, a.block_mb)
    out["hog_embed"] = bench_hog(a.hog_images)
    with tempfile.TemporaryDirectory() as tmp:
        out["evaluate"] = bench_pipeline(Path(tmp), a.distractors)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
