"""Identification and verification metrics (numpy only).

- :func:`cosine_similarity`: probes x gallery similarity matrix;
- :func:`identification_ranks` / :func:`cmc`: cumulative match characteristic,
  closed-set identification of probes against gallery *identities* (an
  identity's score is its best image; the gallery may hold extra distractor
  identities; probes whose identity is not in the gallery are left out);
- :func:`tar_at_far`, :func:`roc_curve`: verification rate at fixed false
  accept rates over all probe/gallery-image pairs;
- :func:`roc_auc`: area under the ROC curve of the same pairs (Mann-Whitney U);
- :func:`match`: all of the above from embeddings, the similarity matrix
  computed block by block so that its memory stays bounded (1,000 x 10,000
  and 2,000 x 20,000 run in well under 1 GB).

Tie rules (all pessimistic for the matcher, so a constant embedding scores 0):

- rank: ``1 +`` the number of *other* gallery identities whose score is
  ``>=`` the mate's score, so a mate tied with an impostor identity is ranked
  behind it (a probe tied with 2 impostors at the top has rank 3);
- TAR at FAR: a pair is accepted when its score is strictly ``>`` the
  threshold; the threshold is the ``floor(far * n_impostor) + 1``-th highest
  impostor score, so at most ``far`` of the impostors are accepted (fewer when
  impostors tie at the threshold) and a genuine score equal to it is rejected;
  None when ``far * n_impostor < 1`` (too few impostor pairs to measure it);
- AUC: ``P(genuine > impostor) + 0.5 * P(genuine == impostor)``.

Bootstrap (:func:`bootstrap_intervals`, :func:`paired_rank_difference`,
:func:`seeded_rank_difference`): the
unit resampled is the **probe identity**, not the image: each resample draws
as many identities as there are, with replacement, and every probe (sketch) of
a drawn identity comes along, as many times as the identity was drawn (a
person with three sketches moves as one). Probes of one person are not
independent, so resampling images would give intervals that are too narrow.
Intervals are percentile intervals of the resampled statistic (95 % by default),
seeded. For TAR at FAR the threshold is **recomputed in every resample** from
that resample's impostor scores (every impostor pair of the drawn probes,
weighted by the draw), with the same rule as :func:`tar_at_far`: a fixed
threshold would ignore the threshold's own uncertainty, which dominates at
small FARs, and would give intervals too narrow. Only the top of the sorted
impostor scores is scanned per resample, so this costs about
``resamples x 2.5 x far x impostor pairs`` operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FARS",
    "MatchResult",
    "bootstrap_intervals",
    "bootstrap_weights",
    "cmc",
    "cmc_from_ranks",
    "cosine_similarity",
    "identification_ranks",
    "match",
    "paired_rank_difference",
    "seeded_rank_difference",
    "pair_scores",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "verification",
]

FARS = (1e-1, 1e-2, 1e-3)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[Na, D] x [Nb, D] -> [Na, Nb]`` cosine similarities (rows normalised here)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [Na, D] and [Nb, D] embeddings, got {a.shape} and {b.shape}")
    return _normalize(a) @ _normalize(b).T


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _Gallery:
    """Gallery identities encoded as ints, columns grouped by identity."""

    def __init__(self, gallery_ids: Sequence[str]):
        gids = np.array([str(g) for g in gallery_ids], dtype=str)
        self.ids, inv = np.unique(gids, return_inverse=True)
        inv = inv.reshape(-1).astype(np.int64)
        self.order = np.argsort(inv, kind="stable")  # gallery columns sorted by identity
        self.codes = inv[self.order]
        self.starts = np.flatnonzero(np.r_[True, self.codes[1:] != self.codes[:-1]]) if len(inv) else self.codes
        self.single = len(self.starts) == len(inv)  # one image per identity: no max over images
        self.lookup = {str(k): j for j, k in enumerate(self.ids)}

    def probe_codes(self, probe_ids: Sequence[str]) -> np.ndarray:
        return np.array([self.lookup.get(str(p), -1) for p in probe_ids], dtype=np.int64)

    def per_identity(self, sim_sorted: np.ndarray) -> np.ndarray:
        """Best image score per identity from a block whose columns are sorted by identity."""
        if self.single:
            return sim_sorted
        return np.maximum.reduceat(sim_sorted, self.starts, axis=1)


def _ranks(per_id: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Rank of each probe's mate identity (ties count against the probe); 0 = no mate."""
    has = codes >= 0
    out = np.zeros(len(codes), np.int64)
    if has.any():
        rows = np.flatnonzero(has)
        true = per_id[rows, codes[rows]]
        # counts the mate itself, so this is 1 + other identities scoring >= the mate
        out[rows] = (per_id[rows] >= true[:, None]).sum(axis=1)
    return out


def identification_ranks(sim: np.ndarray, probe_ids: Sequence[str], gallery_ids: Sequence[str]) -> np.ndarray:
    """Rank (1 = best) of each probe's mate identity among the gallery identities;
    0 where the probe's identity is not in the gallery. See the module doc for ties."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.shape != (len(probe_ids), len(gallery_ids)):
        raise ValueError(f"similarity {sim.shape} does not match {len(probe_ids)} probes x {len(gallery_ids)} gallery")
    gal = _Gallery(gallery_ids)
    if len(gallery_ids) == 0:
        return np.zeros(len(probe_ids), np.int64)
    return _ranks(gal.per_identity(sim[:, gal.order]), gal.probe_codes(probe_ids))


def cmc_from_ranks(ranks: np.ndarray, max_rank: int) -> tuple[np.ndarray, int]:
    """CMC curve of the probes with a mate (``ranks > 0``) up to ``max_rank``."""
    ranks = np.asarray(ranks)
    ranks = ranks[ranks > 0]
    max_rank = max(1, int(max_rank))
    if len(ranks) == 0:
        return np.zeros(max_rank), 0
    counts = np.bincount(np.minimum(ranks, max_rank + 1), minlength=max_rank + 2)[1 : max_rank + 1]
    return np.cumsum(counts) / len(ranks), int(len(ranks))


def cmc(
    sim: np.ndarray, probe_ids: Sequence[str], gallery_ids: Sequence[str], max_rank: int | None = None
) -> tuple[np.ndarray, int]:
    """CMC curve: ``curve[k-1]`` is the share of probes whose identity is among
    the top ``k`` gallery identities. Probes whose identity is not in the gallery
    are left out; returns ``(curve, number_of_probes_used)``. The curve is
    non-decreasing and has ``min(max_rank, number of gallery identities)`` points."""
    ranks = identification_ranks(sim, probe_ids, gallery_ids)
    n_ids = len(set(map(str, gallery_ids)))
    max_rank = n_ids if max_rank is None else max(1, min(max_rank, n_ids))
    return cmc_from_ranks(ranks, max_rank)


def pair_scores(
    sim: np.ndarray, probe_ids: Sequence[str], gallery_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Split all probe/gallery-image scores into ``(genuine, impostor)``."""
    same = np.asarray(probe_ids, dtype=str)[:, None] == np.asarray(gallery_ids, dtype=str)[None, :]
    sim = np.asarray(sim, dtype=np.float64)
    return sim[same], sim[~same]


def _as_scores(genuine, impostor) -> tuple[np.ndarray, np.ndarray]:
    g, i = np.asarray(genuine), np.asarray(impostor)
    dt = np.result_type(g.dtype if g.dtype.kind == "f" else np.float64, i.dtype if i.dtype.kind == "f" else np.float64)
    return np.sort(g.astype(dt, copy=False).ravel()), np.sort(i.astype(dt, copy=False).ravel())


def _tar_sorted(g: np.ndarray, imp: np.ndarray, fars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TAR and achieved FAR at each requested far (g, imp sorted ascending; far * len(imp) >= 1)."""
    n = len(imp)
    k = np.floor(np.asarray(fars, np.float64) * n).astype(np.int64)  # k-th highest (0-based) is the threshold
    thr_idx = n - 1 - k
    thr = np.where(thr_idx >= 0, imp[np.clip(thr_idx, 0, n - 1)], -np.inf)
    tar = (len(g) - np.searchsorted(g, thr, side="right")) / len(g)
    far = (n - np.searchsorted(imp, thr, side="right")) / n
    return tar, far


def tar_at_far(
    genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = FARS
) -> dict[float, float | None]:
    """True accept rate at each false accept rate. A pair is accepted when its
    score is ``>`` the threshold, the ``floor(far * n) + 1``-th highest of the
    ``n`` impostor scores (so at most ``far`` of the impostors are accepted);
    None where there are too few impostor pairs (``far * n < 1``) or no genuine pairs."""
    return verification(genuine, impostor, fars, roc_points=2)["tar_at_far"]


def roc_curve(genuine: np.ndarray, impostor: np.ndarray, num: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(far, tar)`` on a log grid of FAR from ``1/n_impostor`` to 1,
    with the same threshold rule as :func:`tar_at_far`; ``far`` is the rate
    actually achieved (points with far 0 are dropped). Empty when either side is empty."""
    return verification(genuine, impostor, (), roc_points=num)["roc"]


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float | None:
    """P(genuine score > impostor score), ties counting half (Mann-Whitney U).
    Sorts the impostors once and counts with binary search: O((G + I) log I),
    no pairwise matrix, so tens of millions of impostor pairs are fine."""
    return verification(genuine, impostor, (), roc_points=2)["auc"]


def verification(
    genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = FARS, roc_points: int = 200
) -> dict:
    """:func:`tar_at_far`, :func:`roc_auc`, :func:`roc_curve` and the thresholds
    of each FAR, sorting the scores once (the impostors may be tens of millions)."""
    g, imp = _as_scores(genuine, impostor)
    out: dict = {"tar_at_far": {}, "threshold": {}, "auc": None, "roc": (np.zeros(0), np.zeros(0))}
    if len(g) == 0 or len(imp) == 0:
        out["tar_at_far"] = {f: None for f in fars}
        out["threshold"] = {f: None for f in fars}
        return out
    for far in fars:
        ok = far * len(imp) >= 1
        k = int(np.floor(far * len(imp)))
        out["tar_at_far"][far] = float(_tar_sorted(g, imp, np.array([far]))[0][0]) if ok else None
        out["threshold"][far] = float(imp[len(imp) - 1 - k]) if ok and k < len(imp) else None
    less = np.searchsorted(imp, g, side="left")
    leq = np.searchsorted(imp, g, side="right")
    u = float(np.sum(less, dtype=np.float64)) + 0.5 * float(np.sum(leq - less, dtype=np.float64))
    out["auc"] = u / (len(g) * len(imp))
    grid = np.unique(np.logspace(np.log10(1.0 / len(imp)), 0.0, max(2, roc_points)))
    tar, far = _tar_sorted(g, imp, grid)
    out["roc"] = (far[far > 0], tar[far > 0])
    return out


@dataclass
class MatchResult:
    """Everything evaluate needs from one probes x gallery comparison.

    Per probe (length P): ``ranks`` (0 = no mate in the gallery), the best
    mate image (``mate_index``, ``mate_score``; -1 / nan without a mate) and
    the best non-mate image (``top_index``, ``top_score``: the wrong match
    ranked highest). Gallery indices are positions in the gallery passed to
    :func:`match`. ``genuine`` and ``impostor`` hold every pair score, probe by
    probe; probe ``i``'s are ``genuine[gen_offsets[i]:gen_offsets[i + 1]]``
    (likewise ``imp_offsets``).
    """

    ranks: np.ndarray
    n_identities: int
    mate_index: np.ndarray
    mate_score: np.ndarray
    top_index: np.ndarray
    top_score: np.ndarray
    genuine: np.ndarray
    impostor: np.ndarray
    gen_offsets: np.ndarray
    imp_offsets: np.ndarray

    def cmc(self, rows: np.ndarray | None = None, max_rank: int | None = None) -> tuple[np.ndarray, int]:
        ranks = self.ranks if rows is None else self.ranks[rows]
        n = max(self.n_identities, 1)
        return cmc_from_ranks(ranks, n if max_rank is None else min(max_rank, n))

    def pairs(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(genuine, impostor)`` scores of the probes ``rows`` (all by default)."""
        if rows is None:
            return self.genuine, self.impostor

        def take(x, off):
            parts = [x[off[r] : off[r + 1]] for r in np.asarray(rows, dtype=np.int64)]
            return np.concatenate(parts) if parts else x[:0]

        return take(self.genuine, self.gen_offsets), take(self.impostor, self.imp_offsets)


def match(
    probe_emb: np.ndarray,
    gallery_emb: np.ndarray,
    probe_ids: Sequence[str],
    gallery_ids: Sequence[str],
    block_bytes: int = 256 << 20,
) -> MatchResult:
    """Cosine-match probes against the gallery, a block of probe rows at a time.

    Scores are float32. Memory: about ``block_bytes`` for the working block
    plus 4 bytes per probe/gallery pair for the stored pair scores (160 MB at
    2,000 x 20,000), which the verification metrics need.
    """
    p = np.asarray(probe_emb, dtype=np.float32)
    g = np.asarray(gallery_emb, dtype=np.float32)
    if p.ndim != 2 or g.ndim != 2 or (len(p) and len(g) and p.shape[1] != g.shape[1]):
        raise ValueError(f"expected [P, D] and [G, D] embeddings, got {p.shape} and {g.shape}")
    if len(p) != len(probe_ids) or len(g) != len(gallery_ids):
        raise ValueError(f"{len(p)} probe and {len(g)} gallery embeddings for "
                         f"{len(probe_ids)} probe and {len(gallery_ids)} gallery ids")
    P, G = len(p), len(g)
    gal = _Gallery(gallery_ids)
    codes = gal.probe_codes(probe_ids)
    ranks = np.zeros(P, np.int64)
    mate_index = np.full(P, -1, np.int64)
    top_index = np.full(P, -1, np.int64)
    mate_score = np.full(P, np.nan, np.float32)
    top_score = np.full(P, np.nan, np.float32)
    per_code = np.bincount(gal.codes, minlength=len(gal.ids)) if G else np.zeros(0, np.int64)
    n_gen = np.where(codes >= 0, per_code[np.maximum(codes, 0)] if G else 0, 0).astype(np.int64)
    gen_offsets = np.r_[0, np.cumsum(n_gen)].astype(np.int64)
    imp_offsets = np.r_[0, np.cumsum(G - n_gen)].astype(np.int64)
    # filled in place, block by block: no second copy of the pair scores
    genuine = np.empty(int(gen_offsets[-1]), np.float32)
    impostor = np.empty(int(imp_offsets[-1]), np.float32)
    if P and G:
        p, gs = _normalize(p), _normalize(g)[gal.order]
        # working set per probe row: the block, its mask and two masked copies
        rows = int(max(1, min(P, block_bytes // max(1, G * 13))))
        for a in range(0, P, rows):
            b = min(P, a + rows)
            s = p[a:b] @ gs.T
            c = codes[a:b]
            ranks[a:b] = _ranks(gal.per_identity(s), c)
            mask = gal.codes[None, :] == c[:, None]
            genuine[gen_offsets[a] : gen_offsets[b]] = s[mask]
            impostor[imp_offsets[a] : imp_offsets[b]] = s[~mask]
            r = np.arange(b - a)
            t = np.where(mask, -np.inf, s).argmax(axis=1)
            ok = n_gen[a:b] < G
            top_index[a:b] = np.where(ok, gal.order[t], -1)
            top_score[a:b] = np.where(ok, s[r, t], np.nan)
            m = np.where(mask, s, -np.inf).argmax(axis=1)
            has = c >= 0
            mate_index[a:b] = np.where(has, gal.order[m], -1)
            mate_score[a:b] = np.where(has, s[r, m], np.nan)
            del s, mask
    return MatchResult(ranks, len(gal.ids), mate_index, mate_score, top_index, top_score,
                       genuine, impostor, gen_offsets, imp_offsets)


# -- bootstrap over probe identities ------------------------------------------------------


def bootstrap_weights(probe_ids: Sequence[str], resamples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, weights)``: each probe's identity code (identities sorted by
    name) and ``[resamples, identities]`` draw counts: row ``b`` says how many
    times each identity was drawn in resample ``b`` (``identities`` draws with
    replacement, so each row sums to the number of identities). The same
    identities and seed give the same draws, whatever else differs, so two
    evaluations of the same probes are resampled alike (a paired bootstrap)."""
    uniq, codes = np.unique(np.asarray([str(p) for p in probe_ids], dtype=str), return_inverse=True)
    n = len(uniq)
    if resamples < 1 or n == 0:
        return codes.reshape(-1), np.zeros((0, n), np.int64)
    rng = np.random.default_rng([0xB007, int(seed)])
    B = int(resamples)
    draws = rng.integers(0, n, size=(B, n)) + (np.arange(B, dtype=np.int64) * n)[:, None]
    return codes.reshape(-1), np.bincount(draws.ravel(), minlength=B * n).reshape(B, n).astype(np.int64)


def _percentile(stats: np.ndarray, level: float) -> list[float] | None:
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return None
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return [float(lo), float(hi)]


def _rank_stats(ranks: np.ndarray, codes: np.ndarray, w: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Rank-k of every resample: drawn identities' hits over their probes (probes with a mate)."""
    has = ranks > 0
    n = w.shape[1]
    count = np.bincount(codes[has], minlength=n).astype(np.float64)
    den = w @ count
    out = {}
    for k in ks:
        hits = np.bincount(codes[has], weights=(ranks[has] <= k).astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(den > 0, (w @ hits) / np.where(den > 0, den, 1), np.nan)
    return out


def _tar_stats(res: MatchResult, rows: np.ndarray, codes: np.ndarray, w: np.ndarray, far: float,
               mem_bytes: int = 64 << 20) -> np.ndarray:
    """TAR at ``far`` of every resample, its threshold recomputed from the
    resample's own impostor pairs (nan where ``far * impostors < 1`` or no genuine pair).

    The threshold of resample ``b`` is the ``k_b + 1``-th highest impostor score
    counting each pair ``w[b, identity]`` times. The top of the sorted impostor
    scores is cut into blocks of ``s``; the weighted count per block of all
    resamples is one matrix product, then one block per resample is scanned."""
    B = len(w)
    out = np.full(B, np.nan)
    n_gen = np.diff(res.gen_offsets)[rows]
    n_imp = np.diff(res.imp_offsets)[rows]
    gen, imp = res.pairs(rows)
    if not len(gen) or not len(imp) or not B:
        return out
    n = w.shape[1]
    wf = w.astype(np.float64)
    g_tot = wf @ np.bincount(codes, weights=n_gen, minlength=n)
    i_tot = wf @ np.bincount(codes, weights=n_imp, minlength=n)
    k = np.floor(far * i_tot).astype(np.int64)  # the threshold is the (k+1)-th highest weighted impostor
    io = np.argsort(-imp, kind="stable")
    imp_d, i_code = imp[io], np.repeat(codes, n_imp)[io]
    go = np.argsort(-gen, kind="stable")
    neg_gen, g_code = -gen[go].astype(np.float64), np.repeat(codes, n_gen)[go]  # neg_gen ascending
    thr = np.full(B, np.nan)
    todo = np.flatnonzero((far * i_tot >= 1) & (g_tot > 0))
    top = min(len(imp_d), max(1024, int(2.5 * far * len(imp_d)) + 64))
    while len(todo):
        s = max(64, int(np.sqrt(top * n)))
        nb = -(-top // s)
        blocks = np.bincount((np.arange(top) // s) * n + i_code[:top], minlength=nb * n).reshape(nb, n)
        cum = np.cumsum(blocks.astype(np.float64) @ wf[todo].T, axis=0)  # [blocks, resamples]
        need = (k[todo] + 1).astype(np.float64)
        enough = cum[-1] >= need
        for r in np.flatnonzero(enough):
            x = todo[r]
            j = int(np.argmax(cum[:, r] >= need[r]))
            before = cum[j - 1, r] if j else 0.0
            seg = np.cumsum(w[x, i_code[j * s:(j + 1) * s]]) + before
            thr[x] = imp_d[j * s + int(np.searchsorted(seg, need[r], side="left"))]
        todo = todo[~enough]
        if top >= len(imp_d):  # the whole list always holds k + 1 (far < 1)
            break
        top = min(len(imp_d), top * 4)
    done = np.flatnonzero(np.isfinite(thr))
    chunk = max(1, mem_bytes // (8 * (len(gen) + 1)))
    for a in range(0, len(done), chunk):
        b = done[a:a + chunk]
        pos = np.searchsorted(neg_gen, -thr[b], side="left")  # genuine pairs scoring > the threshold
        gw = np.concatenate([np.zeros((len(b), 1), np.int64), np.cumsum(w[b][:, g_code], axis=1)], axis=1)
        out[b] = gw[np.arange(len(b)), pos] / g_tot[b]
    return out


def bootstrap_intervals(
    res: MatchResult,
    probe_ids: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    ranks: Sequence[int] = (1, 5, 10, 20),
    fars: Sequence[float] = FARS,
    rows: np.ndarray | None = None,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals over probe identities (see the module doc)
    of rank-k and of TAR at each FAR, for the probes ``rows`` of ``res`` (all by
    default). Returns ``{"rank": {k: [low, high] | None}, "tar_at_far": {far:
    [low, high] | None}, "identities", "resamples", "seed", "level"}``; an
    interval is None where no resample could measure it."""
    rows = np.arange(len(res.ranks)) if rows is None else np.asarray(rows, dtype=np.int64)
    pid = [str(probe_ids[r]) for r in rows]
    codes, w = bootstrap_weights(pid, resamples, seed)
    r = res.ranks[rows]
    by_rank = _rank_stats(r, codes, w, ranks)
    return {
        "level": level, "resamples": int(len(w)), "seed": int(seed), "unit": "probe identity",
        "identities": int(w.shape[1]), "identities_with_mate": int(len(set(codes[r > 0].tolist()))),
        "rank": {k: _percentile(by_rank[k], level) for k in ranks},
        "tar_at_far": {f: _percentile(_tar_stats(res, rows, codes, w, f), level) for f in fars},
    }


def paired_rank_difference(
    ranks_a: np.ndarray,
    ranks_b: np.ndarray,
    probe_ids: Sequence[str],
    k: int = 1,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Rank-k of ``a`` minus rank-k of ``b`` on the **same** probes (in the same
    order), with a paired percentile bootstrap interval: both are measured on the
    same resampled probe identities, so what the two share (hard and easy people)
    cancels. Probes with a mate in both count. Identical ranks give exactly
    ``[0, 0]``. Returns ``{"difference", "low", "high", "a", "b", "probes",
    "identities", "resamples", "seed", "level"}`` (low/high None when ``resamples`` is 0)."""
    a, b = np.asarray(ranks_a, np.int64), np.asarray(ranks_b, np.int64)
    if a.shape != b.shape or len(a) != len(probe_ids):
        raise ValueError(f"paired ranks need the same probes: {a.shape}, {b.shape} and {len(probe_ids)} ids")
    keep = (a > 0) & (b > 0)
    pid = [str(p) for p, m in zip(probe_ids, keep, strict=True) if m]
    a, b = a[keep], b[keep]
    out: dict = {"a": None, "b": None, "difference": None, "low": None, "high": None, "probes": int(len(a)),
                 "identities": len(set(pid)), "resamples": 0, "seed": int(seed), "level": level, "k": int(k)}
    if not len(a):
        return out
    ha, hb = float(np.mean(a <= k)), float(np.mean(b <= k))
    out.update(a=ha, b=hb, difference=ha - hb)
    codes, w = bootstrap_weights(pid, resamples, seed)
    if not len(w):
        return out
    n = w.shape[1]
    diff = np.bincount(codes, weights=(a <= k).astype(np.float64) - (b <= k).astype(np.float64), minlength=n)
    count = np.bincount(codes, minlength=n).astype(np.float64)
    stats = (w @ diff) / (w @ count)
    lo, hi = _percentile(stats, level)
    out.update(low=lo, high=hi, resamples=int(len(w)))
    return out


def seeded_rank_difference(
    ranks_a: Sequence[np.ndarray],
    ranks_b: Sequence[np.ndarray],
    probe_ids: Sequence[str],
    k: int = 1,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    paired_seeds: bool = True,
) -> dict:
    """Rank-k of arm ``a`` minus arm ``b``, each trained at several seeds and
    evaluated on the **same** probes: ``ranks_a[s]`` are seed ``s``'s ranks, in
    ``probe_ids`` order. The difference is of the seed means.

    One trained matcher's probe bootstrap covers which people were drawn, not
    the training's own noise, which can be as large as the effect. So the
    interval here is a two-level bootstrap: each resample draws the probe
    identities (shared by both arms, as in :func:`paired_rank_difference`) and
    as many seeds as there are, with replacement. With equal seed counts the
    seeds are drawn as pairs (``a``'s seed ``s`` with ``b``'s seed ``s``):
    valid whether or not the two share anything, and tighter where they do
    (a matcher seed fixes the real data's batch order and augmentation in
    every arm); ``paired_seeds=False`` draws each arm's seeds on their own,
    as it must when the counts differ. With few seeds this is still too narrow by about
    ``sqrt((S - 1) / S)`` in its seed part, so ``t_low``/``t_high`` also give
    Student's t interval over the per-seed differences (seed ``s`` of ``a``
    minus seed ``s`` of ``b``; needs equal seed counts, at least 2), which
    treats each seed's difference as one draw and ignores nothing but the
    probe sampling already inside it. Probes without a mate in every run are
    dropped. Returns ``{"difference", "low", "high", "probe_low", "probe_high",
    "t_low", "t_high", "a", "b", "a_per_seed", "b_per_seed", "per_seed", "seed_sd", "seeds_a", "seeds_b",
    "probes", "identities", "resamples", "seed", "level", "k", "paired_seeds"}``;
    ``probe_*`` is the interval with the seeds held fixed."""
    from scipy import stats as st

    A = np.asarray([np.asarray(r, np.int64) for r in ranks_a])
    B = np.asarray([np.asarray(r, np.int64) for r in ranks_b])
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != len(probe_ids) or B.shape[1] != len(probe_ids):
        raise ValueError(f"seeded ranks need [seeds, probes] on the same {len(probe_ids)} probes: {A.shape}, {B.shape}")
    if not len(A) or not len(B):
        raise ValueError("seeded ranks need at least one seed per arm")
    keep = (A > 0).all(0) & (B > 0).all(0)
    pid = [str(p) for p, m in zip(probe_ids, keep, strict=True) if m]
    ha, hb = (A[:, keep] <= k).astype(np.float64), (B[:, keep] <= k).astype(np.float64)
    out: dict = {key: None for key in ("a", "b", "difference", "low", "high", "probe_low", "probe_high", "t_low",
                                       "t_high", "a_per_seed", "b_per_seed", "per_seed", "seed_sd")}
    out |= {"seeds_a": len(A), "seeds_b": len(B), "probes": int(keep.sum()), "identities": len(set(pid)),
            "resamples": 0, "seed": int(seed), "level": level, "k": int(k),
            "paired_seeds": bool(paired_seeds and len(A) == len(B))}
    if not keep.any():
        return out
    ra, rb = ha.mean(1), hb.mean(1)  # rank-k per seed
    out.update(a=float(ra.mean()), b=float(rb.mean()), difference=float(ra.mean() - rb.mean()),
               a_per_seed=[float(x) for x in ra], b_per_seed=[float(x) for x in rb])
    if len(A) == len(B):
        d = ra - rb
        out["per_seed"] = [float(x) for x in d]
        if len(d) >= 2:
            sd = float(np.std(d, ddof=1))
            half = float(st.t.ppf(0.5 + level / 2.0, len(d) - 1)) * sd / np.sqrt(len(d))
            out.update(seed_sd=sd, t_low=float(d.mean() - half), t_high=float(d.mean() + half))
    codes, w = bootstrap_weights(pid, resamples, seed)
    if not len(w):
        return out
    n = w.shape[1]
    count = w @ np.bincount(codes, minlength=n).astype(np.float64)
    # [resamples, seeds]: each seed's rank-k on each resample's people
    rate_a = np.stack([w @ np.bincount(codes, weights=h, minlength=n) for h in ha], 1) / count[:, None]
    rate_b = np.stack([w @ np.bincount(codes, weights=h, minlength=n) for h in hb], 1) / count[:, None]
    lo, hi = _percentile(rate_a.mean(1) - rate_b.mean(1), level)
    rng = np.random.default_rng([0x5EED, int(seed)])
    draw = lambda r: rng.integers(0, r.shape[1], r.shape)  # noqa: E731
    ia = draw(rate_a)
    ib = ia if out["paired_seeds"] else draw(rate_b)
    both = _percentile(np.take_along_axis(rate_a, ia, 1).mean(1) - np.take_along_axis(rate_b, ib, 1).mean(1), level)
    out.update(low=both[0], high=both[1], probe_low=lo, probe_high=hi, resamples=int(len(w)))
    return out
