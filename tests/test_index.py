"""Gallery index: exact chunked search, add/remove, model check, atomic saves, and
the `match` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import c4s_core
from c4s_core.errors import MissingDependencyError
from c4s_core.index import GalleryIndex, IndexError_, ModelMismatchError, exact_search


def unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make(tmp_path, n=50, d=16, dtype="float32", per_id=1, name="g"):
    gi = GalleryIndex.create(tmp_path / name, model_hash="m" * 64, embedding_dim=d, dtype=dtype,
                             model={"path": "model.onnx"})
    ids = [f"id{i // per_id:03d}" for i in range(n)]
    emb = unit(n, d)
    gi.add(ids, emb, [f"{i}.png" for i in range(n)])
    gi.save()
    return gi, ids, emb


def brute(emb, ids, q, k):
    """Best row per identity, by sorting everything."""
    out = []
    for s in q @ emb.T:
        best = {}
        for r in np.argsort(-s, kind="stable"):
            best.setdefault(ids[r], float(s[r]))
        out.append(sorted(best.items(), key=lambda t: -t[1])[:k])
    return out


def test_query_equal_to_an_enrolled_vector_finds_it(tmp_path):
    gi, ids, emb = make(tmp_path)
    hits = GalleryIndex.open(tmp_path / "g").search(emb[[3, 17]], top_k=5)
    assert [h[0].identity for h in hits] == [ids[3], ids[17]]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5) and hits[0][0].source == "3.png"
    assert len(hits[0]) == 5 and all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:], strict=False))


@pytest.mark.parametrize("per_id", [1, 3])
def test_chunked_search_equals_unchunked_and_brute_force(tmp_path, per_id):
    gi, ids, emb = make(tmp_path, n=60, per_id=per_id)
    q = unit(7, seed=5)
    full = gi.search(q, top_k=6, chunk_size=10_000)
    want = brute(emb, ids, q, 6)
    for chunk in (1, 7, 13, 60):
        got = gi.search(q, top_k=6, chunk_size=chunk)
        assert [[h.identity for h in r] for r in got] == [[h.identity for h in r] for r in full]
        np.testing.assert_allclose([[h.score for h in r] for r in got], [[h.score for h in r] for r in full], atol=1e-6)
    assert [[h.identity for h in r] for r in full] == [[i for i, _ in r] for r in want]
    np.testing.assert_allclose([[h.score for h in r] for r in full], [[s for _, s in r] for r in want], atol=1e-5)
    # identities are unique within a result
    assert all(len({h.identity for h in r}) == len(r) for r in full)


def test_exact_search_on_memmap_matches_argsort(tmp_path):
    emb = unit(200, 8, seed=1)
    np.save(tmp_path / "e.npy", emb)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    q = unit(3, 8, seed=2)
    s, r = exact_search(mm, q, 5, chunk_size=17)
    ref = np.argsort(-(q @ emb.T), axis=1)[:, :5]
    assert (r == ref).all()
    np.testing.assert_allclose(s, np.take_along_axis(q @ emb.T, ref, 1), atol=1e-6)


def test_float16_storage(tmp_path):
    gi, ids, emb = make(tmp_path, dtype="float16")
    again = GalleryIndex.open(tmp_path / "g")
    assert again.embeddings.dtype == np.float16
    assert again.search(emb[9], top_k=1)[0][0].identity == ids[9]
    with pytest.raises(IndexError_, match="float64"):
        GalleryIndex.create(tmp_path / "x", model_hash="m", embedding_dim=4, dtype="float64")


def test_add_remove_replace(tmp_path):
    gi, ids, emb = make(tmp_path, n=10)
    gi = GalleryIndex.open(tmp_path / "g")
    new = unit(2, seed=9)
    gi.add(["new_a", "new_b"], new, ["a.png", "b.png"])
    gi.save()
    gi = GalleryIndex.open(tmp_path / "g")
    assert len(gi) == 12 and "new_a" in gi.identities()
    assert gi.search(new[1], top_k=1)[0][0].identity == "new_b"
    with pytest.raises(IndexError_, match="already in"):
        gi.add(["new_a"], new[:1])
    info = gi.add(["new_a"], new[1:2], ["a2.png"], replace=True)
    assert info["rows_replaced"] == 1
    assert gi.remove(["new_b", ids[0]]) == 2
    with pytest.raises(IndexError_, match="not in"):
        gi.remove(["nobody"])
    assert gi.remove(["nobody"], missing_ok=True) == 0
    gi.save()
    gi = GalleryIndex.open(tmp_path / "g", verify=True)
    assert len(gi) == 10 and "new_b" not in gi.identities() and ids[0] not in gi.identities()
    assert gi.search(new[1], top_k=1)[0][0].identity == "new_a"  # replaced embedding
    # only the current generation's files remain
    names = sorted(p.name for p in (tmp_path / "g").iterdir() if not p.name.startswith("."))
    assert names == sorted(["index.json", gi.info["embeddings_file"], gi.info["ids_file"]])


def test_wrong_model_refused(tmp_path):
    gi, _, _ = make(tmp_path)
    gi.check_model("m" * 64)
    with pytest.raises(ModelMismatchError, match="not by this model"):
        gi.check_model("x" * 64, "other.onnx")


def test_existing_index_not_overwritten_by_accident(tmp_path):
    make(tmp_path)
    with pytest.raises(IndexError_, match="already holds an index"):
        GalleryIndex.create(tmp_path / "g", model_hash="m", embedding_dim=16)
    gi = GalleryIndex.create(tmp_path / "g", model_hash="n" * 64, embedding_dim=16, overwrite=True)
    gi.add(["z"], unit(1))
    gi.save()
    assert GalleryIndex.open(tmp_path / "g").identities() == ["z"]


def test_crash_during_save_keeps_the_old_index(tmp_path, monkeypatch):
    from c4s_core.data import io

    gi, ids, _ = make(tmp_path, n=5)
    gi = GalleryIndex.open(tmp_path / "g")
    gi.add(["late"], unit(1, seed=3))
    real = io.atomic_write_bytes

    def dies_at_commit(path, data):
        if str(path).endswith("index.json"):
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", dies_at_commit)
    with pytest.raises(OSError):
        gi.save()
    monkeypatch.setattr(io, "atomic_write_bytes", real)
    old = GalleryIndex.open(tmp_path / "g", verify=True)
    assert old.identities() == sorted(ids) and len(old) == 5


def test_concurrent_change_is_detected(tmp_path):
    make(tmp_path, n=5)
    a = GalleryIndex.open(tmp_path / "g")
    b = GalleryIndex.open(tmp_path / "g")
    a.add(["a"], unit(1, seed=1))
    a.save()
    b.add(["b"], unit(1, seed=2))
    with pytest.raises(IndexError_, match="changed by another process"):
        b.save()
    assert "a" in GalleryIndex.open(tmp_path / "g").identities()


def test_damaged_index_is_reported(tmp_path):
    gi, _, _ = make(tmp_path, n=5)
    (tmp_path / "g" / gi.info["ids_file"]).write_text(json.dumps({"rows": []}))
    with pytest.raises(IndexError_, match="disagree"):
        GalleryIndex.open(tmp_path / "g")
    with pytest.raises(IndexError_, match="no gallery index"):
        GalleryIndex.open(tmp_path / "nothing")


def test_faiss_backend_is_optional(tmp_path, monkeypatch):
    import sys

    gi, _, emb = make(tmp_path)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match="faiss-cpu"):
        gi.search(emb[:2], backend="faiss")


def hits(results):
    return [[(h.identity, round(h.score, 5)) for h in r] for r in results]


@pytest.mark.parametrize("nq", [1, 5])
def test_bf16_backend_gives_exact_scores_and_the_exact_ranking(tmp_path, nq):
    pytest.importorskip("torch")
    gi, ids, emb = make(tmp_path, n=3000, d=32, per_id=3)
    rng = np.random.default_rng(1)
    q = emb[rng.integers(0, 3000, nq)] + 0.2 * unit(nq, 32, seed=7)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ref = gi.search(q, top_k=10)
    got = gi.search(q, top_k=10, backend="bf16", chunk_size=1000)
    assert hits(got) == hits(ref) == [[(i, round(s, 5)) for i, s in r] for r in brute(emb, ids, q, 10)]
    assert [[h.source for h in r] for r in got] == [[h.source for h in r] for r in ref]
    gi.add(["new"], q[:1])  # the cached bf16 copy follows changes
    assert gi.search(q[:1], top_k=1, backend="bf16")[0][0].identity == "new"


def same(a, b):
    assert [[h.identity for h in r] for r in a] == [[h.identity for h in r] for r in b]
    np.testing.assert_allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-5)


def test_faiss_flat_is_exact_and_hnsw_close(tmp_path):
    pytest.importorskip("faiss")
    gi, ids, emb = make(tmp_path, n=2000, d=32)
    q = emb[:20] + 0.3 * unit(20, 32, seed=3)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ref = gi.search(q, top_k=10)
    same(gi.search(q, top_k=10, backend="faiss"), ref)
    approx = gi.search(q, top_k=10, backend="faiss", faiss_factory="HNSW32")
    recall = np.mean([len({h.identity for h in a} & {h.identity for h in b}) / 10 for a, b in zip(approx, ref, strict=True)])
    assert recall >= 0.9
    ivf = gi.search(q, top_k=10, backend="faiss", faiss_factory="IVF16,Flat", faiss_nprobe=16)  # every list: exact
    same(ivf, ref)
    with pytest.raises(IndexError_, match="faiss_factory 'Bogus9' is not a FAISS index description"):
        gi.search(q, backend="faiss", faiss_factory="Bogus9")
    tiny, _, e2 = make(tmp_path, n=3, d=32, name="t")
    assert [len(r) for r in tiny.search(e2[:1], top_k=10, backend="faiss")] == [3]  # fewer rows than k


# -- the `match` commands ---------------------------------------------------------------


@pytest.fixture
def deployed(tmp_path):
    """Two exported tiny models (different weights) and a photo folder."""
    torch = pytest.importorskip("torch")
    from c4s_core import export as ex
    from c4s_core.data.io import resize, save_image

    torch.set_num_threads(1)
    ds = c4s_core.get_registries().dataset.build(
        "synthfaces", {"num_identities": 6, "images_per_identity": 2, "sketches_per_identity": 1, "size": 48})
    photos = tmp_path / "photos"
    sketches = tmp_path / "sketches"
    per_id: dict[str, int] = {}
    for s in ds:
        if s.modality == "photo":
            k = per_id.get(s.identity, 0)
            per_id[s.identity] = k + 1
            if s.identity == ds[0].identity:  # one identity as a sub-folder with two photos
                save_image(photos / s.identity / f"{k}.png", s.image)
            elif k == 0:
                save_image(photos / f"{s.identity}.png", s.image)
        else:
            save_image(sketches / f"{s.identity}.png", s.image)
    meta = ex.ExportMeta(input_size=(32, 32), color_order="BGR", mean=(0.5,) * 3, std=(0.5,) * 3,
                         embedding_dim=16, backbone="tiny")
    parity = np.stack([resize(ds[i].image, 32) for i in range(4)])
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(4),
                                  torch.nn.Flatten(), torch.nn.Linear(128, 16))
        models.append(ex.export_onnx(net, meta, tmp_path / f"m{seed}.onnx", parity, check_batches=(1, 3)).path)
    return {"photos": photos, "sketches": sketches, "m0": models[0], "m1": models[1],
            "ids": sorted(per_id), "first": ds[0].identity}


def invoke(*args):
    from c4s_core.match_cli import match

    res = CliRunner().invoke(match, [str(a) for a in args], catch_exceptions=False)
    return res


def test_match_commands(deployed, tmp_path):
    d, g = deployed, tmp_path / "gallery"
    r = invoke("enroll", "--model", d["m0"], "--photos", d["photos"], "--index", g, "--dtype", "float16",
               "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["identities"] == 6 and info["rows"] == 7 and info["dtype"] == "float16"
    assert (g / "index.json").is_file()

    # a query equal to an enrolled image finds its identity, with score ~1
    query = sorted((d["photos"]).glob("*.png"))[0]
    r = invoke("search", "--index", g, "--model", d["m0"], query, "--top-k", "3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    top = out["results"][0]["hits"]
    assert top[0]["identity"] == query.stem and top[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert len(top) == 3
    sub = sorted((d["photos"] / d["first"]).glob("*.png"))[1]
    r = invoke("search", "--index", g, "--model", d["m0"], sub, "--top-k", "6", "--chunk-size", "2", "--json")
    hits = json.loads(r.output)["results"][0]["hits"]
    assert hits[0]["identity"] == d["first"] and len({h["identity"] for h in hits}) == 6

    # a table for a folder of sketches
    r = invoke("search", "--index", g, "--model", d["m0"], d["sketches"], "--top-k", "2")
    assert r.exit_code == 0, r.output
    assert r.output.count("rank") == 6 and "score" in r.output

    # remove, then add back
    victim = d["ids"][-1]
    r = invoke("remove", "--index", g, victim, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["identities"] == 5
    r = invoke("remove", "--index", g, "nobody")
    assert r.exit_code != 0 and "nobody" in r.output
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / f"{victim}.png").write_bytes((d["photos"] / f"{victim}.png").read_bytes())
    r = invoke("add", "--index", g, "--model", d["m0"], "--photos", extra, "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["identities"] == 6
    r = invoke("add", "--index", g, "--model", d["m0"], "--photos", extra, "--no-progress")
    assert r.exit_code != 0 and "--replace" in r.output
    r = invoke("add", "--index", g, "--model", d["m0"], "--photos", extra, "--replace", "--no-progress")
    assert r.exit_code == 0, r.output

    # info
    r = invoke("info", "--index", g, "--identities", "--verify", "--json")
    data = json.loads(r.output)
    assert data["verified"] and sorted(data["identity_list"]) == d["ids"]
    assert data["model"]["backbone"] == "tiny"

    # the other model is refused, by add and by search
    for cmd in (["search", "--index", g, "--model", d["m1"], query],
                ["add", "--index", g, "--model", d["m1"], "--photos", extra, "--replace"]):
        r = invoke(*cmd)
        assert r.exit_code != 0 and "not by this model" in r.output

    # enrolling over an index needs --overwrite
    r = invoke("enroll", "--model", d["m1"], "--photos", d["photos"], "--index", g, "--no-progress")
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_match_cuda_refused_and_aligner_recorded(deployed, tmp_path):
    d, g = deployed, tmp_path / "g2"
    r = invoke("enroll", "--model", d["m0"], "--photos", d["photos"], "--index", g, "--aligner", "center",
               "--aligner-option", "box=[0,0,1,1]", "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["aligner"] == {"name": "center", "options": {"box": [0, 0, 1, 1]}}
    q = sorted(d["photos"].glob("*.png"))[2]
    r = invoke("search", "--index", g, "--model", d["m0"], q, "--json")
    assert json.loads(r.output)["results"][0]["hits"][0]["identity"] == q.stem
    import onnxruntime as ort

    try:
        active = ort.InferenceSession(str(d["m0"]), providers=["CUDAExecutionProvider"]).get_providers()
    except Exception:
        active = []
    if "CUDAExecutionProvider" not in active:
        r = invoke("search", "--index", g, "--model", d["m0"], q, "--device", "cuda")
        assert r.exit_code != 0 and "cuda" in r.output.lower() and "device=cpu" in r.output
