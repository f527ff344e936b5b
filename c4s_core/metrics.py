"""Identification and verification metrics (numpy only).

- :func:`cosine_similarity`: probes x gallery similarity matrix;
- :func:`cmc`: cumulative match characteristic, closed-set identification of
  probes against gallery *identities* (an identity's score is its best image;
  the gallery may hold extra distractor identities; ties count against the probe);
- :func:`tar_at_far`: verification rate at fixed false accept rates over all
  probe/gallery-image pairs;
- :func:`roc_auc`: area under the ROC curve of the same pairs (Mann-Whitney U).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cosine_similarity", "cmc", "pair_scores", "tar_at_far", "roc_auc", "FARS"]

FARS = (1e-1, 1e-2, 1e-3)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[Na, D] x [Nb, D] -> [Na, Nb]`` cosine similarities (rows normalised here)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [Na, D] and [Nb, D] embeddings, got {a.shape} and {b.shape}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def cmc(
    sim: np.ndarray, probe_ids: Sequence[str], gallery_ids: Sequence[str], max_rank: int | None = None
) -> tuple[np.ndarray, int]:
    """CMC curve: ``curve[k-1]`` is the share of probes whose identity is among
    the top ``k`` gallery identities. Probes whose identity is not in the gallery
    are left out; returns ``(curve, number_of_probes_used)``."""
    sim = np.asarray(sim, dtype=np.float64)
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    if sim.shape != (len(probe_ids), len(gallery_ids)):
        raise ValueError(f"similarity {sim.shape} does not match {len(probe_ids)} probes x {len(gallery_ids)} gallery")
    ids, inv = np.unique(gallery_ids, return_inverse=True)
    n_ids = len(ids)
    max_rank = n_ids if max_rank is None else max(1, min(max_rank, n_ids))
    # best score per gallery identity: [P, n_ids]
    per_id = np.full((sim.shape[0], n_ids), -np.inf)
    for j in range(n_ids):
        cols = inv == j
        if cols.any():
            per_id[:, j] = sim[:, cols].max(axis=1)
    lookup = {str(k): j for j, k in enumerate(ids)}
    ranks = []
    for i, pid in enumerate(probe_ids):
        j = lookup.get(str(pid))
        if j is None:
            continue
        true = per_id[i, j]
        others = np.delete(per_id[i], j)
        ranks.append(1 + int(np.sum(others >= true)))
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        return np.zeros(max_rank), 0
    curve = np.array([(ranks <= k).mean() for k in range(1, max_rank + 1)])
    return curve, len(ranks)


def pair_scores(
    sim: np.ndarray, probe_ids: Sequence[str], gallery_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Split all probe/gallery-image scores into ``(genuine, impostor)``."""
    same = np.asarray(probe_ids)[:, None] == np.asarray(gallery_ids)[None, :]
    sim = np.asarray(sim, dtype=np.float64)
    return sim[same], sim[~same]


def tar_at_far(
    genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float] = FARS
) -> dict[float, float | None]:
    """True accept rate at each false accept rate. The threshold is the lowest
    score that accepts at most ``far`` of the impostors (score > threshold);
    None where there are too few impostor pairs to measure that FAR."""
    genuine = np.asarray(genuine, dtype=np.float64)
    imp = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    out: dict[float, float | None] = {}
    for far in fars:
        k = int(np.floor(far * len(imp)))
        if len(genuine) == 0 or len(imp) == 0 or far * len(imp) < 1:
            out[far] = None
            continue
        thr = imp[k] if k < len(imp) else -np.inf
        out[far] = float(np.mean(genuine > thr))
    return out


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float | None:
    """P(genuine score > impostor score), ties counting half (Mann-Whitney U)."""
    g = np.asarray(genuine, dtype=np.float64)
    i = np.asarray(impostor, dtype=np.float64)
    if len(g) == 0 or len(i) == 0:
        return None
    allv = np.concatenate([g, i])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value
    ends = np.cumsum(counts)
    avg = ends - (counts - 1) / 2.0
    ranks = avg[inv]
    u = ranks[: len(g)].sum() - len(g) * (len(g) + 1) / 2.0
    return float(u / (len(g) * len(i)))
