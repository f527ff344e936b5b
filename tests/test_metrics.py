"""Metrics on hand-computed cases, tie rules, and the chunked matcher against brute force."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from c4s_core import metrics

# 3 probes x 4 gallery identities (one image each), with a tie:
#   probe a: mate 0.9 tied with c 0.9        -> rank 2 (a tie counts against the probe)
#   probe b: mate 0.8 is the best            -> rank 1
#   probe c: mate 0.4, a .5, b .6, d .7 above -> rank 4
HAND = np.array([
    [0.9, 0.2, 0.9, 0.1],
    [0.3, 0.8, 0.1, 0.4],
    [0.5, 0.6, 0.4, 0.7],
])
PROBES, GALLERY = ["a", "b", "c"], ["a", "b", "c", "d"]


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, a), np.eye(2))
    np.testing.assert_allclose(metrics.cosine_similarity([[3.0, 4.0]], [[4.0, 3.0]]), [[24 / 25]])


def test_hand_ranks_and_cmc_with_a_tie():
    np.testing.assert_array_equal(metrics.identification_ranks(HAND, PROBES, GALLERY), [2, 1, 4])
    curve, used = metrics.cmc(HAND, PROBES, GALLERY)
    assert used == 3
    np.testing.assert_allclose(curve, [1 / 3, 2 / 3, 2 / 3, 1.0])
    curve, _ = metrics.cmc(HAND, PROBES, GALLERY, max_rank=1)
    np.testing.assert_allclose(curve, [1 / 3])


def test_hand_pair_scores_auc_and_tar():
    gen, imp = metrics.pair_scores(HAND, PROBES, GALLERY)
    np.testing.assert_allclose(np.sort(gen), [0.4, 0.8, 0.9])
    np.testing.assert_allclose(np.sort(imp), [0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9])
    # per genuine: 0.9 -> 8 impostors below + 1 tie (half) = 8.5; 0.8 -> 8; 0.4 -> 4 + 0.5
    assert metrics.roc_auc(gen, imp) == pytest.approx((8.5 + 8 + 4.5) / 27)
    tar = metrics.tar_at_far(gen, imp, fars=(0.1, 0.12, 0.25, 0.5, 1.0))
    assert tar[0.1] is None  # 0.1 * 9 impostors < 1: cannot be measured
    # far 0.12: threshold = 2nd highest impostor 0.7 -> genuine 0.9, 0.8 accepted
    assert tar[0.12] == pytest.approx(2 / 3)
    # far 0.25: floor(2.25) = 2 -> 3rd highest, 0.6
    assert tar[0.25] == pytest.approx(2 / 3)
    # far 0.5: floor(4.5) = 4 -> 5th highest, 0.4; the genuine 0.4 equals it and is rejected
    assert tar[0.5] == pytest.approx(2 / 3)
    assert tar[1.0] == 1.0  # threshold -inf: everything accepted


def test_tar_threshold_ties_accept_fewer_impostors():
    # far 0.25 of 4 impostors: threshold is the 2nd highest (0.5); three impostors tie there,
    # none is accepted (achieved FAR 0 <= 0.25) and a genuine 0.5 is rejected.
    v = metrics.verification([0.5, 0.6], [0.5, 0.5, 0.5, 0.1], fars=(0.25,))
    assert v["tar_at_far"][0.25] == 0.5 and v["threshold"][0.25] == 0.5


def test_identity_score_is_its_best_image_and_distractors_count():
    sim = np.array([
        [0.3, 0.7, 0.7, 0.95],   # a: best image 0.7 ties b 0.7, distractor 0.95 above -> rank 3
        [0.1, 0.2, 0.8, 0.0],    # b: rank 1
        [0.5, 0.5, 0.5, 0.5],    # z: not in the gallery -> left out
    ])
    gids = ["a", "a", "b", "distractor/x"]
    np.testing.assert_array_equal(metrics.identification_ranks(sim, ["a", "b", "z"], gids), [3, 1, 0])
    curve, used = metrics.cmc(sim, ["a", "b", "z"], gids)
    assert used == 2
    np.testing.assert_allclose(curve, [0.5, 0.5, 1.0])


def test_constant_scores_give_the_worst_rank_and_half_auc():
    sim = np.full((4, 5), 0.3)
    ids = ["a", "b", "c", "d"]
    np.testing.assert_array_equal(metrics.identification_ranks(sim, ids, ids + ["e"]), [5, 5, 5, 5])
    gen, imp = metrics.pair_scores(sim, ids, ids + ["e"])
    assert metrics.roc_auc(gen, imp) == 0.5
    assert metrics.tar_at_far(gen, imp, (0.1,))[0.1] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_cmc_is_monotonic_and_matches_ranks(seed):
    rng = np.random.default_rng(seed)
    P, n_ids = 40, 25
    sim = rng.integers(0, 6, (P, n_ids)) / 5.0  # coarse scores: many ties
    pids = [f"i{k}" for k in rng.integers(0, n_ids + 5, P)]  # some probes have no mate
    gids = [f"i{k}" for k in range(n_ids)]
    curve, used = metrics.cmc(sim, pids, gids)
    assert np.all(np.diff(curve) >= 0) and curve[-1] == 1.0 and len(curve) == n_ids
    ranks = metrics.identification_ranks(sim, pids, gids)
    # brute force: 1 + other identities scoring >= the mate
    for i, p in enumerate(pids):
        if p in gids:
            j = gids.index(p)
            assert ranks[i] == 1 + sum(sim[i, k] >= sim[i, j] for k in range(n_ids) if k != j)
        else:
            assert ranks[i] == 0
    assert used == int((ranks > 0).sum())
    assert curve[0] == pytest.approx(np.mean(ranks[ranks > 0] == 1))


@pytest.mark.parametrize("seed", range(4))
def test_tar_at_far_is_the_lowest_threshold_within_far(seed):
    """Brute force: over candidate thresholds (impostor values and -inf), the lowest
    one accepting at most far of the impostors (score > t); scores rounded to force ties."""
    rng = np.random.default_rng(seed)
    g = np.round(rng.normal(1.0, 1.0, 60), 1)
    i = np.round(rng.normal(0.0, 1.0, 500), 1)
    fars = (0.002, 0.01, 0.05, 0.1, 0.3)
    got = metrics.tar_at_far(g, i, fars)
    for far in fars:
        cands = np.r_[-np.inf, np.unique(i)]
        ok = [t for t in cands if np.mean(i > t) <= far]
        assert got[far] == pytest.approx(np.mean(g > min(ok)))
    brute = np.mean(g[:, None] > i[None, :]) + 0.5 * np.mean(g[:, None] == i[None, :])
    assert metrics.roc_auc(g, i) == pytest.approx(brute, abs=1e-12)


def test_too_few_pairs_and_empty_inputs():
    assert metrics.tar_at_far([0.9], np.linspace(0, 1, 50))[1e-3] is None
    assert metrics.roc_auc([], [0.1]) is None and metrics.roc_auc([0.1], []) is None
    far, tar = metrics.roc_curve([], [0.1])
    assert len(far) == len(tar) == 0


def test_roc_curve_is_monotonic_and_on_log_grid():
    rng = np.random.default_rng(1)
    far, tar = metrics.roc_curve(rng.normal(2, 1, 200), rng.normal(0, 1, 5000), num=50)
    assert far.min() >= 1 / 5000 and far.max() == 1.0
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= -1e-12)
    t = metrics.tar_at_far(rng.normal(2, 1, 200), rng.normal(0, 1, 5000))
    assert all(0.0 <= v <= 1.0 for v in t.values())


def _random_case(seed, P=70, n_ids=90, dim=16):
    rng = np.random.default_rng(seed)
    ge, gids = [], []
    for k in range(n_ids):  # 1 to 3 images per identity
        for _ in range(rng.integers(1, 4)):
            ge.append(rng.normal(size=dim))
            gids.append(f"i{k}")
    gids += [f"distractor/{k}" for k in range(30)]
    ge = np.array(ge + list(rng.normal(size=(30, dim))))
    pids = [f"i{k}" for k in rng.integers(0, n_ids + 10, P)]
    pe = rng.normal(size=(P, dim))
    return pe, ge, pids, gids


@pytest.mark.parametrize("block_rows", [1, 7, 1000])
def test_chunked_match_equals_full_matrix(block_rows):
    pe, ge, pids, gids = _random_case(0)
    sim = metrics.cosine_similarity(pe, ge)
    r = metrics.match(pe, ge, pids, gids, block_bytes=block_rows * len(gids) * 13)
    np.testing.assert_array_equal(r.ranks, metrics.identification_ranks(sim, pids, gids))
    gen, imp = metrics.pair_scores(sim, pids, gids)
    np.testing.assert_allclose(np.sort(r.genuine), np.sort(gen), atol=1e-5)
    np.testing.assert_allclose(np.sort(r.impostor), np.sort(imp), atol=1e-5)
    curve, used = metrics.cmc(sim, pids, gids)
    c2, u2 = r.cmc()
    assert used == u2 and np.allclose(curve, c2)
    # best mate image and best wrong image, per probe
    same = np.asarray(pids)[:, None] == np.asarray(gids)[None, :]
    for i in range(len(pids)):
        wrong = np.where(same[i], -np.inf, sim[i])
        assert r.top_index[i] == wrong.argmax() and r.top_score[i] == pytest.approx(wrong.max(), abs=1e-5)
        if same[i].any():
            assert r.mate_index[i] == np.where(same[i], sim[i], -np.inf).argmax()
        else:
            assert r.mate_index[i] == -1 and np.isnan(r.mate_score[i])
    # rows of a subset: their own pair scores
    rows = np.array([3, 10, 11])
    g3, i3 = r.pairs(rows)
    sg, si = metrics.pair_scores(sim[rows], [pids[k] for k in rows], gids)
    np.testing.assert_allclose(np.sort(g3), np.sort(sg), atol=1e-5)
    np.testing.assert_allclose(np.sort(i3), np.sort(si), atol=1e-5)


def test_match_memory_is_bounded_by_the_block():
    rng = np.random.default_rng(0)
    P, G, D = 400, 4000, 32
    pe, ge = rng.normal(size=(P, D)).astype(np.float32), rng.normal(size=(G, D)).astype(np.float32)
    pids, gids = [f"i{k}" for k in range(P)], [f"i{k}" for k in range(G)]
    tracemalloc.start()
    try:
        metrics.match(pe, ge, pids, gids, block_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pairs = P * G * 4  # the stored pair scores (6.4 MB), needed by TAR/AUC
    assert peak < pairs + (4 << 20), peak / 1e6  # pair scores + about the block (1 MB) + embeddings


def test_match_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="embeddings"):
        metrics.match(np.zeros((2, 3)), np.zeros((2, 4)), ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="ids"):
        metrics.match(np.zeros((2, 3)), np.zeros((2, 3)), ["a"], ["a", "b"])
