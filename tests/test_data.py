"""Data layer: errors that name the file, documented conversions, folder datasets, manifests."""

import io
import os

import numpy as np
import pytest
from PIL import Image

import c4s_core
from c4s_core.data import (
    append_manifest,
    load_image,
    load_samples,
    read_manifest,
    save_image,
)
from c4s_core.errors import ConfigError, DataError, ImageReadError


def png_bytes(mode="RGB", size=(8, 6), color=None):
    buf = io.BytesIO()
    Image.new(mode, size, color if color is not None else 0).save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def test_bad_files_name_the_file(tmp_path):
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    trunc = tmp_path / "trunc.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    cases = {
        zero: "empty file",
        text: "not an image",
        trunc: "corrupt or truncated",
        tmp_path / "missing.png": "not found",
        tmp_path: "folder",
    }
    for path, why in cases.items():
        with pytest.raises(ImageReadError) as e:
            load_image(path)
        assert str(path) in str(e.value) and why in str(e.value)
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(big, max_pixels=1000)


def test_modes_convert_as_documented(tmp_path):
    g = tmp_path / "g.png"
    Image.new("L", (5, 4), 77).save(g)
    a = load_image(g)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8 and (a == 77).all()
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 4), (0, 0, 0, 0)).save(rgba)
    assert (load_image(rgba) == 255).all()  # transparent -> white paper
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (5, 4), (0, 0, 0, 0)).save(cmyk)
    assert load_image(cmyk).min() > 240  # no ink -> white
    i16 = tmp_path / "i16.png"
    arr = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(i16)
    out = load_image(i16)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and out.shape == (2, 2, 3)


def test_save_image_is_atomic_and_leaves_no_temp(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    save_image(tmp_path / "a" / "b.png", img)
    assert (load_image(tmp_path / "a" / "b.png") == 0).all()
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.png"]


def make_pairs(root, names, extra_photo=None, extra_sketch=None):
    (root / "photos").mkdir(parents=True)
    (root / "sketches").mkdir()
    for n in names:
        Image.new("RGB", (10, 12), (200, 150, 120)).save(root / "photos" / f"{n}.jpg")
        Image.new("L", (10, 12), 240).save(root / "sketches" / f"{n}.png")
    if extra_photo:
        Image.new("RGB", (10, 12)).save(root / "photos" / f"{extra_photo}.jpg")
    if extra_sketch:
        Image.new("RGB", (10, 12)).save(root / "sketches" / f"{extra_sketch}.jpg")


def build(name, options):
    return c4s_core.get_registries().dataset.build(name, options)


def test_paired_folder(tmp_path):
    make_pairs(tmp_path, ["a", "b"])
    ds = build("cufs", {"root": str(tmp_path), "style": "cufs"})
    assert len(ds) == 4 and ds.identities() == ["a", "b"]
    s = ds[1]
    assert (s.identity, s.modality, s.style) == ("a", "sketch", "cufs") and s.image.shape == (12, 10, 3)


def test_paired_folder_mismatch_reported(tmp_path):
    make_pairs(tmp_path, ["a"], extra_photo="lonely", extra_sketch="orphan")
    with pytest.raises(DataError) as e:
        build("paired_folder", {"root": str(tmp_path)})
    assert "photos/lonely" in str(e.value) and "sketches/orphan" in str(e.value)
    ds = build("paired_folder", {"root": str(tmp_path), "on_unpaired": "skip"})
    assert len(ds) == 2 and len(ds.unpaired) == 2
    with pytest.raises(ConfigError, match="on_unpaired"):
        build("paired_folder", {"root": str(tmp_path), "on_unpaired": "ignore"})


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "sketches").mkdir()
    with pytest.raises(DataError, match="no images"):
        build("paired_folder", {"root": str(tmp_path)})
    with pytest.raises(DataError, match="not found"):
        build("paired_folder", {"root": str(tmp_path / "nope")})
    with pytest.raises(DataError, match="no identity folders"):
        build("identity_folder", {"root": str(tmp_path)})


def test_corrupt_file_skip_policy(tmp_path):
    make_pairs(tmp_path, ["a", "b"])
    (tmp_path / "sketches" / "b.png").write_bytes(b"\x89PNG\r\n garbage")
    ds = build("paired_folder", {"root": str(tmp_path)})
    with pytest.raises(ImageReadError, match="b.png"):
        load_samples(ds)
    samples, rep = load_samples(ds, on_error="skip")
    assert len(samples) == 3 and rep.skipped[0][0].endswith("b.png")
    assert "1 skipped" in rep.summary()


def test_identity_folder(tmp_path):
    for ident, n in (("x", 2), ("y", 1)):
        (tmp_path / ident).mkdir()
        for k in range(n):
            Image.new("RGB", (4, 4), k * 50).save(tmp_path / ident / f"{k}.png")
    ds = build("identity_folder", {"root": str(tmp_path), "min_images": 2})
    assert len(ds) == 2 and ds.identities() == ["x"]


def test_manifest_roundtrip_and_torn_tail(tmp_path):
    m = tmp_path / "manifest.jsonl"
    save_image(tmp_path / "p" / "0.png", np.full((4, 4, 3), 9, np.uint8))
    append_manifest(m, [{"path": "p/0.png", "identity": "p", "modality": "sketch", "style": "pencil"}])
    with open(m, "a") as f:
        f.write('{"path": "p/1.png", "iden')  # a killed writer
    assert len(read_manifest(m)) == 1
    append_manifest(m, [{"path": "p/0.png", "identity": "q", "modality": "photo"}])
    recs = read_manifest(m)
    assert [r["identity"] for r in recs] == ["p", "q"]
    ds = build("manifest", {"path": str(m), "modality": "sketch"})
    assert len(ds) == 1 and ds[0].style == "pencil" and ds[0].image[0, 0, 0] == 9
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_manifest(bad)


def test_paired_folder_styles_from_csv_and_exclude(tmp_path):
    make_pairs(tmp_path, ["a_1", "a_2", "b_1"])
    (tmp_path / "pairs.csv").write_text("name,sketch_style\na_1,0\na_2,2\nb_1,1\n")
    ds = build("paired_folder", {"root": str(tmp_path), "styles_csv": "pairs.csv", "style_prefix": "fs2k_",
                                 "exclude": "^b_"})
    assert {(r.identity, r.style) for r in ds.refs if r.modality == "sketch"} == {("a_1", "fs2k_0"), ("a_2", "fs2k_2")}
    assert {r.identity for r in ds.refs} == {"a_1", "a_2"}
    (tmp_path / "pairs.csv").write_text("name,sketch_style\na_1,0\n")
    with pytest.raises(DataError, match=r"pairs\.csv: no row for 2 pair\(s\), e\.g\. a_2, b_1"):
        build("paired_folder", {"root": str(tmp_path), "styles_csv": "pairs.csv"})
    with pytest.raises(DataError, match="no column 'artist'"):
        build("paired_folder", {"root": str(tmp_path), "styles_csv": "pairs.csv", "style_column": "artist"})
    with pytest.raises(DataError, match="cannot read styles_csv"):
        build("paired_folder", {"root": str(tmp_path), "styles_csv": "missing.csv"})


def test_concat_pools_datasets_and_refuses_shared_names(tmp_path):
    make_pairs(tmp_path / "x", ["p1", "p2"])
    make_pairs(tmp_path / "y", ["q1"])
    parts = [{"name": "paired_folder", "options": {"root": str(tmp_path / "x"), "style": "cufs"}},
             {"name": "synthfaces", "options": {"num_identities": 2, "images_per_identity": 1,
                                                "sketches_per_identity": 1, "size": 32, "prefix": "s"}},
             {"name": "paired_folder", "options": {"root": str(tmp_path / "y")}}]
    ds = build("concat", {"datasets": parts})
    assert len(ds) == 4 + 4 + 2
    assert [ds[i].identity for i in range(len(ds))] == [r.identity for r in ds.refs]
    assert ds[0].style is None and ds[1].style == "cufs" and ds[-1].identity == "q1"
    assert ds[5].image.shape == (32, 32, 3) and ds[-1].image.shape[2] == 3
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(DataError, match=r"concat: datasets 0 and 1 \(paired_folder\) share identity names, e\.g\. p1"):
        build("concat", {"datasets": [parts[0], parts[0]]})


def test_recover_folder_finishes_a_swap_cut_by_a_kill(tmp_path):
    from c4s_core.data.io import recover_folder, replace_folder

    path, tmp = tmp_path / "last", tmp_path / ".last.tmp"
    path.mkdir()
    (path / "v").write_text("1")
    tmp.mkdir()
    (tmp / "v").write_text("2")
    # killed between the two renames of replace_folder: old moved aside, new not yet in place
    os.replace(path, tmp_path / ".last.old-123")
    assert recover_folder(tmp, path) == path and (path / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # killed while the new one was being written: the old one stays, the partial temp goes
    tmp.mkdir()
    (tmp / "half").write_text("")
    assert recover_folder(tmp, path) == path and (path / "v").read_text() == "2" and not tmp.exists()
    # only the old one moved aside, no temp: put it back
    os.replace(path, tmp_path / ".last.old-9")
    assert recover_folder(tmp, path) == path and (path / "v").read_text() == "2"
    replace_folder(path, tmp_path / "other")
    assert recover_folder(tmp, path) is None


def test_peak_rss_sees_a_stage_allocation():
    from c4s_core.malloc import THRESHOLD
    from c4s_core.pipelines.common import PeakRSS

    with PeakRSS(interval=0.01) as idle:
        pass
    with PeakRSS(interval=0.01) as busy:
        # 200 MB touched, in a block above the tuned mmap threshold: fresh pages, not heap
        # memory freed (and kept, c4s_core/malloc.py) by earlier tests
        block = np.ones((THRESHOLD + 200 * 2**20) // 8)
        del block
    if idle.peak_mb is None:
        pytest.skip("no /proc/self/statm here")
    assert busy.peak_mb - idle.peak_mb > 150
