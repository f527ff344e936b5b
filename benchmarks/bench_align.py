"""Aligned faces per second for the `center` and `dlib` aligners (prints JSON).

Images: CUFS train photos and sketches from ../shared/data (or C4S_SHARED_DATA),
decoded up front so only alignment is timed; one process, then `--workers`
processes (default 2, the cores of the dev machine) each aligning a share.

    .venv/bin/python benchmarks/bench_align.py [--n 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("C4S_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load(n: int) -> list[np.ndarray]:
    from c4s_core.data.io import list_images, load_image

    cufs = SHARED / "cufs_train"
    if not cufs.is_dir():  # no data: random images (dlib then measures its no-face path)
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (250, 200, 3), dtype=np.uint8) for _ in range(n)]
    files = list_images(cufs / "photos")[: n // 2] + list_images(cufs / "sketches")[: n - n // 2]
    return [load_image(f) for f in files]


def align_all(args):
    name, images = args
    import c4s_core
    from c4s_core.align import summarize

    al = c4s_core.get_registries().aligner.build(name)
    al.align(images[:1])  # load models outside the timing
    t = time.perf_counter()
    res = al.align(images)
    return time.perf_counter() - t, summarize(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    images = load(a.n)
    out = {"images": len(images), "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
           "source": "cufs_train" if (SHARED / "cufs_train").is_dir() else "random"}
    for name in ("center", "dlib"):
        secs, counts = align_all((name, images))
        row = {"faces_per_s_1proc": round(len(images) / secs, 1), "counts": counts}
        if a.workers > 1:
            shards = [images[i :: a.workers] for i in range(a.workers)]
            t = time.perf_counter()
            with ProcessPoolExecutor(a.workers) as ex:
                secs = [r[0] for r in ex.map(align_all, [(name, s) for s in shards])]
            # aligned faces over the slowest worker's aligning time (models already loaded)
            row[f"faces_per_s_{a.workers}proc"] = round(len(images) / max(secs), 1)
            # the same, wall clock including process start-up, imports and model loading
            row[f"faces_per_s_{a.workers}proc_wall"] = round(len(images) / (time.perf_counter() - t), 1)
        out[name] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
