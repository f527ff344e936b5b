"""`c4s serve` throughput and latency (prints one JSON line).

Builds a gallery index of ``--rows`` random unit embeddings (10k by default)
for an exported model (a tiny conv net, or a full-width IR-18 at 112x112 with
``--backbone ir_18``), starts ``python -m c4s_core.serve`` on 127.0.0.1 in a
subprocess, and sends a fixed number of ``POST /search`` requests (one
112x112 PNG sketch, top-10) with httpx, first one at a time, then from
``--concurrency`` threads. Reports requests/s and p50/p95 latency for each,
and the server's own time per search. Stops by itself and stops the server.

    .venv/bin/python benchmarks/bench_serve.py [--rows 10000] [--requests 200] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(tmp: Path, backbone: str, threads: int) -> Path:
    import numpy as np
    import torch

    import c4s_core
    from c4s_core import export as ex

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if backbone == "ir_18":
        bb = c4s_core.get_registries().backbone.build("ir_18", {"device": "cpu"})
        net, meta = bb.model.eval(), ex.ExportMeta.from_backbone(bb, "ir_18")
    else:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(4),
                                  torch.nn.Flatten(), torch.nn.Linear(128, 128))
        meta = ex.ExportMeta(input_size=(32, 32), color_order="BGR", mean=(0.5,) * 3, std=(0.5,) * 3,
                             embedding_dim=128, backbone="tiny")
    rng = np.random.default_rng(0)
    parity = rng.integers(0, 256, (2, *meta.input_size, 3), dtype=np.uint8)
    return Path(ex.export_onnx(net, meta, tmp / f"{backbone}.onnx", parity, check_batches=(1, 2)).path)


def _index(tmp: Path, model: Path, rows: int) -> tuple[Path, int]:
    import numpy as np

    from c4s_core.export import file_sha256
    from c4s_core.index import GalleryIndex
    from c4s_core.runtime import OnnxEmbedder

    dim = OnnxEmbedder(model).embedding_dim
    gi = GalleryIndex.create(tmp / "gallery", model_hash=file_sha256(model), embedding_dim=dim,
                             model={"path": str(model)})
    emb = np.random.default_rng(1).standard_normal((rows, dim)).astype(np.float32)
    gi.add([f"id{i:07d}" for i in range(rows)], emb, [f"{i}.png" for i in range(rows)])
    gi.save()
    return tmp / "gallery", dim


def _probe() -> bytes:
    import io

    from PIL import Image

    import c4s_core

    ds = c4s_core.get_registries().dataset.build(
        "synthfaces", {"num_identities": 1, "images_per_identity": 0, "sketches_per_identity": 1, "size": 112})
    buf = io.BytesIO()
    Image.fromarray(ds[0].image).save(buf, format="PNG")
    return buf.getvalue()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _load(url: str, probe: bytes, n: int, concurrency: int, timeout: float) -> dict:
    import httpx

    lat: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(range(n))

    def worker():
        with httpx.Client(base_url=url, timeout=timeout) as c:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                t0 = time.perf_counter()
                r = c.post("/search", files={"image": ("probe.png", probe, "image/png")}, params={"top_k": 10})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                        server_ms.append(r.json()["elapsed_ms"])
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": n, "ok": len(lat), "errors": errors[:3],
            "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * _pct(lat, 0.5), 2) if lat else None,
            "p95_ms": round(1000 * _pct(lat, 0.95), 2) if lat else None,
            "server_p50_ms": round(_pct(server_ms, 0.5), 2) if server_ms else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000, help="gallery rows (random embeddings)")
    ap.add_argument("--requests", type=int, default=200, help="requests per load phase")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads in the second phase")
    ap.add_argument("--backbone", choices=["tiny", "ir_18"], default="tiny")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads in the server")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        model = _model(tmp, args.backbone, args.threads)
        index, dim = _index(tmp, model, args.rows)
        probe = _probe()
        setup_s = time.perf_counter() - t0
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "c4s_core.serve", "--index", str(index), "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads), "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            import httpx

            deadline = time.monotonic() + 60
            started = time.perf_counter()
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
                try:
                    if httpx.get(url + "/api/status", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start in 60 s")
                time.sleep(0.1)
            startup_s = time.perf_counter() - started
            _load(url, probe, 10, 1, args.timeout)  # warm-up
            serial = _load(url, probe, args.requests, 1, args.timeout)
            parallel = _load(url, probe, args.requests, args.concurrency, args.timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    print(json.dumps({
        "bench": "serve", "backbone": args.backbone, "gallery_rows": args.rows, "embedding_dim": dim,
        "top_k": 10, "probe": "112x112 PNG", "server_threads": args.threads, "setup_s": round(setup_s, 2),
        "server_startup_s": round(startup_s, 2), "serial": serial, "parallel": parallel,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
