"""Deployed matching speed (prints one JSON line).

- embeddings/s on CPU, onnxruntime vs torch eager, at batch 1 and 64, for a
  tiny conv net and for a full-width IR-18 at 112x112 (if ``ir_18`` is
  registered); the ONNX file is the one ``c4s export`` writes (uint8 in,
  preprocessing and L2 norm inside), torch runs the same module;
- exact gallery search latency on a random 100k x 512 gallery (float32 and
  float16 storage), 1 and 16 queries, top-10, chunk 65536 (every backend, 1M
  rows and recall: benchmarks/bench_search.py).

    .venv/bin/python benchmarks/bench_export.py [--threads 2] [--rows 100000] [--no-ir18]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _rate(fn, n_images: int, min_seconds: float = 1.0, max_reps: int = 50) -> float:
    """Images/s from the median time of one call (robust to other load on the machine)."""
    fn()  # warm-up
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - t_start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_images / sorted(times)[len(times) // 2]


def _bench_model(name: str, model, meta, tmp: Path, threads: int, batches=(1, 64), int8: bool = False) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from c4s_core import export as ex

    h, w = meta.input_size
    rng = np.random.default_rng(0)
    parity = rng.integers(0, 256, (8, h, w, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    res = ex.export_onnx(model, meta, tmp / f"{name}.onnx", parity, check_batches=(1, 7), threads=threads)
    export_s = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # idle onnxruntime workers spin by default, stealing the cores torch is timed on next
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(res.path, so, providers=["CPUExecutionProvider"])
    deployed = ex.build_deployable(model, meta)
    row = {"model": name, "input_size": [h, w], "embedding_dim": meta.embedding_dim,
           "params": int(sum(p.numel() for p in model.parameters())), "onnx_mb": round(res.size_bytes / 2**20, 2),
           "export_s": round(export_s, 2), "parity_max_abs_diff": res.max_abs_diff}
    int8_sess = {}
    if int8:  # c4s export's own quantisers; static calibrates on 32 other images
        ref = sess.run(None, {"images": parity})[0]
        calib = rng.integers(0, 256, (32, h, w, 3), dtype=np.uint8)
        for mode in ("dynamic", "static"):
            q = tmp / f"{name}.int8-{mode}.onnx"
            ex.quantize_int8(res.path, q, mode=mode, calibration=calib if mode == "static" else None)
            int8_sess[mode] = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
            got = int8_sess[mode].run(None, {"images": parity})[0]
            row[f"int8_{mode}_min_cosine"] = round(float((ref * got).sum(1).min()), 5)
    for b in batches:
        x = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        xt = torch.from_numpy(x)

        def run_torch(xt=xt):
            with torch.inference_mode():
                deployed(xt)

        row[f"onnxruntime_per_s_b{b}"] = round(_rate(lambda x=x: sess.run(None, {"images": x}), b), 1)
        row[f"torch_eager_per_s_b{b}"] = round(_rate(run_torch, b), 1)
        row[f"speedup_b{b}"] = round(row[f"onnxruntime_per_s_b{b}"] / row[f"torch_eager_per_s_b{b}"], 2)
        for mode, qs in int8_sess.items():
            row[f"onnxruntime_int8_{mode}_per_s_b{b}"] = round(_rate(lambda x=x, qs=qs: qs.run(None, {"images": x}), b), 1)
    return row


def _bench_search(rows: int, dim: int, tmp: Path) -> list[dict]:
    import numpy as np

    from c4s_core.index import GalleryIndex

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"id{i:06d}" for i in range(rows)]
    out = []
    for dtype in ("float32", "float16"):
        gi = GalleryIndex.create(tmp / f"g-{dtype}", model_hash="bench", embedding_dim=dim, dtype=dtype)
        t0 = time.perf_counter()
        gi.add(ids, emb)
        gi.save()
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gi = GalleryIndex.open(tmp / f"g-{dtype}", mmap=True)
        open_s = time.perf_counter() - t0
        for q in (1, 16):
            queries = emb[rng.integers(0, rows, q)] + 0.01 * rng.standard_normal((q, dim), dtype=np.float32)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                hits = gi.search(queries, top_k=10, chunk_size=65536)
                times.append(time.perf_counter() - t0)
            out.append({"rows": rows, "dim": dim, "dtype": dtype, "queries": q, "top_k": 10,
                        "search_ms_median": round(1000 * sorted(times)[len(times) // 2], 2),
                        "open_ms": round(1000 * open_s, 1), "save_s": round(save_s, 2),
                        "top1_ok": hits[0][0].score > 0.99})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and onnxruntime threads")
    ap.add_argument("--rows", type=int, default=100_000, help="gallery rows for the search benchmark")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--no-ir18", action="store_true", help="skip the full-width backbone")
    ap.add_argument("--backbone", default="ir_18", help="full-width backbone to time (e.g. ir_50)")
    ap.add_argument("--batches", default="1,64", help="batch sizes, comma-separated (issue goal: 1,32)")
    ap.add_argument("--int8", action="store_true", help="also time int8 quantisations (dynamic and static QDQ)")
    a = ap.parse_args()

    import torch

    import c4s_core
    from c4s_core.export import ExportMeta

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    models = []
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.PReLU(16), torch.nn.Conv2d(16, 32, 3, 2, 1),
                               torch.nn.PReLU(32), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(512, 128)).eval()
    models.append(("tiny", tiny, ExportMeta((112, 112), "BGR", (0.5,) * 3, (0.5,) * 3, 128, "tiny")))
    regs = c4s_core.get_registries()
    skipped = None
    if a.no_ir18:
        skipped = "ir_18: --no-ir18"
    elif a.backbone not in regs.backbone:
        skipped = f"{a.backbone} not registered"
    else:
        bb = regs.backbone.build(a.backbone, {"device": "cpu"})
        models.append((a.backbone, bb.model.eval(), ExportMeta.from_backbone(bb, a.backbone)))
    with tempfile.TemporaryDirectory() as tmp:
        batches = tuple(int(b) for b in a.batches.split(","))
        rows = [_bench_model(n, m, meta, Path(tmp), a.threads, batches, a.int8) for n, m, meta in models]
        search = _bench_search(a.rows, a.dim, Path(tmp))
    print(json.dumps({
        "bench": "export", "threads": a.threads, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "embedding": rows, "search": search, "skipped": skipped,
    }))


if __name__ == "__main__":
    main()
