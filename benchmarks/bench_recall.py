"""Recall on face embeddings: exact, int8, FAISS IVF/HNSW and Milvus at 100k and 1M (prints JSON).

Galleries of *face* embeddings, not random vectors: a trained matcher
(``--matcher``, default the fine-tuned dlib_r29 of ``docs/pretrained-real.md``)
embeds the dlib-aligned real photos of that experiment's data stage
(``--aligned``: crops of the shared CUFS, FS2K and LFW photos, outside the
repository): the 1,228 CUFS/FS2K photos (``--flip``: and their mirror
images, two images per identity) and up to 1,505 LFW distractors (``--limit``). Probes are
the 246 real artist-drawn sketches of the *held-out test identities* (never
seen in training); their mates are in every gallery. The galleries are filled
up to ``--rows`` with synthetic distractor faces drawn from a Gaussian fitted
to the real photo embeddings (mean and full covariance, then L2-normalised):
the density of a face embedding space, no identity repeated; labelled as such.

Per gallery size and method: mate rank-1 and mate-in-top-10 (the probe's
mate), recall@10 against exact (overlap of the top-10 identities), the share
of probes whose top-10 equals exact, ms per query (single query, median) and
build time. Embeddings are computed once and cached (``--cache``, outside the
repository)::

    nice -n 15 python benchmarks/bench_recall.py --rows 100000,1000000 --out docs/results/gallery-recall.json

The comparison across methods (what each index loses against exact) is the
point; mate rank-1 falls as the gallery grows, as it must.
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

ROOT = Path(__file__).resolve().parents[1]
ALIGNED = ROOT / "c4s-out" / "pretrained-real" / "01-data"
DEFAULT_MATCHER = ROOT / "c4s-out" / "pretrained-real" / "04-matcher-real" / "last"


def embed_all(matcher: Path, aligned: Path, cache: Path, threads: int, limit: int | None, flip: bool) -> dict:
    """Embeddings of the aligned photos (+ mirrors of the CUFS/FS2K ones) and the held-out sketches,
    cached in ``cache`` (.npz)."""
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["matcher"]) == str(matcher) and str(z["aligned"]) == str(aligned) and bool(z["flip"]) == flip \
                and len(z["distractors"]) == len(sorted((aligned / "aligned-distractors").glob("*/photo_0.png"))[:limit]):
            return {k: z[k] for k in z.files}
    import torch

    import c4s_core
    from c4s_core.data.io import load_image

    torch.set_num_threads(threads)
    bb = c4s_core.get_registries().backbone.build("matcher", {"path": str(matcher), "device": "cpu"})
    if not (aligned / "test.jsonl").is_file():
        raise SystemExit(f"{aligned}: no test.jsonl; run the data stage of examples/experiments/pretrained-real.yaml "
                         "(it aligns the shared photos with dlib) or pass --aligned")
    test = [json.loads(line) for line in (aligned / "test.jsonl").read_text().splitlines() if line.strip()]
    sketches = [t for t in test if t["modality"] == "sketch"]
    mates = sorted((aligned / "aligned-train").glob("*/photo_0.png"))
    others = sorted((aligned / "aligned-distractors").glob("*/photo_0.png"))[:limit]

    def run(paths, flip: bool = False) -> np.ndarray:
        out = [np.zeros((0, bb.embedding_dim), np.float32)]
        for i in range(0, len(paths), 64):
            ims = [np.asarray(load_image(p)) for p in paths[i:i + 64]]
            out.append(bb.embed([np.ascontiguousarray(im[:, ::-1]) for im in ims] if flip else ims))
        return np.concatenate(out)

    t0 = time.perf_counter()
    out = {"matcher": np.array(str(matcher)), "aligned": np.array(str(aligned)),
           "flip": np.array(flip), "mate_names": np.array([p.parent.name for p in mates]), "mates": run(mates),
           "mates_flip": run(mates, True) if flip else np.zeros((0, bb.embedding_dim), np.float32),
           "probe_names": np.array([t["identity"] for t in sketches]), "probes": run([Path(t["path"]) for t in sketches]),
           "other_names": np.array([p.parent.name for p in others]), "distractors": run(others)}
    out["embed_s"] = np.array(time.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def gallery(z: dict, rows: int, seed: int = 0) -> tuple[np.ndarray, list[str], dict]:
    """(embeddings, identity per row, facts): real rows first, then synthetic distractors."""
    names = [f"pair:{n}" for n in z["mate_names"]]
    others = [f"lfw:{n}" for n in z["other_names"]]
    real = np.concatenate([z["mates"], z["mates_flip"], z["distractors"]]).astype(np.float32)
    ids = names + (names if len(z["mates_flip"]) else []) + others
    n_syn = max(0, rows - len(real))
    rng = np.random.default_rng(seed)
    base = np.concatenate([z["mates"], z["distractors"]]).astype(np.float64)
    mean, cov = base.mean(0), np.cov(base, rowvar=False)
    syn = rng.multivariate_normal(mean, cov, size=n_syn, method="cholesky").astype(np.float32)
    syn /= np.linalg.norm(syn, axis=1, keepdims=True)
    emb = np.concatenate([real, syn]) if n_syn else real[:rows]
    ids = (ids + [f"synthetic:{i:07d}" for i in range(n_syn)])[:rows]
    return emb, ids, {"real_rows": min(len(real), rows), "synthetic_rows": n_syn, "mates": len(names)}


def evaluate(hits, truth, mates: list[str]) -> dict:
    top1 = np.mean([bool(h) and h[0].identity == m for h, m in zip(hits, mates, strict=True)])
    top10 = np.mean([m in {x.identity for x in h[:10]} for h, m in zip(hits, mates, strict=True)])
    rec = np.mean([len({x.identity for x in h} & {x.identity for x in t}) / max(1, len(t))
                   for h, t in zip(hits, truth, strict=True)])
    same = np.mean([[x.identity for x in h] == [x.identity for x in t] for h, t in zip(hits, truth, strict=True)])
    return {"mate_rank1": round(float(top1), 4), "mate_in_top10": round(float(top10), 4),
            "recall_at_10_vs_exact": round(float(rec), 4), "top10_identical_to_exact": round(float(same), 4)}


def timed(fn, q: np.ndarray, reps: int) -> float:
    ts = []
    for i in range(reps):
        t = time.perf_counter()
        fn(q[i % len(q):i % len(q) + 1])
        ts.append(time.perf_counter() - t)
    return round(1000 * sorted(ts)[len(ts) // 2], 2)


def bench_size(z: dict, rows: int, methods: list[str], tmp: Path, reps: int) -> list[dict]:
    from c4s_core.gallery import GalleryIndex, create_store, open_store

    emb, ids, facts = gallery(z, rows)
    q = z["probes"].astype(np.float32)
    mates = [f"pair:{n}" for n in z["probe_names"]]
    gi = GalleryIndex.create(tmp / f"g{rows}", model_hash="bench-recall", embedding_dim=emb.shape[1])
    gi.add(ids, emb)
    gi.save()
    gi = GalleryIndex.open(tmp / f"g{rows}")
    truth = gi.search(q, top_k=10)
    out = [{"rows": rows, "dim": int(emb.shape[1]), **facts, "probes": len(q)}]
    nlist = 1024 if rows <= 200_000 else 4096
    for m in methods:
        name, _, arg = m.partition(":")
        row = {"rows": rows, "method": m}
        t0 = time.perf_counter()
        if name in ("exact", "int8"):
            kw = {"backend": name}
            gi.search(q[:1], top_k=10, **kw)
            search = lambda x, kw=kw: gi.search(x, top_k=10, **kw)  # noqa: E731
        elif name == "faiss":
            factory = arg.replace("NLIST", str(nlist))
            probe = 16 if factory.startswith("IVF") else 128
            kw = {"backend": "faiss", "faiss_factory": factory, "faiss_nprobe": probe}
            gi.search(q[:1], top_k=10, **kw)
            row["faiss_nprobe_or_efSearch"] = probe
            search = lambda x, kw=kw: gi.search(x, top_k=10, **kw)  # noqa: E731
        elif name == "milvus":
            index_type = arg or "FLAT"
            uri = f"milvus:{tmp}/m{rows}-{index_type}.db?collection=g&index_type={index_type}&nlist={nlist}&nprobe=16"
            try:
                st = create_store(uri, model_hash="bench-recall", embedding_dim=emb.shape[1])
            except Exception as err:  # noqa: BLE001 - pymilvus not installed: report, go on
                out.append({**row, "skipped": f"{type(err).__name__}: {err}"})
                continue
            st.config.batch_rows = 20_000
            st.add(ids, emb)
            st.save()
            st.close()
            st = open_store(uri)
            search = lambda x, st=st: st.search(x, top_k=10)  # noqa: E731
        else:
            raise SystemExit(f"unknown method {m!r}")
        row["build_s"] = round(time.perf_counter() - t0, 1)
        hits = search(q)
        row.update(evaluate(hits, truth, mates))
        row["ms_per_query_single"] = timed(search, q, reps)
        out.append(row)
        print(json.dumps(row), flush=True)
        if name == "milvus":
            st.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--methods", default="exact,int8,faiss:IVFNLIST,Flat,faiss:HNSW32,milvus:FLAT,milvus:IVF_FLAT,milvus:HNSW")
    ap.add_argument("--matcher", type=Path, default=DEFAULT_MATCHER)
    ap.add_argument("--aligned", type=Path, default=ALIGNED,
                    help="the data stage of the pretrained-real experiment: dlib-aligned crops of the shared photos")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "c4s" / "bench-recall-embeddings.npz")
    ap.add_argument("--limit", type=int, default=None, help="at most this many LFW distractor photos (a quick run)")
    ap.add_argument("--flip", action="store_true", help="also enrol each CUFS/FS2K photo's mirror image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args()
    methods = []
    for part in a.methods.split(","):  # FAISS descriptions contain commas: glue them back
        if methods and methods[-1].startswith("faiss:") and not part.startswith(("exact", "int8", "faiss:", "milvus")):
            methods[-1] += "," + part
        else:
            methods.append(part)
    z = embed_all(a.matcher, a.aligned, a.cache, a.threads, a.limit, a.flip)
    import torch

    torch.set_num_threads(a.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(a.threads)
    except ImportError:
        pass
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in a.rows.split(",")):
            res += bench_size(z, n, methods, Path(tmp), a.reps)
    doc = {"bench": "recall", "matcher": str(a.matcher.relative_to(ROOT)) if a.matcher.is_relative_to(ROOT) else str(a.matcher),
           "embedding_dim": int(z["probes"].shape[1]), "real_photos": int(len(z["mates"]) + len(z["distractors"])),
           "real_rows": "CUFS+FS2K photos" + (" (each also mirrored)" if a.flip else "") + " + LFW distractors",
           "probes": f"{len(z['probes'])} real sketches (CUFS+FS2K) of the held-out test identities, mates = their photos",
           "synthetic": "distractors drawn from a Gaussian fitted to the real photo embeddings, L2-normalised",
           "embed_s": float(z["embed_s"]), "threads": a.threads, "cpu": platform.processor() or platform.machine(),
           "load_avg_1m": round(os.getloadavg()[0], 2), "results": res}
    text = json.dumps(doc, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
