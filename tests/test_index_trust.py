"""Gallery index integrity (issue 16, items 4 and 10): damaged files are refused
with the file named, add/remove never re-hash what they did not verify, and a
missing model is a one-line error for search, add and serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from c4s_core.index import GalleryIndex, IndexError_


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    pytest.importorskip("fastapi")
    from test_serve import build_deployment

    return build_deployment(tmp_path_factory.mktemp("trust"), num_identities=8)


@pytest.fixture
def gallery(dep, tmp_path) -> Path:
    """A fresh copy of the enrolled index (with thumbnails), to damage."""
    g = tmp_path / "gallery"
    shutil.copytree(dep["index"], g)
    return g


def info_of(g: Path) -> dict:
    return json.loads((g / "index.json").read_text())


def flip_embedding_byte(g: Path) -> Path:
    """Flip the high byte of the last float32: a huge score, a valid file."""
    p = g / info_of(g)["embeddings_file"]
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x7F
    p.write_bytes(bytes(data))
    return p


def edit_ids(g: Path) -> Path:
    """Rename one identity in the ids file (same length, valid JSON)."""
    p = g / info_of(g)["ids_file"]
    rows = json.loads(p.read_text())["rows"]
    old = rows[0]["identity"]
    p.write_text(p.read_text().replace(f'"{old}"', f'"{old[:-1]}X"', 1))
    return p


def damage_thumbnail_of(g: Path, source_stem: str) -> Path:
    rows = json.loads((g / info_of(g)["ids_file"]).read_text())["rows"]
    name = next(r["thumb"] for r in rows if Path(r["source"]).stem == source_stem)
    p = g / "thumbs" / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    return p


def snapshot(g: Path) -> dict[str, bytes]:
    return {str(p.relative_to(g)): p.read_bytes() for p in sorted(g.rglob("*")) if p.is_file() and p.name != ".lock"}


def cli(*args):
    from c4s_core.match_cli import match

    return CliRunner().invoke(match, [str(a) for a in args])


def refused(res, name: str) -> None:
    """A clean click error (exit 1, no traceback) that names the file."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert name in res.output, res.output


# -- search refuses damage ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["embeddings", "ids"])
def test_search_refuses_a_damaged_shard_naming_it(dep, gallery, damage):
    bad = flip_embedding_byte(gallery) if damage == "embeddings" else edit_ids(gallery)
    query = dep["photos"] / f"{dep['ids'][-1]}.png"
    res = cli("search", "--index", gallery, "--model", dep["model"], query, "--json")
    refused(res, bad.name)
    assert "sha256" in res.output
    for mmap in (False, True):  # the API too, loaded or memory-mapped
        with pytest.raises(IndexError_, match=bad.name):
            gi = GalleryIndex.open(gallery, mmap=mmap)
            gi.search(np.ones((1, 16), np.float32))


def test_search_refuses_a_damaged_thumbnail_of_a_hit(dep, gallery):
    stem = dep["ids"][2]
    bad = damage_thumbnail_of(gallery, stem)
    res = cli("search", "--index", gallery, "--model", dep["model"], dep["photos"] / f"{stem}.png", "--top-k", "1")
    refused(res, bad.name)


def test_embeddings_with_bytes_appended_are_refused_at_open(gallery):
    p = gallery / info_of(gallery)["embeddings_file"]
    with open(p, "ab") as f:
        f.write(b"\0" * 64)
    for mmap in (False, True):
        with pytest.raises(IndexError_, match=p.name):
            GalleryIndex.open(gallery, mmap=mmap)


def test_mmap_open_defers_the_embeddings_hash_to_first_use_and_hashes_once(gallery, monkeypatch):
    import c4s_core.gallery.integrity as ig

    calls = []
    real = ig.file_sha256
    monkeypatch.setattr(ig, "file_sha256", lambda p: calls.append(Path(p).name) or real(p))
    ig.VERIFIED.clear()
    gi = GalleryIndex.open(gallery, mmap=True)
    assert calls == [] and len(gi.identities()) == 8  # info, identities: no embeddings read
    gi.search(np.ones((1, 16), np.float32))
    gi.search(np.ones((1, 16), np.float32))
    GalleryIndex.open(gallery, mmap=True).search(np.ones((1, 16), np.float32))  # the same file, this process
    assert calls == [info_of(gallery)["embeddings_file"]]
    flip_embedding_byte(gallery)  # a rewrite changes the file's stat: hashed again, refused
    with pytest.raises(IndexError_, match="sha256"):
        GalleryIndex.open(gallery, mmap=True).search(np.ones((1, 16), np.float32))


# -- add / remove never re-hash damage ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["embeddings", "ids"])
def test_add_and_remove_refuse_a_damaged_index_and_leave_it_as_it_was(dep, gallery, damage, tmp_path):
    bad = flip_embedding_byte(gallery) if damage == "embeddings" else edit_ids(gallery)
    before = snapshot(gallery)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(dep["photos"] / f"{dep['ids'][0]}.png", extra / "newcomer.png")
    refused(cli("add", "--index", gallery, "--model", dep["model"], "--photos", extra, "--no-progress"), bad.name)
    refused(cli("remove", "--index", gallery, dep["ids"][1]), bad.name)
    # the API, memory-mapped (embeddings not read at open): the save refuses before writing
    gi = GalleryIndex.open(gallery, mmap=True) if damage == "embeddings" else None
    if gi is not None:
        with pytest.raises(IndexError_, match=bad.name):
            gi.remove([dep["ids"][1]])
            gi.save()
    assert snapshot(gallery) == before
    refused(cli("info", "--index", gallery, "--verify"), bad.name)
    # the way out the message names: enroll again over it
    res = cli("enroll", "--model", dep["model"], "--photos", dep["photos"], "--index", gallery, "--overwrite",
              "--no-progress")
    assert res.exit_code == 0, res.output
    assert cli("info", "--index", gallery, "--verify").exit_code == 0


def test_save_of_an_unchanged_mmap_index_verifies_first(gallery):
    bad = flip_embedding_byte(gallery)
    before = snapshot(gallery)
    gi = GalleryIndex.open(gallery, mmap=True)
    with pytest.raises(IndexError_, match=bad.name):
        gi.save()
    assert snapshot(gallery) == before


# -- serve ------------------------------------------------------------------------------------------


def test_serve_refuses_a_damaged_index_at_start(dep, gallery):
    from c4s_core.serve import SearchService

    bad = flip_embedding_byte(gallery)
    with pytest.raises(IndexError_, match=bad.name):
        SearchService(gallery, dep["model"])


def test_serve_refuses_a_damaged_thumbnail(dep, gallery):
    from fastapi.testclient import TestClient

    from c4s_core.serve import SearchService, create_app

    stem = dep["ids"][3]
    sketch = next(p for p in dep["sketches"] if p.stem == stem)
    c = TestClient(create_app(SearchService(gallery, dep["model"])), base_url="http://127.0.0.1:8000")
    top = c.post("/search", files={"image": ("s.png", sketch.read_bytes(), "image/png")}, params={"top_k": 20}).json()
    bad = damage_thumbnail_of(gallery, stem)
    r = c.get(f"/images/{bad.name}")
    assert r.status_code == 500 and bad.name in r.json()["detail"] and "damaged" in r.json()["detail"]
    r = c.post("/search", files={"image": ("s.png", sketch.read_bytes(), "image/png")}, params={"top_k": 20})
    assert r.status_code == 500 and bad.name in r.json()["detail"], (top, r.text)


def test_serve_keeps_the_old_index_when_the_new_generation_is_damaged(dep, gallery):
    from c4s_core.serve import SearchService

    svc = SearchService(gallery, dep["model"])
    gi = GalleryIndex.open(gallery)
    gi.remove([dep["ids"][0]])
    gi.save()
    bad = flip_embedding_byte(gallery)
    svc._checked = float("-inf")
    svc.refresh()
    assert len(svc.index) == 8 and bad.name in (svc.reload_error or "")
    assert svc.status()["index"]["generation"] == 1


# -- a missing model ----------------------------------------------------------------------------------


def test_missing_model_is_a_one_line_error_for_search_add_and_serve(dep, gallery, tmp_path):
    from c4s_core.serve import serve_command

    missing = tmp_path / "missing.onnx"
    enroll = cli("enroll", "--model", missing, "--photos", dep["photos"], "--index", tmp_path / "new", "--no-progress")
    refused(enroll, str(missing))
    want = enroll.output
    runs = {
        "search": cli("search", "--index", gallery, "--model", missing, dep["sketches"][0]),
        "add": cli("add", "--index", gallery, "--model", missing, "--photos", dep["photos"], "--no-progress"),
        "serve": CliRunner().invoke(serve_command, ["--index", str(gallery), "--model", str(missing)]),
    }
    for cmd, res in runs.items():
        refused(res, str(missing))
        assert res.output == want and res.output.count("\n") == 1, (cmd, res.output)
