"""Rendering speed of the embedded ``synthfaces`` dataset, single process.

Prints JSON: images per second over photos and sketches (all sketch styles) at
the given size. No assertions: figures, not tests.

    python benchmarks/bench_synthfaces.py [--size 112] [--identities 100]
"""

from __future__ import annotations

import argparse
import json
import time

from c4s_plugins.synthfaces import SKETCH_STYLES, SynthFaces, SynthFacesConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=112, help="Image side in pixels.")
    ap.add_argument("--identities", type=int, default=100, help="Identities to render (4 images each).")
    a = ap.parse_args()
    cfg = SynthFacesConfig(num_identities=a.identities, size=a.size, images_per_identity=2,
                           sketches_per_identity=2, styles=list(SKETCH_STYLES))
    ds = SynthFaces(cfg)
    ds[0]  # warm caches outside the timing
    counts = {"photo": 0, "sketch": 0}
    times = {"photo": 0.0, "sketch": 0.0}
    t_all = time.perf_counter()
    for i in range(len(ds)):
        t = time.perf_counter()
        s = ds[i]
        times[s.modality] += time.perf_counter() - t
        counts[s.modality] += 1
    total = time.perf_counter() - t_all
    print(json.dumps({
        "images_per_s": round(len(ds) / total, 1),
        "photos_per_s": round(counts["photo"] / times["photo"], 1),
        "sketches_per_s": round(counts["sketch"] / times["sketch"], 1),
        "size": a.size,
        "n": len(ds),
        "styles": list(SKETCH_STYLES),
        "processes": 1,
    }))


if __name__ == "__main__":
    main()
