"""`c4s serve` throughput and latency, also while photos are enrolled (prints one JSON line).

Builds a gallery index of ``--rows`` random unit embeddings (10k by default)
for an exported model (a tiny conv net, or a full-width IR-18 at 112x112 with
``--backbone ir_18``), starts ``python -m c4s_core.serve`` on 127.0.0.1 in a
subprocess, and sends a fixed number of ``POST /search`` requests (one
112x112 PNG sketch, top-10) with httpx: one at a time, then from
``--concurrency`` threads, then from as many threads *while a writer enrols*
``--enroll-rows`` new rows (with thumbnails) every ``--enroll-every`` seconds
into the served index, as ``c4s match add`` does (open, add, commit), the
last phase bounded by ``--requests`` and ``--max-seconds``.

Under load the checks are: zero errors; every answer is of one whole
generation: the rows it reports equal the rows that generation committed,
and no hit comes from a later generation (the writer's identities carry their
generation: ``w<gen>_<k>``, embedded near the probe so they reach the top-10).
Reports requests/s and p50/p95 latency per phase, the server's own time per
search, the generations seen and the violations (expected 0).

    .venv/bin/python benchmarks/bench_serve.py [--rows 10000] [--requests 400] [--concurrency 8]
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
    from c4s_core.gallery import GalleryIndex
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


def _load(url: str, probe: bytes, n: int, concurrency: int, timeout: float, max_seconds: float = 1e9,
          check=None) -> dict:
    """``n`` searches from ``concurrency`` threads (stopping after ``max_seconds``); ``check(answer)``
    returns a list of violations of an answer (the enrolment phase)."""
    import httpx

    lat: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    violations: list[str] = []
    generations: set[int] = set()
    lock = threading.Lock()
    todo = iter(range(n))
    stop_at = time.monotonic() + max_seconds

    def worker():
        with httpx.Client(base_url=url, timeout=timeout) as c:
            while True:
                with lock:
                    if next(todo, None) is None or time.monotonic() > stop_at:
                        return
                t0 = time.perf_counter()
                try:
                    r = c.post("/search", files={"image": ("probe.png", probe, "image/png")}, params={"top_k": 10})
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                        body = r.json()
                        server_ms.append(body["elapsed_ms"])
                        generations.add(int(body["index_generation"]))
                        if check is not None:
                            violations.extend(check(body))
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"concurrency": concurrency, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
           "error_examples": errors[:3], "wall_s": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * _pct(lat, 0.5), 2) if lat else None,
            "p95_ms": round(1000 * _pct(lat, 0.95), 2) if lat else None,
            "server_p50_ms": round(_pct(server_ms, 0.5), 2) if server_ms else None}
    if check is not None:
        out.update(generations_seen=len(generations), violations=len(violations), violation_examples=violations[:3])
    return out


class Enroller(threading.Thread):
    """Commits ``rows`` new rows (+ thumbnails) every ``every`` seconds into the served index, as
    ``c4s match add`` does; remembers the rows each generation committed."""

    def __init__(self, index: Path, probe_vec, rows: int, every: float):
        super().__init__(daemon=True)
        from c4s_core.gallery import GalleryIndex

        self.index, self.probe_vec, self.rows, self.every = index, probe_vec, rows, every
        gi = GalleryIndex.open(index)
        self.committed = {gi.generation: len(gi)}  # generation -> rows
        self.stop = threading.Event()
        self.commits = 0
        self.commit_ms: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        import numpy as np

        from c4s_core.gallery import GalleryIndex

        rng = np.random.default_rng(7)
        thumb = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        try:
            while not self.stop.wait(self.every):
                t0 = time.perf_counter()
                gi = GalleryIndex.open(self.index)
                g = gi.generation + 1
                vec = self.probe_vec[None] + 0.05 * rng.standard_normal((self.rows, self.probe_vec.shape[0]))
                name = gi.put_thumbnail(thumb)
                gi.add([f"w{g:05d}_{k}" for k in range(self.rows)], vec, [f"w{g}_{k}.png" for k in range(self.rows)],
                       thumbnails=[name] * self.rows)
                gi.save()
                self.committed[g] = len(gi)
                self.commits += 1
                self.commit_ms.append(1000 * (time.perf_counter() - t0))
        except Exception as err:  # noqa: BLE001 - reported in the JSON
            self.error = f"{type(err).__name__}: {err}"

    def check(self, answer: dict) -> list[str]:
        g, rows = int(answer["index_generation"]), int(answer["index_rows"])
        bad = []
        if self.committed.get(g, rows) != rows:
            bad.append(f"generation {g} answered with {rows} rows; it committed {self.committed[g]}")
        for h in answer["hits"]:
            ident = h["identity"]
            if ident.startswith("w") and int(ident[1:6]) > g:
                bad.append(f"generation {g} answered with {ident}, committed later")
        return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000, help="gallery rows (random embeddings)")
    ap.add_argument("--requests", type=int, default=200, help="requests per load phase")
    ap.add_argument("--concurrency", type=int, default=8, help="client threads in the parallel phases")
    ap.add_argument("--enroll-rows", type=int, default=20, help="rows each enrolment commits (0: no enrolment phase)")
    ap.add_argument("--enroll-every", type=float, default=0.5, help="seconds between enrolments")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="bound on the enrolment phase")
    ap.add_argument("--backend", choices=["exact", "int8"], default="exact", help="the server's search backend")
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
               "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads), "--log-level", "warning",
               "--backend", args.backend]
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
            enrolling = None
            if args.enroll_rows > 0:
                from c4s_core.runtime import OnnxEmbedder
                from c4s_core.serve import decode_upload

                vec = OnnxEmbedder(model).embed([decode_upload(probe)])[0]
                writer = Enroller(index, vec, args.enroll_rows, args.enroll_every)
                writer.start()
                try:
                    enrolling = _load(url, probe, args.requests, args.concurrency, args.timeout,
                                      args.max_seconds, writer.check)
                finally:
                    writer.stop.set()
                    writer.join(30)
                enrolling.update(commits=writer.commits, rows_per_commit=args.enroll_rows,
                                 commit_p50_ms=round(_pct(writer.commit_ms, 0.5), 1) if writer.commit_ms else None,
                                 writer_error=writer.error)
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
        "server_startup_s": round(startup_s, 2), "backend": args.backend, "serial": serial, "parallel": parallel,
        "parallel_while_enrolling": enrolling,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
