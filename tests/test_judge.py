"""The identity-fidelity judge (c4s_core.judge) and report-dataset's --judge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c4s_core import judge as jd


class PixelJudge:
    """A stand-in judge: the centred grey pixels at 16 px (identical images, identical embeddings)."""

    input_size = (16, 16)
    embedding_dim = 256

    def embed(self, images):
        x = np.stack([np.asarray(im, np.float32)[..., 0].ravel() for im in images])
        return x - x.mean(1, keepdims=True)


def faces(n, seed, side=16):
    rng = np.random.default_rng(seed)
    return [np.repeat(rng.integers(0, 256, (side, side, 1), dtype=np.uint8), 3, 2) for _ in range(n)]


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert jd.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5])
    assert jd.frechet_distance(a, a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-6)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    x, y = rng.normal(0, 1, (5000, 1)), rng.normal(3, 2, (5000, 1))
    want = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert jd.frechet_distance(x, y) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="2 rows"):
        jd.frechet_distance(a[:1], a)


def test_copies_of_the_references_rank_first_and_show_no_diversity():
    refs = dict(zip([f"g{i}" for i in range(12)], faces(12, 1), strict=True))
    gen = ([refs[d] for d in refs for _ in range(3)], [d for d in refs for _ in range(3)], ["a"] * 36)
    real_ph = {f"r{i}": [p] for i, p in enumerate(faces(20, 2))}
    rng = np.random.default_rng(3)
    noisy = [np.clip(p[0].astype(int) + rng.integers(-120, 120, p[0].shape), 0, 255).astype(np.uint8)
             for p in real_ph.values()]
    real = (noisy, list(real_ph), ["a"] * 20)
    out = jd.judge_set(PixelJudge(), gen, refs, real, real_ph, distractors=faces(30, 4), grey=False)
    assert out["identities"] == 12 and out["distractors"] == 30  # min(12 generated, 20 real) per gallery
    g, r = out["generated"], out["real"]
    assert (g["probes"], g["gallery_identities"], r["probes"], r["gallery_identities"]) == (36, 42, 12, 42)
    assert g["rank1"] == 1.0 and g["genuine"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < r["rank1"] <= 1.0 and r["gap"] < g["gap"]
    assert out["diversity"]["generated"]["within_identity"] == pytest.approx(0.0, abs=1e-5)
    assert out["diversity"]["generated"]["between_identities"] > 0.5
    assert out["frechet_distance"] > 0


def test_a_judge_that_cannot_tell_people_apart_ranks_at_chance():
    class Blind(PixelJudge):
        embedding_dim = 4

        def embed(self, images):
            return np.ones((len(images), 4), np.float32)

    refs = dict(zip([f"g{i}" for i in range(10)], faces(10, 1), strict=True))
    gen = (list(refs.values()), list(refs), [None] * 10)
    out = jd.judge_set(Blind(), gen, refs, gen, {d: [p] for d, p in refs.items()}, grey=False)
    # every score ties; ties count against the judge, so no probe is ranked first
    assert out["generated"]["rank1"] == 0.0 and out["generated"]["gap"] == pytest.approx(0.0, abs=1e-6)
    assert out["style"] is None  # no styles to classify


def test_by_style_separates_a_style_that_carries_identity_from_one_that_does_not():
    refs = dict(zip([f"g{i}" for i in range(10)], faces(10, 1), strict=True))
    noise = faces(10, 5)  # style "b": unrelated images, so only chance matches
    gen = (list(refs.values()) + noise, list(refs) * 2, ["a"] * 10 + ["b"] * 10)
    real_ph = {f"r{i}": [p] for i, p in enumerate(faces(10, 2))}
    real = ([p[0] for p in real_ph.values()], list(real_ph), ["a"] * 5 + ["c"] * 5)
    out = jd.judge_set(PixelJudge(), gen, refs, real, real_ph, distractors=faces(10, 4), grey=False)
    a, b, c = (out["by_style"][k] for k in ("a", "b", "c"))
    assert (a["generated"]["probes"], b["generated"]["probes"]) == (10, 10)
    assert a["generated"]["gallery_identities"] == b["generated"]["gallery_identities"] == 20  # one gallery
    assert a["generated"]["rank1"] == 1.0 and b["generated"]["rank1"] <= 0.3
    # the whole set's rank-1 is the probe-weighted mean of its styles'
    assert out["generated"]["rank1"] == pytest.approx((a["generated"]["rank1"] + b["generated"]["rank1"]) / 2)
    assert a["real"]["probes"] == 5 and a["rank1_ratio"] == pytest.approx(1.0 / a["real"]["rank1"])
    assert b["real"] is None and b["rank1_ratio"] is None  # no real sketch of style b
    assert c["generated"] is None and c["real"]["rank1"] == 1.0


def test_style_accuracy_names_the_style_asked_for():
    rng = np.random.default_rng(0)
    dark = [np.full((16, 16, 3), rng.integers(20, 60), np.uint8) for _ in range(20)]
    light = [np.full((16, 16, 3), rng.integers(200, 240), np.uint8) for _ in range(20)]
    real, styles = dark + light, ["dark"] * 20 + ["light"] * 20
    right = jd.style_accuracy(dark[:5] + light[:5], ["dark"] * 5 + ["light"] * 5, real, styles)
    swapped = jd.style_accuracy(dark[:5] + light[:5], ["light"] * 5 + ["dark"] * 5, real, styles)
    assert (right["accuracy"], swapped["accuracy"], right["real_accuracy"], right["chance"]) == (1.0, 0.0, 1.0, 0.5)


def test_report_dataset_judges_a_generated_set(tmp_path):
    from test_report_dataset import make_set

    from c4s_core import get_registries
    from c4s_core.errors import ConfigError
    from c4s_core.matcher_folder import save_matcher
    from c4s_core.pipelines import get_pipeline

    make_set(tmp_path / "set")
    bb = get_registries().backbone.build("ir_18", {"input_size": 32, "widths": [8, 8, 16, 16], "embedding_dim": 16})
    save_matcher(tmp_path / "judge", bb, "ir_18", {"data_hash": "test"})
    rd = get_pipeline("report-dataset")
    real = {"name": "synthfaces", "options": {"num_identities": 5, "size": 48, "seed": 9, "styles": ["line", "pencil"],
                                              "images_per_identity": 1, "sketches_per_identity": 2}}
    with pytest.raises(ConfigError, match="judge_real"):
        rd.run(rd.Config(path=tmp_path / "set", out=tmp_path / "x", judge=tmp_path / "judge"), progress=False)
    s = rd.run(rd.Config(path=tmp_path / "set", out=tmp_path / "rep", judge=tmp_path / "judge", judge_real=real,
                         judge_distractors={"name": "synthfaces", "options": {"num_identities": 4, "seed": 11,
                                                                             "size": 48, "sketches_per_identity": 0}}),
               progress=False)
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    j = rep["judge"]
    # the set's 3 identities, 3 of the 5 real ones; 4 distractor people x 2 photos (each its own identity)
    assert j["identities"] == 3 and j["distractors"] == 8
    assert (j["generated"]["probes"], j["real"]["probes"]) == (18, 3 * 2)
    assert j["generated"]["gallery_identities"] == j["real"]["gallery_identities"] == 11
    assert s["judge_rank1"] == j["generated"]["rank1"] and 0.0 <= s["judge_rank1"] <= 1.0
    assert j["side"] == 32 and j["style"]["styles"] == ["line", "pencil"]
    assert (tmp_path / "rep" / "judge.png").stat().st_size > 0 and rep["figures"]["judge"] == "judge.png"
    assert "Identity fidelity" in (tmp_path / "rep" / "report.md").read_text()
    by = j["by_style"]  # the set's styles and the real ones (line, pencil)
    assert {"line", "pencil"} <= set(by) and sum((b["real"] or {}).get("probes", 0) for b in by.values()) == 6
    assert "By style" in (tmp_path / "rep" / "report.md").read_text()
