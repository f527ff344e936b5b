"""Bootstrap intervals over probe identities (c4s_core.metrics): figures that
can fail, on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from c4s_core import metrics


def embeddings(n_ids, per_id, noise, seed=0, dim=32):
    """Probes: ``per_id`` noisy sketches of each gallery identity (one photo each)."""
    rng = np.random.default_rng(seed)
    gallery = rng.normal(size=(n_ids, dim))
    probes = np.repeat(gallery, per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    pid = [f"id{k:04d}" for k in range(n_ids) for _ in range(per_id)]
    gid = [f"id{k:04d}" for k in range(n_ids)]
    return metrics.match(probes, gallery, pid, gid), pid


def test_weights_draw_identities_with_replacement_and_are_seeded():
    codes, w = metrics.bootstrap_weights(["b", "a", "b", "c"], 200, seed=3)
    assert codes.tolist() == [1, 0, 1, 2]  # identities sorted by name
    assert w.shape == (200, 3) and (w.sum(axis=1) == 3).all() and (w >= 0).all()
    assert (w == 0).any() and (w >= 2).any()  # some identities left out, some drawn twice
    assert np.array_equal(w, metrics.bootstrap_weights(["a", "b", "c"], 200, seed=3)[1])  # ids, not images
    assert not np.array_equal(w, metrics.bootstrap_weights(["a", "b", "c"], 200, seed=4)[1])
    assert metrics.bootstrap_weights(["a"], 0)[1].shape == (0, 1)


def test_interval_contains_the_estimate_and_shrinks_with_more_probe_identities():
    widths = []
    for n in (40, 640):
        res, pid = embeddings(n, 1, noise=1.6, seed=n)
        curve, _ = res.cmc()
        ci = metrics.bootstrap_intervals(res, pid, resamples=500, seed=0)
        lo, hi = ci["rank"][1]
        assert lo <= curve[0] <= hi and 0 < lo < hi < 1, (n, curve[0], ci["rank"][1])
        tar = metrics.tar_at_far(*res.pairs(), [1e-1])[1e-1]
        tlo, thi = ci["tar_at_far"][1e-1]
        assert tlo <= tar <= thi, (tar, ci["tar_at_far"])
        assert ci["identities"] == n and ci["resamples"] == 500
        widths.append(hi - lo)
    # a 16 times larger test: the interval about 4 times narrower (1/sqrt(n)); at least twice
    assert widths[1] < widths[0] / 2, widths


def test_seeded_reproducible():
    res, pid = embeddings(60, 2, noise=1.5)
    a = metrics.bootstrap_intervals(res, pid, 300, seed=7)
    assert a == metrics.bootstrap_intervals(res, pid, 300, seed=7)
    assert a != metrics.bootstrap_intervals(res, pid, 300, seed=8)


def test_a_probe_identity_with_three_sketches_moves_as_one():
    """Each person has three sketches, all found or all missed: resampling people
    gives rank-1 values in steps of one person (3 probes), and a wider interval
    than resampling the 3 x n probes as if independent would."""
    rng = np.random.default_rng(0)
    n = 30
    hit = rng.random(n) < 0.5
    ranks = np.repeat(np.where(hit, 1, 2), 3)
    pid = [f"p{k:02d}" for k in range(n) for _ in range(3)]
    codes, w = metrics.bootstrap_weights(pid, 400, seed=0)
    stats = metrics._rank_stats(ranks, codes, w, [1])[1]
    # every resample draws n people, hence 3n probes, and its rank-1 is a multiple of 1/n
    assert np.allclose(stats * n, np.round(stats * n))
    # probes as units: three times as many independent draws -> an interval about sqrt(3) narrower
    _, w_img = metrics.bootstrap_weights([f"x{k}" for k in range(3 * n)], 400, seed=0)
    per_image = metrics._rank_stats(ranks, np.arange(3 * n), w_img, [1])[1]
    assert np.std(stats) > 1.4 * np.std(per_image), (np.std(stats), np.std(per_image))


def test_tar_threshold_recomputed_from_the_resample_equals_tar_at_far_without_resampling():
    res, pid = embeddings(80, 2, noise=1.4)
    codes = np.unique(pid, return_inverse=True)[1]
    ones = np.ones((1, 80), np.int64)
    rows = np.arange(len(pid))
    for far in metrics.FARS:
        want = metrics.tar_at_far(*res.pairs(), [far])[far]
        got = metrics._tar_stats(res, rows, codes, ones, far)[0]
        if want is None:
            assert np.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-12), far
    # doubling every identity's weight is the same data twice: the same TAR
    assert metrics._tar_stats(res, rows, codes, 2 * ones, 1e-2)[0] == pytest.approx(
        metrics.tar_at_far(*res.pairs(), [1e-2])[1e-2])


def test_paired_difference_of_identical_evaluations_is_exactly_zero():
    res, pid = embeddings(50, 2, noise=1.5)
    d = metrics.paired_rank_difference(res.ranks, res.ranks.copy(), pid, resamples=500)
    assert (d["difference"], d["low"], d["high"]) == (0.0, 0.0, 0.0)
    assert d["probes"] == 100 and d["identities"] == 50


def test_paired_difference_sees_what_separate_intervals_miss():
    """b is a with two more people found: separate intervals overlap widely, the
    paired one is strictly above zero (the shared people cancel)."""
    rng = np.random.default_rng(1)
    n = 200
    a = np.where(rng.random(n) < 0.5, 1, 3)
    b = a.copy()
    misses = np.flatnonzero(a > 1)[:6]
    b[misses] = 1
    pid = [f"p{k}" for k in range(n)]
    d = metrics.paired_rank_difference(b, a, pid, resamples=1000, seed=0)
    assert d["difference"] == pytest.approx(6 / n)
    assert 0 < d["low"] <= d["difference"] <= d["high"], d
    codes, w = metrics.bootstrap_weights(pid, 1000, seed=0)
    sa = metrics._rank_stats(a, codes, w, [1])[1]
    assert np.quantile(sa, 0.975) - np.quantile(sa, 0.025) > 2 * (d["high"] - d["low"])
    with pytest.raises(ValueError, match="same probes"):
        metrics.paired_rank_difference(a, b[:-1], pid)
    off = metrics.paired_rank_difference(b, a, pid, resamples=0)
    assert off["difference"] == pytest.approx(6 / n) and off["low"] is None


def test_seeded_difference_of_identical_runs_is_exactly_zero():
    res, pid = embeddings(40, 2, noise=1.5)
    runs = [res.ranks, res.ranks.copy(), res.ranks.copy()]
    d = metrics.seeded_rank_difference(runs, [r.copy() for r in runs], pid, resamples=300)
    assert (d["difference"], d["low"], d["high"], d["probe_low"], d["probe_high"]) == (0.0,) * 5
    assert (d["t_low"], d["t_high"], d["seed_sd"]) == (0.0, 0.0, 0.0) and d["per_seed"] == [0.0] * 3
    assert d["seeds_a"] == d["seeds_b"] == 3 and d["probes"] == 80 and d["identities"] == 40


def test_seeded_difference_counts_the_training_noise_one_run_hides():
    """a finds everyone at seed 0 and no one at seed 1; b finds the same half of
    the people at both. With the seeds held fixed a's mean is 0.5 in every
    resample, so the probe interval only moves with b (about +-0.07 at 200
    people); drawing a's seeds gives 1.0, 0.5 or 0.0 for a with chances 1/4,
    1/2, 1/4, so the two-level interval spans about -0.5 to +0.5."""
    n = 200
    pid = [f"p{k}" for k in range(n)]
    hit, miss = np.ones(n, np.int64), np.full(n, 5, np.int64)
    half = np.where(np.arange(n) % 2 == 0, 1, 5)
    d = metrics.seeded_rank_difference([hit, miss], [half, half.copy()], pid, resamples=2000, seed=0)
    assert d["difference"] == 0.0 and d["a"] == 0.5 and d["b"] == 0.5
    assert -0.15 < d["probe_low"] < 0 < d["probe_high"] < 0.15
    assert d["low"] <= -0.45 and d["high"] >= 0.45
    # t over the per-seed differences [+0.5, -0.5]: sd sqrt(0.5), t(0.975, df 1) = 12.706
    assert d["per_seed"] == [0.5, -0.5]
    assert d["t_high"] == pytest.approx(12.7062 * np.sqrt(0.5) / np.sqrt(2), rel=1e-4) and d["t_low"] == -d["t_high"]


def test_seeded_difference_decides_a_clear_gain_and_checks_shapes():
    rng = np.random.default_rng(2)
    n = 150
    pid = [f"p{k}" for k in range(n)]
    base = [np.where(rng.random(n) < 0.4, 1, 4) for _ in range(3)]
    better = [np.where(rng.random(n) < 0.8, 1, 4) for _ in range(3)]
    d = metrics.seeded_rank_difference(better, base, pid, resamples=1000)
    assert d["low"] > 0.2 and d["t_low"] > 0.2 and d["difference"] == pytest.approx(
        np.mean([np.mean(x == 1) for x in better]) - np.mean([np.mean(x == 1) for x in base]))
    with pytest.raises(ValueError, match="same 150 probes"):
        metrics.seeded_rank_difference([b[:-1] for b in better], base, pid)
    one = metrics.seeded_rank_difference(better[:1], base[:2], pid, resamples=0)  # unequal seeds: no t, no per-seed
    assert one["per_seed"] is None and one["t_low"] is None and one["low"] is None and one["seeds_b"] == 2


def test_seeded_difference_pairs_seeds_that_share_their_noise():
    """Seed s moves both arms alike (real-only's rank-1 0.2, 0.5, 0.8 by seed) and
    a finds 10 more people than b at every seed. Drawn as pairs, the seed noise
    cancels and the gain is decided (low > 0: a resample misses all 10 people
    with chance about e^-10); drawn on their own, the arms' seed spread (+-0.3)
    swamps a gain of 0.05."""
    n = 200
    pid = [f"p{k}" for k in range(n)]
    order = np.random.default_rng(3).permutation(n)
    b = [np.where(np.isin(np.arange(n), order[: int(r * n)]), 1, 4) for r in (0.2, 0.5, 0.8)]
    a = []
    for x in b:
        y = x.copy()
        y[np.flatnonzero(x > 1)[:10]] = 1
        a.append(y)
    paired = metrics.seeded_rank_difference(a, b, pid, resamples=2000)
    alone = metrics.seeded_rank_difference(a, b, pid, resamples=2000, paired_seeds=False)
    assert paired["paired_seeds"] and not alone["paired_seeds"]
    assert paired["difference"] == alone["difference"] == pytest.approx(10 / n)
    assert 0 < paired["low"] <= 10 / n <= paired["high"]
    assert alone["low"] < -0.1 and alone["high"] > 0.1
    assert paired["seed_sd"] == pytest.approx(0, abs=1e-12)  # every seed's difference is 10 / n
