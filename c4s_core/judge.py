"""Identity fidelity of generated sketches, measured by an independent judge.

The **judge** is a sketch-to-photo matcher (typically a pretrained recogniser
fine-tuned on the real training split only), frozen and never used to train or
select the generator. :func:`judge_set` ranks each generated sketch against the
reference photos of its set plus distractor photos, and each real held-out
sketch against its own photos plus the same distractors, with *the same number
of identities* in both galleries (rank-1 falls as a gallery grows, so only
equal sizes compare). It reports, for both:

- rank-1 and rank-10 (ties count against the judge, as in :mod:`c4s_core.metrics`),
  the genuine and impostor mean cosine and their gap;
- the Fréchet distance between the judge embeddings of generated and real
  sketches (:func:`frechet_distance`: a realism distance; lower is closer);
- diversity in the judge's space: mean ``1 - cosine`` between sketches of one
  identity (generated) beside the mean between sketches of different
  identities (both sets): copies of one sketch give 0 within;
- the same rank figures per style (``by_style``): each style's sketches
  against the whole gallery, generated beside real sketches of that style;
- style accuracy: a nearest-centroid classifier on stroke statistics
  (:func:`stroke_features`) fitted on the real sketches names the style of each
  generated sketch; its own accuracy on held-out real sketches beside it.

Real sketches are first resized to the generated sketches' side (``at_size``)
so the ceiling is measured at the generator's resolution. Everything is
numpy; the judge is any backbone with ``embed`` and ``input_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def stroke_features(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Per image: 16-bin grey histogram, 8-bin gradient-magnitude histogram, dark-pixel share."""
    feats = []
    for im in images:
        a = np.asarray(im)[..., :3].astype(np.float32).mean(-1) / 255.0 if np.asarray(im).ndim == 3 \
            else np.asarray(im, np.float32) / 255.0
        gy, gx = np.gradient(a)
        m = np.hypot(gx, gy)
        h = np.histogram(a, 16, (0, 1))[0] / a.size
        hm = np.histogram(m, 8, (0, 0.5))[0] / m.size
        feats.append(np.concatenate([h, hm, [(a < 0.5).mean()]]))
    return np.asarray(feats, np.float32)


class NearestCentroid:
    """Nearest class centre after per-feature standardisation."""

    def fit(self, x, y):
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mu) / self.sd
        self.labels = sorted(set(y))
        self.c = np.stack([z[np.asarray(y) == k].mean(0) for k in self.labels])
        return self

    def predict(self, x):
        z = (x - self.mu) / self.sd
        return [self.labels[i] for i in ((z[:, None] - self.c[None]) ** 2).sum(-1).argmin(1)]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to rows of ``a`` and ``b``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, with the
    matrix roots from symmetric eigendecompositions (exact for PSD covariances)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs at least 2 rows in each set, got {len(a)} and {len(b)}")
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    ra = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = ra @ sb @ ra
    root_trace = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * root_trace)


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def diversity(emb: np.ndarray, ids: Sequence[str], max_pairs: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Mean ``1 - cosine`` within identities (pairs of one identity's rows) and
    between identities (random pairs of different identities)."""
    e, ids = _unit(emb), np.asarray(list(ids))
    within = []
    for d in np.unique(ids):
        rows = np.flatnonzero(ids == d)
        if len(rows) > 1:
            s = e[rows] @ e[rows].T
            within.append(float(np.mean(1 - s[np.triu_indices(len(rows), 1)])))
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(e), (2, min(max_pairs, len(e) * 20)))
    other = ids[i] != ids[j]
    between = float(np.mean(1 - (e[i[other]] * e[j[other]]).sum(1))) if other.any() else None
    return {"within_identity": float(np.mean(within)) if within else None, "identities_with_several": len(within),
            "between_identities": between}


def _embed(judge, images: Sequence[np.ndarray], grey: bool, batch: int = 64, progress: bool = False,
           desc: str = "judge") -> np.ndarray:
    from tqdm import tqdm

    from .data.io import grey3, resize

    size = tuple(judge.input_size)
    out = []
    for a in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, unit="batch"):
        ims = [resize(np.asarray(im, np.uint8)[..., :3] if np.asarray(im).ndim == 3
                      else np.repeat(np.asarray(im, np.uint8)[..., None], 3, 2), size) for im in images[a:a + batch]]
        if grey:
            ims = [grey3(im) for im in ims]
        out.append(np.asarray(judge.embed(ims), np.float32))
    return _unit(np.concatenate(out)) if out else np.zeros((0, int(judge.embedding_dim)), np.float32)


def rank_against(probe_emb, probe_ids, gallery_emb, gallery_ids) -> dict[str, Any]:
    """Rank-1/10 and genuine/impostor cosine means of probes against a gallery."""
    from . import metrics

    r = metrics.match(probe_emb, gallery_emb, list(probe_ids), list(gallery_ids))
    curve, used = r.cmc()
    gen, imp = r.pairs()
    g, i = float(np.mean(gen)) if len(gen) else None, float(np.mean(imp)) if len(imp) else None
    return {"probes": int(used), "gallery_images": len(gallery_ids), "gallery_identities": len(set(gallery_ids)),
            "rank1": float(curve[0]) if used else None, "rank10": float(curve[min(10, len(curve)) - 1]) if used else None,
            "genuine": g, "impostor": i, "gap": None if g is None or i is None else g - i}


def judge_set(
    judge,
    generated: tuple[Sequence[np.ndarray], Sequence[str], Sequence[str | None]],
    references: dict[str, np.ndarray],
    real: tuple[Sequence[np.ndarray], Sequence[str], Sequence[str | None]],
    real_photos: dict[str, Sequence[np.ndarray]],
    distractors: Sequence[np.ndarray] = (),
    identities: int | None = None,
    grey: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Fidelity of a generated set, beside real held-out sketches (see the module docstring).

    ``generated``: (sketches, identities, styles); ``references``: identity ->
    its reference photo; ``real``: (sketches, identities, styles) of real
    held-out people with ``real_photos`` identity -> photos. Both galleries
    hold ``G`` identities (``min`` of the two sets' and ``identities``, chosen
    with ``seed``) plus every distractor."""
    from .data.io import resize

    g_sk, g_ids, g_st = (list(x) for x in generated)
    r_sk, r_ids, r_st = (list(x) for x in real)
    gen_ids = sorted(set(g_ids) & set(references))
    real_ids = sorted(set(r_ids) & set(real_photos))
    if not gen_ids:
        raise ValueError("judge: no generated sketch has a reference photo")
    if not real_ids:
        raise ValueError("judge: no real sketch has a photo of its identity")
    n = min(len(gen_ids), len(real_ids), identities or 10**9)
    rng = np.random.default_rng(seed)
    gen_keep = set(np.asarray(gen_ids)[np.sort(rng.choice(len(gen_ids), n, replace=False))])
    real_keep = set(np.asarray(real_ids)[np.sort(rng.choice(len(real_ids), n, replace=False))])
    side = int(np.asarray(g_sk[0]).shape[0])
    gi = [k for k, d in enumerate(g_ids) if d in gen_keep]
    ri = [k for k, d in enumerate(r_ids) if d in real_keep]
    # real sketches at the generated side first: the ceiling at the generator's resolution
    r_small = [resize(np.asarray(s, np.uint8), side) for s in r_sk]
    e_dis = _embed(judge, list(distractors), grey, progress=progress, desc="judge distractors")
    e_gen = _embed(judge, g_sk, grey, progress=progress, desc="judge generated")
    e_real = _embed(judge, r_small, grey, progress=progress, desc="judge real")
    ref_ids = sorted(gen_keep)
    e_ref = _embed(judge, [references[d] for d in ref_ids], grey)
    rp_ids = [d for d in sorted(real_keep) for _ in real_photos[d]]
    e_rp = _embed(judge, [p for d in sorted(real_keep) for p in real_photos[d]], grey)
    dis_ids = [f"distractor/{k}" for k in range(len(e_dis))]
    gal_g = (np.concatenate([e_ref, e_dis]), ref_ids + dis_ids)
    gal_r = (np.concatenate([e_rp, e_dis]), rp_ids + dis_ids)
    probes_g = (e_gen[gi], [g_ids[k] for k in gi], [g_st[k] for k in gi])
    probes_r = (e_real[ri], [r_ids[k] for k in ri], [r_st[k] for k in ri])
    out: dict[str, Any] = {
        "identities": n, "distractors": len(e_dis), "grey": grey, "side": side,
        "generated": rank_against(*probes_g[:2], *gal_g),
        "real": rank_against(*probes_r[:2], *gal_r),
    }
    gr, rr = out["generated"]["rank1"], out["real"]["rank1"]
    out["rank1_ratio"] = None if not rr else gr / rr
    out["by_style"] = _by_style(probes_g, gal_g, probes_r, gal_r)
    out["frechet_distance"] = frechet_distance(e_gen, e_real) if len(e_gen) > 1 and len(e_real) > 1 else None
    out["frechet_rows"] = [len(e_gen), len(e_real)]
    out["diversity"] = {"generated": diversity(e_gen, g_ids, seed=seed), "real": diversity(e_real, r_ids, seed=seed)}
    out["style"] = style_accuracy(g_sk, g_st, r_small, r_st, seed=seed)
    return out


def _by_style(gen, gen_gallery, real, real_gallery) -> dict[str, Any]:
    """Rank figures per style: each style's probes (embeddings, identities,
    styles) against the whole set's gallery, so every style is ranked among the
    same identities and its ratio compares with the real sketches of that style."""
    def figures(probes, gallery, style):
        e, ids, st = probes
        rows = [k for k, x in enumerate(st) if x == style]
        return rank_against(e[rows], [ids[k] for k in rows], *gallery) if rows else None

    out = {}
    for s in sorted((set(gen[2]) | set(real[2])) - {None}, key=str):
        g, r = figures(gen, gen_gallery, s), figures(real, real_gallery, s)
        out[str(s)] = {"generated": g, "real": r, "rank1_ratio": g["rank1"] / r["rank1"] if g and r and r["rank1"] else None}
    return out


def style_accuracy(gen_sketches, gen_styles, real_sketches, real_styles, seed: int = 0) -> dict[str, Any] | None:
    """Share of generated sketches whose style a classifier fitted on the real
    sketches names as the one asked for (styles the real set has), and that
    classifier's accuracy on a held-out fifth of the real sketches."""
    keep_r = [k for k, s in enumerate(real_styles) if s is not None]
    labels = sorted({real_styles[k] for k in keep_r})
    if len(labels) < 2:
        return None
    fx = stroke_features([real_sketches[k] for k in keep_r])
    ys = [real_styles[k] for k in keep_r]
    perm = np.random.default_rng(seed).permutation(len(ys))
    cut = max(1, int(0.8 * len(ys)))
    held = NearestCentroid().fit(fx[perm[:cut]], [ys[i] for i in perm[:cut]])
    real_acc = float(np.mean([p == ys[i] for p, i in zip(held.predict(fx[perm[cut:]]), perm[cut:], strict=True)])) \
        if cut < len(ys) else None
    clf = NearestCentroid().fit(fx, ys)
    keep_g = [k for k, s in enumerate(gen_styles) if s in labels]
    if not keep_g:
        return {"accuracy": None, "real_accuracy": real_acc, "styles": labels, "sketches": 0}
    pred = clf.predict(stroke_features([gen_sketches[k] for k in keep_g]))
    acc = float(np.mean([p == gen_styles[k] for p, k in zip(pred, keep_g, strict=True)]))
    return {"accuracy": acc, "real_accuracy": real_acc, "chance": 1 / len(labels), "styles": labels,
            "sketches": len(keep_g)}
