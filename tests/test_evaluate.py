"""The evaluate pipeline: report.json, report.md, figures, subsets, worst failures, baselines.

Metrics on hand-computed cases are in test_metrics.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import c4s_core
from c4s_core.data.io import save_image
from c4s_core.pipelines import evaluate


def make_pairs(root, n=6, names=None):
    """Smooth random 'faces'; the sketch is an inverted grey copy with a little noise."""
    rng = np.random.default_rng(0)
    names = names or [f"id{k}" for k in range(n)]
    for name in names:
        base = rng.normal(size=(12, 10, 3))
        img = np.kron(base, np.ones((10, 10, 1)))
        photo = np.clip(128 + 50 * img, 0, 255).astype(np.uint8)
        gray = photo.mean(axis=2, keepdims=True).repeat(3, axis=2)
        sketch = np.clip(255 - gray + rng.normal(0, 5, gray.shape), 0, 255).astype(np.uint8)
        save_image(root / "photos" / f"{name}.png", photo)
        save_image(root / "sketches" / f"{name}.png", sketch)
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


def paired(root):
    return {"name": "paired_folder", "options": {"root": str(root)}}


def swap_sketch(root, victim, other):
    """The victim's probe becomes a copy of another identity's sketch: it must fail."""
    (root / "sketches" / f"{victim}.png").write_bytes((root / "sketches" / f"{other}.png").read_bytes())


def assert_real_png(path, min_kb=5):
    from PIL import Image

    assert path.is_file(), path
    assert path.stat().st_size > min_kb * 1024, (path, path.stat().st_size)
    a = np.asarray(Image.open(path).convert("L"), np.float32)
    assert a.std() > 10, (path, a.std())  # not blank
    return a


def test_report_md_figures_and_worst_failure(tmp_path):
    data = make_pairs(tmp_path / "data", n=10)
    swap_sketch(data, "id3", "id7")
    out = tmp_path / "out"
    rep = evaluate.run(evaluate.Config(probes=paired(data), gallery=paired(data), out=out, worst=5), progress=False)
    # the swapped probe is the worst failure: its top match is the identity it was copied from
    w = rep["worst_failures"]
    assert w and w[0]["probe"] == "id3" and w[0]["top_identity"] == "id7" and w[0]["rank"] > 1, w
    assert w[0]["top_score"] > w[0]["mate_score"] and w[0]["probe_path"].endswith("id3.png")
    assert all(a["rank"] >= b["rank"] for a, b in zip(w, w[1:], strict=False))
    assert rep["rank"]["1"] <= 0.9  # at least id3 missed
    for name in ("cmc.png", "roc.png", "scores.png"):
        assert_real_png(out / name)
    sheet = assert_real_png(out / "worst_failures.png", min_kb=2)
    assert sheet.shape[0] > 128 * len(w) and sheet.shape[1] > 3 * 128  # one row per failure, three columns
    md = (out / "report.md").read_text()
    for s in ("| rank-1 |", "| TAR@FAR=1e-01 |", "| AUC |", "![cmc](cmc.png)", "![roc](roc.png)",
              "![scores](scores.png)", "worst_failures.png", "| 1 | id3 |"):
        assert s in md, s
    assert "baseline" not in md.lower()  # no baseline asked for
    saved = json.loads((out / "report.json").read_text())
    assert saved["files"]["worst_failures"] == "worst_failures.png" and len(saved["cmc"]) == 10
    assert saved["roc"]["far"] and all(0 < f <= 1 for f in saved["roc"]["far"])


def test_per_subset_metrics_from_name_prefix(tmp_path):
    names = [f"ar_{k}" for k in range(6)] + [f"cu_{k}" for k in range(6)]
    data = make_pairs(tmp_path / "data", names=names)
    swap_sketch(data, "cu_2", "cu_4")  # one failure, in the cu subset only
    cfg = evaluate.Config(probes=paired(data), gallery=paired(data), out=tmp_path / "out",
                          subset_pattern=r"^(?P<subset>[a-z]+)_")
    rep = evaluate.run(cfg, progress=False)
    sub = rep["subsets"]
    assert set(sub) == {"ar", "cu"} and sub["ar"]["probes"] == sub["cu"]["probes"] == 6
    assert sub["cu"]["rank"]["1"] < sub["ar"]["rank"]["1"]
    assert rep["worst_failures"][0]["subset"] == "cu"
    # the subsets partition the probes: their rank-1 average back to the total
    total = sum(m["rank"]["1"] * m["probes_used"] for m in sub.values()) / rep["counts"]["probes_used"]
    assert total == pytest.approx(rep["rank"]["1"])
    for m in sub.values():  # each subset's probes against the whole gallery of 12
        assert m["rank"]["1"] <= m["rank"]["5"] <= m["rank"]["10"] <= 1.0 and 0 <= m["auc"] <= 1
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Per subset" in md and "| ar | 6 |" in md and "| cu | 6 |" in md
    # no pattern, no meta: no subsets
    rep = evaluate.run(cfg.model_copy(update={"subset_pattern": None, "out": tmp_path / "o2"}), progress=False)
    assert rep["subsets"] == {} and "Per subset" not in (tmp_path / "o2" / "report.md").read_text()


def test_subset_labels_prefer_dataset_meta():
    from c4s_core.data.datasets import Sample

    im = np.zeros((4, 4, 3), np.uint8)
    samples = [Sample(im, "AR_1", "sketch", meta={"subset": "set1"}), Sample(im, "XM2VTS_2", "sketch"),
               Sample(im, "9", "sketch")]
    labels, source = evaluate._subsets(samples, r"^(?P<subset>[^_]+)_")
    assert labels == ["set1", "XM2VTS", "other"] and "meta" in source and "subset_pattern" in source
    assert evaluate._subsets(samples[1:], None) == ([None, None], None)


class PixelBackbone:
    """Raw grey pixels, mean-removed: a deliberately poor test backbone."""

    name = "pixels"
    color_order = "RGB"
    input_size = (16, 16)
    embedding_dim = 256

    class Config(c4s_core.ComponentConfig):
        pass

    def __init__(self, config):
        self.config = config

    def embed(self, images):
        x = np.stack([np.asarray(im, np.float32).mean(axis=2).ravel() for im in images])
        return x - x.mean(axis=1, keepdims=True)


def test_compare_with_hog_and_with_a_baseline_report(tmp_path):
    from c4s_core.registry import Origin

    c4s_core.get_registries().backbone.register(PixelBackbone, origin=Origin("test"))
    data = make_pairs(tmp_path / "data", n=8)
    ds = paired(data)
    out = tmp_path / "pixels"
    rep = evaluate.run(evaluate.Config(probes=ds, gallery=ds, backbone={"name": "pixels"}, out=out,
                                       compare_with_hog=True), progress=False)
    b = rep["baseline"]
    # inverted-grey sketches: raw pixels anti-correlate with the photo, HOG's gradients do not
    assert b["backbone"] == "hog" and b["rank"]["1"] > rep["rank"]["1"], (b["rank"], rep["rank"])
    assert b["verdict"] == "does not beat"
    md = (out / "report.md").read_text()
    assert "**pixels does not beat the HOG baseline** on the same data" in md and "| HOG baseline |" in md
    assert_real_png(out / "cmc.png")
    # the other way round, from the saved report.json
    rep2 = evaluate.run(evaluate.Config(probes=ds, gallery=ds, out=tmp_path / "hog", baseline=out / "report.json"),
                        progress=False)
    assert rep2["baseline"]["verdict"] == "beats"
    # the same probes ranked by both: the paired difference is the rank-1 difference, inside its interval
    d = rep2["baseline"]["paired_rank1"]
    assert d["matched_probes"] == rep2["counts"]["probes_used"]
    assert d["difference"] == pytest.approx(rep2["rank"]["1"] - rep["rank"]["1"], abs=1e-9)
    assert d["low"] <= d["difference"] <= d["high"]
    assert "Paired over the" in (tmp_path / "hog" / "report.md").read_text()
    assert "**hog beats the baseline (pixels)**" in (tmp_path / "hog" / "report.md").read_text()
    # compare_with_hog on HOG itself: nothing to compare, said so
    rep3 = evaluate.run(evaluate.Config(probes=ds, gallery=ds, out=tmp_path / "h3", compare_with_hog=True),
                        progress=False)
    assert "baseline" not in rep3 and "HOG itself" in rep3["baseline_note"]


def test_config_checks_subset_pattern_and_baseline(tmp_path):
    with pytest.raises(Exception, match="named group 'subset'"):
        evaluate.Config(subset_pattern="^([a-z]+)")
    with pytest.raises(Exception, match="not a valid regular expression"):
        evaluate.Config(subset_pattern="^(?P<subset>[a-z+")
    with pytest.raises(Exception, match="not both"):
        evaluate.Config(baseline=tmp_path / "r.json", compare_with_hog=True)
    from c4s_core.errors import DataError

    with pytest.raises(DataError, match="r.json: file not found"):
        evaluate.run(evaluate.Config(baseline=tmp_path / "r.json", out=tmp_path / "o"), progress=False)
    (tmp_path / "r.json").write_text('{"rank": {}}')
    with pytest.raises(DataError, match="lacks tar_at_far, auc"):
        evaluate.run(evaluate.Config(baseline=tmp_path / "r.json", out=tmp_path / "o"), progress=False)


class ChromaBackbone(PixelBackbone):
    """Per-pixel colour differences (R-G, G-B): zero for grey images."""

    name = "chroma"

    def embed(self, images):
        x = np.stack([np.asarray(im, np.float32) for im in images])
        return np.concatenate([(x[..., 0] - x[..., 1]).reshape(len(x), -1),
                               (x[..., 1] - x[..., 2]).reshape(len(x), -1)], axis=1) + 1.0


def test_grayscale_turns_every_crop_grey(tmp_path):
    from c4s_core.data.io import grey3 as _grey
    from c4s_core.registry import Origin

    c4s_core.get_registries().backbone.register(ChromaBackbone, origin=Origin("test"))
    ds = paired(make_pairs(tmp_path / "data", n=6))
    runs = {g: evaluate.run(evaluate.Config(probes=ds, gallery=ds, backbone={"name": "chroma"},
                                            out=tmp_path / f"g{g}", grayscale=g), progress=False) for g in (False, True)}
    # grey crops carry no colour: every embedding is the same constant, so scores tie at 1
    scores = json.loads((tmp_path / "gTrue" / "report.json").read_text())
    assert scores["grayscale"] is True and runs[True]["auc"] == 0.5
    assert runs[False]["auc"] != 0.5
    px = np.array([[[255, 0, 0], [10, 200, 30]]], np.uint8)
    assert _grey(px).tolist() == [[[76, 76, 76], [124, 124, 124]]]
    assert _grey(px[..., 0]).shape == (1, 2, 3)


def test_intervals_and_per_probe_results(tmp_path):
    """report.json and report.md carry bootstrap intervals around the estimates;
    probes.jsonl holds each probe's rank and mate score; bootstrap 0 turns them off."""
    data = make_pairs(tmp_path / "data", n=10)
    swap_sketch(data, "id3", "id7")
    cfg = evaluate.Config(probes=paired(data), gallery=paired(data), out=tmp_path / "out", worst=0, bootstrap=300)
    rep = evaluate.run(cfg, progress=False)
    ci = rep["intervals"]
    assert ci["resamples"] == 300 and ci["identities"] == 10 and set(ci["rank"]) == {"1", "5", "10", "20"}
    for k, (lo, hi) in ci["rank"].items():
        assert lo <= rep["rank"][k] <= hi, k
    assert ci["rank"]["1"][0] < ci["rank"]["1"][1]  # id3 is missed in some resamples only
    recs = evaluate.read_probes(tmp_path / "out")
    assert [r["probe"] for r in recs] == [f"id{k}" for k in range(10)]
    assert recs[3]["rank"] > 1 and recs[3]["top_score"] > recs[3]["mate_score"]
    assert sum(r["rank"] == 1 for r in recs) / 10 == rep["rank"]["1"]
    md = (tmp_path / "out" / "report.md").read_text()
    lo, hi = ci["rank"]["1"]
    assert f"| rank-1 | {rep['rank']['1']:.3f} | [{lo:.3f}, {hi:.3f}] |" in md and "probe identities" in md
    assert evaluate.run(cfg.model_copy(update={"bootstrap": 0, "out": tmp_path / "o2"}), progress=False)["intervals"] is None
    assert "95 % interval" not in (tmp_path / "o2" / "report.md").read_text()
