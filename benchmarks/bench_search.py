"""Gallery search latency, memory and agreement with exact search per backend (prints JSON).

Random unit 512-d embeddings (no cluster structure: the hard case for
approximate indexes; face embeddings are in ``bench_recall.py``), queries = a
gallery row + noise. Per gallery size and backend: build/open time, median ms
per query for 1 query and for a batch of 16 (per query), the memory of the
backend's structure, recall@10 against the exact float32 top-10, the share of
queries whose top-10 (identities, order and scores to 1e-5) is identical to
exact, and the share whose source row's identity is rank 1. Measured side by
side in one run: the bandwidth floor (one pass over the gallery's float32
bytes, and over a quarter of them: what int8 must read), and
``int8_vs_exact_single`` (the issue-20 goal: <= 0.33 and < 50 ms at 1M x 512).

    python benchmarks/bench_search.py --rows 100000,1000000 --threads 2
    python benchmarks/bench_search.py --rows 1000000 --backends exact,int8,bf16,faiss:IVF1024,Flat

Also the cost of verifying what is read (issue 16): per float32 gallery, open
loaded (read + sha256 + parse) beside a plain ``np.load``, open memory-mapped
(header and size only), the first use of the mapped rows (one sha256 pass)
and a reopen in the same process (remembered: no hash). ``--open-only`` skips
the search backends.

    python benchmarks/bench_search.py --rows 100000 --open-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT = "exact,int8,exact-f16,bf16,faiss:Flat,faiss:IVF1024,Flat,faiss:HNSW32"


def parse_backends(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):  # FAISS descriptions contain commas: glue them back
        if out and out[-1].startswith("faiss:") and not part.startswith(("exact", "int8", "bf16", "faiss:")):
            out[-1] += "," + part
        else:
            out.append(part)
    return out


def median_ms(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * sorted(ts)[len(ts) // 2]


def bandwidth_floor(emb: np.ndarray, reps: int) -> dict:
    """Milliseconds for one pass over the gallery's bytes (a float32 sum: streaming reads, no writes),
    and over its first quarter (the bytes int8 codes occupy): the memory-bound floor of one query."""
    quarter = emb[: len(emb) // 4]
    full = median_ms(lambda: emb.sum(dtype=np.float32), reps)
    part = median_ms(lambda: quarter.sum(dtype=np.float32), reps)
    gb = emb.nbytes / 1e9
    return {"bytes": int(emb.nbytes), "one_pass_ms": round(full, 2), "quarter_pass_ms": round(part, 2),
            "gb_per_s": round(gb / (full / 1000), 2)}


def structure_bytes(gi, kw: dict) -> int:
    """Bytes the backend holds besides the (memory-mapped) float32 rows."""
    cache = gi._cache
    if kw["backend"] == "int8":
        return gi.int8_codes().nbytes
    if kw["backend"] == "bf16":
        return int(cache["bf16"].numel() * 2)
    if kw["backend"] == "faiss":
        import faiss

        return int(faiss.serialize_index(cache[("faiss", kw["faiss_factory"])]).nbytes)
    return 0


def identical(a, b) -> bool:
    return [h.identity for h in a] == [h.identity for h in b] and np.allclose(
        [h.score for h in a], [h.score for h in b], atol=1e-5)


def bench(rows: int, dim: int, backends: list[str], tmp: Path, reps: int, hnsw_max: int) -> list[dict]:
    from c4s_core.gallery import GalleryIndex

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"id{i:07d}" for i in range(rows)]
    src = rng.integers(0, rows, 16)
    q = emb[src] + 0.05 * rng.standard_normal((16, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    galleries = {}
    for dtype in ("float32", "float16"):
        if dtype == "float16" and "exact-f16" not in backends:
            continue
        gi = GalleryIndex.create(tmp / f"g{rows}-{dtype}", model_hash="bench", embedding_dim=dim, dtype=dtype)
        gi.add(ids, emb)
        gi.save()
        galleries[dtype] = tmp / f"g{rows}-{dtype}"
    del emb
    ref_gi = GalleryIndex.open(galleries["float32"])
    ref = ref_gi.search(q, top_k=10)
    truth = [{h.identity for h in r} for r in ref]
    out = [{"rows": rows, "dim": dim, "bandwidth_floor": bandwidth_floor(ref_gi.embeddings, reps)}]
    for b in backends:
        name, _, factory = b.partition(":")
        if name == "faiss" and factory.startswith("HNSW") and rows > hnsw_max:
            out.append({"rows": rows, "backend": b, "skipped": f"HNSW build on more than {hnsw_max} rows (--hnsw-max)"})
            continue
        kw: dict = {"backend": "exact" if name == "exact-f16" else name}
        if name == "faiss":
            kw.update(faiss_factory=factory, faiss_nprobe=64 if factory.startswith("HNSW") else 16)
        t = time.perf_counter()
        gi = GalleryIndex.open(galleries["float16" if name == "exact-f16" else "float32"])
        gi.search(q[:1], top_k=10, **kw)  # builds and caches the backend's structure (bf16 copy, FAISS index)
        build_s = time.perf_counter() - t
        one = median_ms(lambda gi=gi, kw=kw: gi.search(q[:1], top_k=10, **kw), reps)
        batch = median_ms(lambda gi=gi, kw=kw: gi.search(q, top_k=10, **kw), max(2, reps // 2)) / len(q)
        res = gi.search(q, top_k=10, **kw)
        got = [{h.identity for h in r} for r in res]
        recall = float(np.mean([len(a & t) / len(t) for a, t in zip(got, truth, strict=True)]))
        mate = float(np.mean([bool(r) and r[0].identity == ids[i] for r, i in zip(res, src, strict=True)]))
        same = float(np.mean([identical(a, t) for a, t in zip(res, ref, strict=True)]))
        row = {"rows": rows, "dim": dim, "backend": b, "build_or_open_s": round(build_s, 2),
               "ms_per_query_single": round(one, 2), "ms_per_query_batch16": round(batch, 2),
               "structure_mb": round(structure_bytes(gi, kw) / 2**20, 1),
               "recall_at_10": round(recall, 4), "top10_identical_to_exact": round(same, 4),
               "mate_at_rank1": round(mate, 4)}
        if name == "int8":
            row["int8_stats"] = dict(gi.int8_codes().stats)
        out.append(row)
        del gi
    by = {r.get("backend"): r for r in out}
    if "exact" in by and "int8" in by:
        out[0]["int8_vs_exact_single"] = round(by["int8"]["ms_per_query_single"] / by["exact"]["ms_per_query_single"], 3)
        out[0]["int8_vs_exact_batch16"] = round(by["int8"]["ms_per_query_batch16"] / by["exact"]["ms_per_query_batch16"], 3)
    return out


def bench_open(rows: int, dim: int, tmp: Path, reps: int) -> dict:
    """Seconds to open a float32 gallery with and without the integrity checks (best of ``reps``)."""
    import c4s_core.gallery.integrity as ig
    from c4s_core.gallery import GalleryIndex

    folder = tmp / f"open{rows}"
    gi = GalleryIndex.create(folder, model_hash="bench", embedding_dim=dim)
    emb = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    gi.add([f"id{i:07d}" for i in range(rows)], emb)
    del emb
    t = time.perf_counter()
    gi.save()
    save_s = time.perf_counter() - t
    del gi
    emb_file = folder / json.loads((folder / "index.json").read_text())["embeddings_file"]

    def best(fn) -> float:
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return round(min(ts), 4)

    def first_use():
        ig.VERIFIED.clear()
        GalleryIndex.open(folder, mmap=True).verify(thumbnails=False)

    GalleryIndex.open(folder)  # warm the page cache: measure hashing, not the disk
    return {"rows": rows, "dim": dim, "bytes": emb_file.stat().st_size, "save_s": round(save_s, 3),
            "np_load_s": best(lambda: np.load(emb_file)),
            "open_loaded_verified_s": best(lambda: GalleryIndex.open(folder)),
            "open_mmap_s": best(lambda: GalleryIndex.open(folder, mmap=True)),
            "open_mmap_first_use_verified_s": best(first_use),
            "reopen_mmap_verified_same_process_s": best(lambda: GalleryIndex.open(folder, mmap=True).verify(False))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="100000,1000000", help="gallery sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--backends", default=DEFAULT, help=f"comma-separated (default {DEFAULT})")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch, BLAS and FAISS threads")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--open-only", action="store_true", help="only the open/verification timings")
    ap.add_argument("--hnsw-max", type=int, default=200_000, help="skip HNSW builds above this many rows (slow on CPU)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(a.threads)
    except ImportError:
        pass
    backends = parse_backends(a.backends)
    res, opens = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in a.rows.split(",")):
            opens.append(bench_open(n, a.dim, Path(tmp), max(1, min(a.reps, 3))))
            if not a.open_only:
                res += bench(n, a.dim, backends, Path(tmp), a.reps, a.hnsw_max)
    import resource

    from c4s_core.gallery import kernel

    print(json.dumps({"bench": "search", "threads": a.threads, "int8_kernel": kernel.available(), "cpu": platform.processor() or platform.machine(),
                      "goal": "int8 single query <= 0.33x exact and < 50 ms at 1M x 512",
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "load_avg_1m": round(os.getloadavg()[0], 2), "open": opens, "results": res}, indent=2))


if __name__ == "__main__":
    main()
