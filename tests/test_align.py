"""Aligners: template maths, the center and dlib aligners, the no-face policy,
the crop cache and the align pipeline."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import c4s_core
from c4s_core.align import (
    Aligner,
    AlignerConfig,
    Detection,
    apply_matrix,
    estimate_similarity,
    template_points,
    warp_affine,
)
from c4s_core.data.io import list_images, load_image, save_image
from c4s_core.errors import DataError, MissingDependencyError

COLORS = {"left_eye": (255, 0, 0), "right_eye": (0, 255, 0), "nose": (0, 0, 255)}


def similarity(scale, angle_deg, tx, ty):
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])


def dot_image(points, shape=(300, 260)):
    """Grey image with a coloured disc (r=3) at each named point."""
    img = np.full((*shape, 3), 128, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for name, (x, y) in points.items():
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = COLORS[name]
    return img


def centroid(img, color):
    m = np.all(img == color, axis=2) if img.dtype == np.uint8 else None
    if not m.any():  # after interpolation: nearest colour by distance
        d = np.linalg.norm(img.astype(float) - color, axis=2)
        m = d < 60
    ys, xs = np.nonzero(m)
    return np.array([xs.mean(), ys.mean()])


class DotAligner(Aligner):
    """Test aligner: 'detects' coloured dots."""

    name = "dots"
    Config = AlignerConfig

    def detect(self, image):
        pts = {k: tuple(centroid(image, c)) for k, c in COLORS.items()}
        return Detection(pts, np.array(list(pts.values())), (0, 0, image.shape[1], image.shape[0]), 1.0)


def test_estimate_similarity_inverts_a_known_transform():
    ref = np.array(list(template_points("arcface", 112).values()))
    t = similarity(1.7, 12.0, 30.0, -8.0)
    src = apply_matrix(np.linalg.inv(t), ref)  # a face whose landmarks map onto the template by t
    m = estimate_similarity(src, ref)
    np.testing.assert_allclose(m, t, atol=1e-6)


@pytest.mark.parametrize("scale,angle,tx,ty", [(2.0, 0.0, 10.0, 20.0), (1.6, 15.0, 40.0, 30.0), (2.3, -10.0, 20.0, 50.0)])
def test_aligner_maps_known_landmarks_onto_template(scale, angle, tx, ty):
    ref = template_points("arcface", 112)
    t = similarity(scale, angle, tx, ty)  # template -> image
    pts = {k: tuple(apply_matrix(t, np.array(ref[k]))[0]) for k in COLORS}
    img = dot_image(pts)
    res = DotAligner(AlignerConfig()).align([img])[0]
    assert res.status == "ok" and res.image.shape == (112, 112, 3)
    for k, c in COLORS.items():
        got = centroid(res.image, c)
        assert np.linalg.norm(got - ref[k]) < 2.0, (k, got, ref[k])
    expected = np.linalg.inv(t)
    np.testing.assert_allclose(res.transform[:2, :2], expected[:2, :2], atol=0.01)
    np.testing.assert_allclose(res.transform[:2, 2], expected[:2, 2], atol=1.0)


def test_warp_identity_keeps_pixels():
    img = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_affine(img, np.eye(3), (40, 30)), img)


def test_center_aligner():
    regs = c4s_core.get_registries()
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = regs.aligner.build("center", {"box": (0, 0, 1, 1), "size": 64})
    res = full.align([img])[0]
    assert res.status == "ok"
    np.testing.assert_array_equal(res.image, img)
    assert res.landmarks.shape == (5, 2)
    default = regs.aligner.build("center").align([img])[0]
    assert default.image.shape == (112, 112, 3)
    with pytest.raises(c4s_core.errors.ConfigError, match="box"):
        regs.aligner.build("center", {"box": (0.5, 0, 0.2, 1)})


def test_aligner_rejects_non_rgb_input():
    al = c4s_core.get_registries().aligner.build("center")
    with pytest.raises(DataError, match="x.png"):
        al.align([np.zeros((10, 10), np.uint8)], names=["x.png"])


def test_crop_cache(tmp_path):
    regs = c4s_core.get_registries()
    img = np.random.default_rng(2).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    al = regs.aligner.build("center", {"cache_dir": str(tmp_path / "c")})
    first = al.align([img])[0]
    second = al.align([img])[0]
    assert not first.cached and second.cached
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_allclose(first.transform, second.transform, atol=1e-5)
    other = regs.aligner.build("center", {"cache_dir": str(tmp_path / "c"), "size": 56}).align([img])[0]
    assert not other.cached and other.image.shape == (56, 56, 3)
    assert len(list((tmp_path / "c").rglob("*.npz"))) == 2


# -- dlib ----------------------------------------------------------------------


def test_models_dir_without_importing_face_recognition_models():
    pytest.importorskip("dlib")
    from c4s_plugins.dlib_models import MODEL_FILES, models_dir

    d = models_dir()
    for f in MODEL_FILES.values():
        assert (d / f).is_file()
    assert "face_recognition_models" not in sys.modules


def test_missing_dlib_names_the_extra(monkeypatch):
    from c4s_plugins import dlib_models

    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingDependencyError, match=r"clip4sketch\[dlib\]") as e:
        dlib_models.DlibAligner(dlib_models.DlibAligner.Config())
    assert "dlib-bin" in str(e.value) and "dlib aligner" in str(e.value)


@pytest.mark.parametrize("policy", ["fallback", "skip", "error"])
def test_no_face_policy(policy):
    pytest.importorskip("dlib")
    regs = c4s_core.get_registries()
    blank = np.full((250, 200, 3), 255, np.uint8)
    al = regs.aligner.build("dlib", {"on_no_face": policy})
    if policy == "error":
        with pytest.raises(DataError, match="blank.png"):
            al.align([blank], names=["blank.png"])
        return
    res = al.align([blank], names=["blank.png"])[0]
    if policy == "skip":
        assert res.status == "skipped" and res.image is None
    else:
        assert res.status == "fallback"
        centre = regs.aligner.build("center").align([blank])[0]
        np.testing.assert_array_equal(res.image, centre.image)
    assert "blank.png" in res.message


def test_dlib_aligner_finds_faces_in_cufs(cufs):
    pytest.importorskip("dlib")
    al = c4s_core.get_registries().aligner.build("dlib", {"on_no_face": "skip", "cnn_fallback": False})
    ref = template_points("arcface", 112)
    for sub in ("photos", "sketches"):
        files = list_images(cufs / sub)
        res = al.align([load_image(f) for f in files], [str(f) for f in files])
        found = sum(r.status == "ok" for r in res)
        assert found / len(files) >= 0.99, f"{sub}: {found}/{len(files)}"
        # the eyes land on the template's eyes
        for r in res[:20]:
            eyes = apply_matrix(r.transform, np.array([(r.landmarks[2] + r.landmarks[3]) / 2,
                                                       (r.landmarks[0] + r.landmarks[1]) / 2]))
            assert np.linalg.norm(eyes[0] - ref["left_eye"]) < 3
            assert np.linalg.norm(eyes[1] - ref["right_eye"]) < 3


# -- align pipeline -------------------------------------------------------------


def make_pairs(root, n=4, size=(96, 80)):
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        save_image(root / "photos" / f"p{i}.png", photo)
        save_image(root / "sketches" / f"p{i}.png", 255 - photo)
    return root


def test_align_pipeline_writes_and_resumes(tmp_path):
    from c4s_core.data.manifest import read_manifest
    from c4s_core.pipelines import align

    data = make_pairs(tmp_path / "data")
    cfg = align.Config(input={"name": "paired_folder", "options": {"root": str(data)}}, out=tmp_path / "out")
    s1 = align.run(cfg, progress=False)
    assert s1["written"] == 8 and s1["ok"] == 8 and s1["kept"] == 0
    assert (tmp_path / "out" / "p0" / "photo_0.png").is_file()
    assert (tmp_path / "out" / "p3" / "sketch_0.png").is_file()
    recs = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert len(recs) == 8 and {r["status"] for r in recs} == {"ok"}
    # the output reads back as a dataset
    ds = c4s_core.get_registries().dataset.build("manifest", {"path": str(tmp_path / "out" / "manifest.jsonl")})
    assert len(ds) == 8 and ds[0].image.shape == (112, 112, 3)
    # resume: remove one crop; only it is redone
    (tmp_path / "out" / "p1" / "photo_0.png").unlink()
    s2 = align.run(cfg, progress=False)
    assert s2["kept"] == 7 and s2["written"] == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["kept"] == 7
