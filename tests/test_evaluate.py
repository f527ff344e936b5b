"""Metrics and the evaluate pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

import c4s_core
from c4s_core import metrics
from c4s_core.data.io import save_image
from c4s_core.pipelines import evaluate


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, a), np.eye(2))


def test_cmc_with_distractors_and_ties():
    sim = np.array([
        [0.9, 0.1, 0.95, 0.0],   # probe a: distractor d1 beats its mate -> rank 2
        [0.2, 0.8, 0.1, 0.3],    # probe b: rank 1
        [0.5, 0.5, 0.5, 0.5],    # probe c: not in gallery -> left out
    ])
    curve, used = metrics.cmc(sim, ["a", "b", "c"], ["a", "b", "d1", "d2"])
    assert used == 2
    np.testing.assert_allclose(curve, [0.5, 1.0, 1.0, 1.0])
    # an identity's score is its best image; a tie counts against the probe
    curve, _ = metrics.cmc(np.array([[0.3, 0.7, 0.7]]), ["a"], ["a", "a", "b"])
    assert curve[0] == 0.0 and curve[1] == 1.0


def test_tar_at_far_and_auc():
    gen = np.array([0.9, 0.8, 0.7, 0.2])
    imp = np.linspace(0.0, 0.6, 1000)
    tar = metrics.tar_at_far(gen, imp)
    assert tar[1e-1] == 0.75 and tar[1e-3] == 0.75
    assert metrics.tar_at_far(gen, imp[:50])[1e-3] is None  # too few impostors to measure
    assert metrics.roc_auc([1.0, 2.0], [0.0, 0.5]) == 1.0
    assert metrics.roc_auc([0.5], [0.5]) == 0.5
    rng = np.random.default_rng(0)
    g, i = rng.normal(1, 1, 300), rng.normal(0, 1, 400)
    brute = np.mean(g[:, None] > i[None, :]) + 0.5 * np.mean(g[:, None] == i[None, :])
    assert abs(metrics.roc_auc(g, i) - brute) < 1e-12


def make_pairs(root, n=6):
    """Smooth random 'faces'; the sketch is an inverted grey copy with a little noise."""
    rng = np.random.default_rng(0)
    for k in range(n):
        base = rng.normal(size=(12, 10, 3))
        img = np.kron(base, np.ones((10, 10, 1)))
        photo = np.clip(128 + 50 * img, 0, 255).astype(np.uint8)
        gray = photo.mean(axis=2, keepdims=True).repeat(3, axis=2)
        sketch = np.clip(255 - gray + rng.normal(0, 5, gray.shape), 0, 255).astype(np.uint8)
        save_image(root / "photos" / f"id{k}.png", photo)
        save_image(root / "sketches" / f"id{k}.png", sketch)
    return root


def test_evaluate_writes_report(tmp_path):
    data = make_pairs(tmp_path / "data")
    ds = {"name": "paired_folder", "options": {"root": str(data)}}
    dist = tmp_path / "dist"
    for k in range(3):
        save_image(dist / f"x{k}.png", np.random.default_rng(k).integers(0, 255, (120, 100, 3), dtype=np.uint8))
    (dist / "broken.png").write_bytes(b"not a png")
    cfg = evaluate.Config(
        probes=ds, gallery=ds, out=tmp_path / "out", limit=5, on_error="skip",
        distractors={"name": "image_folder", "options": {"root": str(dist)}},
    )
    r = evaluate.run(cfg, progress=False)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["rank"] == r["rank"] and set(rep["rank"]) == {"1", "5", "10", "20"}
    assert set(rep["tar_at_far"]) == {"1e-01", "1e-02", "1e-03"}
    c = rep["counts"]
    assert (c["probes"], c["gallery"], c["distractors"], c["gallery_identities"]) == (5, 5, 3, 8)
    assert c["skipped_files"] == 1 and "broken.png" in rep["skipped_files"][0]["path"]
    assert c["no_face"] == 0 and c["align"]["probes"]["ok"] == 5
    assert 0.0 <= rep["rank"]["1"] <= rep["rank"]["5"] <= 1.0 and 0 <= rep["auc"] <= 1
    assert (tmp_path / "out" / "cmc.png").stat().st_size > 1000


def test_evaluate_default_config_is_valid():
    cfg = evaluate.Config()
    assert (cfg.backbone.name, cfg.aligner.name, cfg.probes.name) == ("hog", "center", "synthfaces")
    with pytest.raises(Exception, match="shfit"):
        evaluate.Config.model_validate({"perturb": {"shfit": 0.1}})


def test_evaluate_default_config_on_synthfaces(tmp_path):
    if "synthfaces" not in c4s_core.get_registries().dataset:
        pytest.skip("synthfaces dataset not available")
    r = evaluate.run(evaluate.Config(out=tmp_path / "out", limit=8), progress=False)
    assert r["counts"]["probes_used"] >= 1 and r["rank"]["1"] is not None


def test_dlib_resnet_is_robust_to_misaligned_sketches(cufs, tmp_path):
    """60 CUFS pairs, sketches shifted/scaled/rotated: dlib_resnet, which aligns
    itself, keeps its rank-1; HOG on the fixed centre crop does not."""
    pytest.importorskip("dlib")
    ds = {"name": "paired_folder", "options": {"root": str(cufs)}}
    pert = {"shift": 0.1, "scale": 0.1, "rotate": 10.0, "seed": 0}
    rank1 = {}
    for bb in ("hog", "dlib_resnet"):
        cfg = evaluate.Config(probes=ds, gallery=ds, backbone={"name": bb}, limit=60, perturb=pert,
                              out=tmp_path / bb)
        rank1[bb] = evaluate.run(cfg, progress=False)["rank"]["1"]
    assert rank1["dlib_resnet"] >= 0.55, rank1
    assert rank1["dlib_resnet"] >= rank1["hog"] + 0.3, rank1
