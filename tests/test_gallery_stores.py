"""Gallery stores: the folder index and Milvus keep the same rules and give the same top-k;
store URIs; the int8 backend equals exact search."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_index import deployed, invoke, unit  # noqa: F401 - the fixture is used by name

from c4s_core.errors import MissingDependencyError
from c4s_core.gallery import (
    GalleryIndex,
    IndexError_,
    ModelMismatchError,
    create_store,
    open_store,
    parse_store,
)


def milvus_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


needs_milvus = pytest.mark.skipif(not milvus_available(), reason="pip install 'clip4sketch[milvus]'")
STORES = ["folder", pytest.param("milvus", marks=needs_milvus)]


def store_uri(kind: str, tmp_path, name: str = "g") -> str:
    return str(tmp_path / name) if kind == "folder" else f"milvus:{tmp_path / name}.db?collection={name}"


# -- the same sequence on every store ----------------------------------------------------------------


def run_sequence(d, uri, tmp_path) -> dict:
    """enroll, search, remove, add back, replace, search, info: what a user does, through the CLI."""
    out = {}
    r = invoke("enroll", "--model", d["m0"], "--photos", d["photos"], "--store", uri, "--json", "--no-progress",
               "--thumbnail-size", "32")
    assert r.exit_code == 0, r.output
    out["enrolled"] = {k: json.loads(r.output)[k] for k in ("rows", "identities", "thumbnails")}
    r = invoke("search", "--store", uri, "--model", d["m0"], d["sketches"], "--top-k", "4", "--json")
    assert r.exit_code == 0, r.output
    out["before"] = json.loads(r.output)["results"]
    victim = d["ids"][-1]
    r = invoke("remove", "--store", uri, victim, d["first"], "--json")
    assert r.exit_code == 0, r.output
    out["removed"] = json.loads(r.output)["rows_removed"]
    extra = tmp_path / f"extra-{abs(hash(uri))}"
    extra.mkdir()
    (extra / f"{victim}.png").write_bytes((d["photos"] / f"{victim}.png").read_bytes())
    r = invoke("add", "--store", uri, "--model", d["m0"], "--photos", extra, "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("add", "--store", uri, "--model", d["m0"], "--photos", extra, "--no-progress")
    assert r.exit_code != 0 and "--replace" in r.output
    r = invoke("add", "--store", uri, "--model", d["m0"], "--photos", extra, "--replace", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rows_replaced"] == 1
    r = invoke("search", "--store", uri, "--model", d["m0"], d["sketches"], "--top-k", "4", "--json")
    out["after"] = json.loads(r.output)["results"]
    r = invoke("info", "--store", uri, "--identities", "--verify", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    out["info"] = {"rows": info["rows"], "identities": info["identities"], "ids": sorted(info["identity_list"]),
                   "thumbnails": info["thumbnails"]}
    r = invoke("search", "--store", uri, "--model", d["m1"], d["sketches"])
    assert r.exit_code != 0 and "not by this model" in r.output
    return out


def strip(results):
    """(query name, [(identity, score to 5 places)]) per query: what must agree across stores."""
    return [(r["query"].split("/")[-1], [(h["identity"], round(h["score"], 4)) for h in r["hits"]]) for r in results]


@needs_milvus
def test_folder_and_milvus_give_the_same_results_for_the_same_sequence(deployed, tmp_path):  # noqa: F811
    d = deployed
    got = {kind: run_sequence(d, store_uri(kind, tmp_path), tmp_path) for kind in ("folder", "milvus")}
    f, m = got["folder"], got["milvus"]
    assert f["enrolled"] == m["enrolled"] == {"rows": 7, "identities": 6, "thumbnails": 7}
    assert strip(f["before"]) == strip(m["before"]) and len(f["before"][0]["hits"]) == 4
    assert f["removed"] == m["removed"] == 3  # the victim's photo and the sub-folder identity's two
    assert strip(f["after"]) == strip(m["after"])
    assert all(h["identity"] != d["first"] for r in m["after"] for h in r["hits"])  # removals are real
    assert f["info"] == m["info"] and f["info"]["identities"] == 5 and d["first"] not in m["info"]["ids"]


@pytest.mark.parametrize("kind", STORES)
def test_every_store_refuses_another_model_and_keeps_thumbnails_with_rows(kind, tmp_path):
    uri = store_uri(kind, tmp_path)
    st = create_store(uri, model_hash="a" * 64, embedding_dim=8, model={"path": "a.onnx"})
    img = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    th = st.put_thumbnail(img)
    st.add(["x", "x", "y"], unit(3, 8), ["x0.png", "x1.png", "y.png"], thumbnails=[th, None, None])
    st.save()
    st = open_store(uri)
    with pytest.raises(ModelMismatchError, match="not by this model"):
        st.check_model("b" * 64)
    assert st.images_of("x")[0]["thumb"] == th and st.images_of("nobody") is None
    assert st.read_thumbnail(th)[:2] == b"\xff\xd8" and st.has_thumbnail(th)
    hit = st.search(unit(3, 8)[0], top_k=1)[0][0]
    assert (hit.identity, hit.thumb, hit.source) == ("x", th, "x0.png")
    st.remove(["x"])
    st.save()
    st = open_store(uri)
    assert not st.has_thumbnail(th) and st.identities() == ["y"] and len(st) == 1
    with pytest.raises(IndexError_, match="x"):
        st.remove(["x"])


# -- Milvus: commits are all or nothing; removals are real ----------------------------------------


@needs_milvus
def test_milvus_crash_before_the_commit_leaves_the_old_generation(tmp_path, monkeypatch):
    uri = store_uri("milvus", tmp_path)
    st = create_store(uri, model_hash="a" * 64, embedding_dim=8)
    st.add(["a", "b"], unit(2, 8))
    st.save()
    st = open_store(uri)
    st.add(["c"], unit(1, 8, seed=4))
    st.remove(["a"])

    def crash(*a, **k):
        raise OSError("power cut")

    monkeypatch.setattr(st.client, "alter_collection_properties", crash)
    with pytest.raises(OSError, match="power cut"):
        st.save()  # rows staged and marked, never committed
    reader = open_store(uri)
    assert reader.identities() == ["a", "b"] and reader.generation == 1
    assert {h.identity for h in reader.search(unit(1, 8, seed=4), top_k=5)[0]} == {"a", "b"}
    monkeypatch.undo()
    again = open_store(uri)  # the next writer clears what the crash left, then commits its own change
    again.add(["d"], unit(1, 8, seed=5))
    again.save()
    final = open_store(uri)
    assert final.identities() == ["a", "b", "d"] and len(final) == 3
    everything = final.client.query(final.collection, filter="pk >= 0", output_fields=["identity"])
    assert sorted(r["identity"] for r in everything) == ["a", "b", "d"]  # no staged "c", no leftover marks


@needs_milvus
def test_milvus_removal_deletes_rows_and_a_stale_writer_is_refused(tmp_path):
    uri = store_uri("milvus", tmp_path)
    st = create_store(uri, model_hash="a" * 64, embedding_dim=8)
    st.add(["a", "a", "b"], unit(3, 8))
    st.save()
    w1, w2 = open_store(uri), open_store(uri)
    w1.remove(["a"])
    w1.save()
    rows = w1.client.query(w1.collection, filter="pk >= 0", output_fields=["identity"])
    assert [r["identity"] for r in rows] == ["b"]  # deleted, not hidden
    w2.add(["c"], unit(1, 8))
    with pytest.raises(IndexError_, match="changed by another process"):
        w2.save()


@needs_milvus
def test_milvus_uri_options_are_validated(tmp_path):
    with pytest.raises(Exception, match="colection"):
        open_store(f"milvus:{tmp_path}/g.db?colection=g")
    with pytest.raises(IndexError_, match="ending in .db"):
        open_store(f"milvus:{tmp_path}/g.sqlite")
    with pytest.raises(IndexError_, match="no collection 'nothere'"):
        open_store(f"milvus:{tmp_path}/g.db?collection=nothere")
    with pytest.raises(IndexError_, match="float32"):
        create_store(f"milvus:{tmp_path}/g.db", model_hash="a", embedding_dim=4, dtype="float16")


def test_milvus_missing_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(MissingDependencyError, match=r"clip4sketch\[milvus\]"):
        open_store(f"milvus:{tmp_path}/g.db")


def test_store_uris():
    assert parse_store("gallery/") == ("folder", "gallery/", {})
    assert parse_store("folder:a?b") == ("folder", "a?b", {})
    assert parse_store("C:/galleries/g") == ("folder", "C:/galleries/g", {})
    assert parse_store("milvus:http://h:19530?collection=g&nprobe=8") == (
        "milvus", "http://h:19530", {"collection": "g", "nprobe": "8"})
    with pytest.raises(IndexError_, match="key=value"):
        parse_store("milvus:g.db?oops")
    with pytest.raises(KeyError, match="unknown gallery_store 'nosql'"):
        open_store("nosql:x")


# -- int8: quantised candidates, proven equal to exact ----------------------------------------------


def clustered(n, d, seed=0, per=20, spread=0.15):
    """Face-like: identities are tight clusters, so near-ties are common (the hard case for candidates)."""
    rng = np.random.default_rng(seed)
    centres = unit(n // per + 1, d, seed=seed + 100)
    x = centres[np.arange(n) // per] + spread * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["kernel", "torch"])
def int8_path(request, monkeypatch):
    """Both int8 scoring paths: the compiled kernel (skipped where it is not built) and torch's."""
    from c4s_core.gallery import kernel

    kernel._lib.cache_clear()
    if request.param == "torch":
        monkeypatch.setenv("C4S_INT8_KERNEL", "0")
    elif not kernel.available():
        pytest.skip("the int8 kernel is not built here (no C compiler at install)")
    yield request.param
    kernel._lib.cache_clear()


@pytest.mark.parametrize("data,per_id", [("random", 1), ("clustered", 1), ("clustered", 3)])
def test_int8_backend_equals_exact(tmp_path, data, per_id, int8_path):
    pytest.importorskip("torch")
    n, d = 4000, 64
    emb = unit(n, d) if data == "random" else clustered(n, d)
    gi = GalleryIndex.create(tmp_path / "g", model_hash="m", embedding_dim=d)
    gi.add([f"id{i // per_id:05d}" for i in range(n)], emb, [f"{i}.png" for i in range(n)])
    q = emb[np.random.default_rng(2).integers(0, n, 12)] + 0.05 * unit(12, d, seed=9)
    q[6:] = unit(6, d, seed=11)  # queries near no row: near-ties everywhere
    for k in (1, 10, 50):
        ref = gi.search(q, top_k=k)
        for cands in (256, 1):  # 1: the bound fails, candidates widen or the query falls back to exact
            got = gi.search(q, top_k=k, backend="int8", candidates=cands)
            assert [[(h.identity, h.row) for h in r] for r in got] == [[(h.identity, h.row) for h in r] for r in ref]
            np.testing.assert_allclose([[h.score for h in r] for r in got], [[h.score for h in r] for r in ref],
                                       atol=2e-6)
    stats = gi.int8_codes().stats
    # clustered rows tie closely enough that one candidate cannot be proven: it widens or falls back
    assert stats["queries"] == 12 * 6 and (data == "random" or stats["widened"] + stats["exact_fallback"] > 0)
    gi.add(["new"], q[:1])  # the codes follow changes
    assert gi.search(q[:1], top_k=1, backend="int8")[0][0].identity == "new"


def test_int8_error_bound_holds(tmp_path, int8_path):
    """Over every row (m = n candidates), the quantised score is within the query's bound of q . row."""
    pytest.importorskip("torch")
    from c4s_core.gallery.search import Int8Codes

    for emb in (unit(3000, 96, seed=3), clustered(3000, 96, seed=4)):
        codes = Int8Codes.build(emb, chunk_size=1000)  # chunked build: the same codes
        q = unit(8, 96, seed=5)
        approx, rows, bound = codes.candidates(q, 3000)
        assert (np.sort(rows, axis=1) == np.arange(3000)).all()
        assert (np.diff(approx, axis=1) <= 0).all()  # sorted, best first
        err = np.abs(approx - np.take_along_axis(q @ emb.T, rows, 1)).max(axis=1)
        assert (err <= bound).all() and (bound < 0.05).all()
        assert codes.nbytes == 3000 * 96 + 2 * 3000  # a quarter of float32, plus the scales


def test_int8_kernel_topm_is_exact_and_merges_threads(monkeypatch):
    """The kernel's scores are the exact integer sums times the row scale; each thread's best m
    merged equal the best m of all rows (ties: lower row first), and m caps at n."""
    from c4s_core.gallery import kernel

    kernel._lib.cache_clear()
    if not kernel.available():
        pytest.skip("the int8 kernel is not built here (no C compiler at install)")
    rng = np.random.default_rng(0)
    n, d = 5000, 80
    codes = rng.integers(-127, 128, (n, d), dtype=np.int8)
    codes[4000:4010] = codes[17]  # exact ties with row 17
    scales = rng.uniform(0.5, 2.0, n).astype(np.float32)
    scales[4000:4010] = scales[17]
    q16, qs = kernel.query_codes(rng.standard_normal((3, d)).astype(np.float32), d)
    assert np.abs(q16).max() == 32767 and 32767 * 127 * d < 2**31
    ref = (q16.astype(np.int64) @ codes.T.astype(np.int64)).astype(np.float32) * scales  # exact below 2^24
    monkeypatch.setattr(kernel, "_ROWS_PER_THREAD", 700)
    for threads, m in ((1, 40), (3, 40), (4, 7000)):
        s, r = kernel.topm(codes, scales, q16, m, threads=threads)
        mm = min(m, n)
        order = np.lexsort((np.broadcast_to(np.arange(n), ref.shape), -ref), axis=1)[:, :mm]
        assert s.shape == r.shape == (3, mm)
        np.testing.assert_array_equal(r, order)
        np.testing.assert_array_equal(s, np.take_along_axis(ref, order, 1))
    with pytest.raises(ValueError, match="int8 kernel"):
        kernel.topm(codes.astype(np.int16), scales, q16, 5)


def same(got, ref) -> bool:
    """The same hits (identity, row) in order, scores equal to float32 rounding."""
    return ([[(h.identity, h.row) for h in r] for r in got] == [[(h.identity, h.row) for h in r] for r in ref]
            and np.allclose([[h.score for h in r] for r in got], [[h.score for h in r] for r in ref], atol=2e-6))


def test_int8_codes_persist_beside_the_index(tmp_path, monkeypatch):
    """The int8 codes are written once per generation and read by the next process;
    a damaged codes file is never used (warned, rebuilt), a new generation drops the
    old one, and a folder that cannot be written to still searches."""
    pytest.importorskip("torch")
    from c4s_core.data import io as dio
    from c4s_core.gallery.search import Int8Codes

    n, d = 3000, 48
    emb = clustered(n, d, seed=6)
    g = tmp_path / "g"
    gi = GalleryIndex.create(g, model_hash="m", embedding_dim=d)
    gi.add([f"id{i:05d}" for i in range(n)], emb)
    gi.save()
    q = emb[:5] + 0.03 * unit(5, d, seed=8)
    ref = GalleryIndex.open(g).search(q, top_k=10)
    assert same(GalleryIndex.open(g).search(q, top_k=10, backend="int8"), ref)
    files = sorted(g.glob("int8-*.npz"))
    assert len(files) == 1 and files[0].name.startswith(f"int8-{gi.info['embeddings_sha256'][:16]}-")

    real_build = Int8Codes.build
    built = []
    monkeypatch.setattr(Int8Codes, "build", classmethod(lambda cls, e, **kw: built.append(1) or real_build(e, **kw)))
    assert same(GalleryIndex.open(g, mmap=True).search(q, top_k=10, backend="int8"), ref) and built == []  # read back

    raw = bytearray(files[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the codes
    files[0].write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="int8 codes not used .*does not match its name"):
        assert same(GalleryIndex.open(g).search(q, top_k=10, backend="int8"), ref)
    assert built == [1] and len(list(g.glob("int8-*.npz"))) == 1
    assert same(GalleryIndex.open(g).search(q, top_k=10, backend="int8"), ref) and built == [1]  # the rebuilt file reads

    gi = GalleryIndex.open(g)
    gi.add(["new"], q[:1])
    assert gi.search(q[:1], top_k=1, backend="int8")[0][0].identity == "new"  # pending rows: built, not written
    assert [p.name for p in g.glob("int8-*.npz")] == [files[0].name]
    gi.save()
    assert list(g.glob("int8-*.npz")) == []  # the old generation's codes went with it

    def refuse(*a, **k):
        raise OSError("read-only file system")

    monkeypatch.setattr(dio, "atomic_write_bytes", refuse)
    assert GalleryIndex.open(g).search(q[:1], top_k=1, backend="int8")[0][0].identity == "new"
    assert list(g.glob("int8-*.npz")) == []


def test_int8_codes_carry_over_appends(tmp_path, monkeypatch):
    """A reload after appends codes only the new rows, and the codes equal a full build;
    after a removal (or with no built prior codes) everything is coded again."""
    pytest.importorskip("torch")
    from c4s_core.gallery.search import Int8Codes

    n, m, d = 2000, 300, 40
    emb = clustered(n + m, d, seed=11)
    g = tmp_path / "g"
    gi = GalleryIndex.create(g, model_hash="m", embedding_dim=d)
    gi.add([f"id{i:05d}" for i in range(n)], emb[:n])
    gi.save()
    old = GalleryIndex.open(g, mmap=True)
    unbuilt = GalleryIndex.open(g, mmap=True)
    old.int8_codes()
    w = GalleryIndex.open(g)
    w.add([f"new{i:04d}" for i in range(m)], emb[n:])
    w.save()
    real_build = Int8Codes.build
    built = []
    monkeypatch.setattr(Int8Codes, "build", classmethod(lambda cls, e, **kw: built.append(len(e)) or real_build(e, **kw)))
    new = GalleryIndex.open(g, mmap=True)
    got = new.int8_codes(prior=old)
    assert built == [m]  # the old rows were not coded again
    full = real_build(np.asarray(new.embeddings))
    assert np.array_equal(got.codes.numpy(), full.codes.numpy())
    assert np.array_equal(got.scales.float().numpy(), full.scales.float().numpy())
    assert (got.residual_max, got.norm_max) == (full.residual_max, full.norm_max)
    q = emb[n - 3:n + 3] + 0.03 * unit(6, d, seed=12)
    assert same(new.search(q, top_k=10, backend="int8"), new.search(q, top_k=10))

    assert len(list(g.glob("int8-*.npz"))) == 1  # the carried codes were written for the next process
    for p in g.glob("int8-*.npz"):
        p.unlink()
    assert GalleryIndex.open(g).int8_codes(prior=unbuilt) is not None and built == [m, n + m]  # prior had no codes
    w = GalleryIndex.open(g)
    w.remove(["id00000"])
    w.save()
    built.clear()
    after = GalleryIndex.open(g).int8_codes(prior=new)  # rows shifted: no prefix to keep
    assert built == [n + m - 1] and after.codes.shape == (n + m - 1, d)
