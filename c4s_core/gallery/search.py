"""Search backends of the folder store: rows scored against queries, best ``k`` kept.

Every backend returns ``(scores, rows)``, each ``[Q, k]``, sorted by score
(desc) then row (asc); scores are dot products (cosine: rows are unit length).

- ``exact`` (default): float32, ``chunk_size`` rows at a time with
  ``argpartition`` keeping only candidates: memory ``O(Q x (chunk + k))``.
  Memory-bound: one query reads every gallery byte.
- ``int8``: exact-equivalent at a quarter of the bytes. Each row is stored
  once more as int8 codes with a per-row bfloat16 scale (built on first use,
  kept per opened index); a query scores the codes and keeps the best
  ``candidates`` rows in one pass (the compiled kernel of
  :mod:`.kernel`, int16 query codes, exact int32 sums; without it torch's
  weight-only int8 product and a top-k), re-scores them in float32 and
  returns the best ``k``. The result is *proven* equal to exact:
  with ``E`` an upper bound of the quantised score's error over all rows
  (per-row residual norms, the query's quantisation, rounding of the score), no
  non-candidate can beat the ``k``-th re-scored row when that row's exact
  score exceeds the worst candidate's quantised score by more than ``E``.
  A query that fails the test is re-scored with 8x the candidates, then (if
  it still fails) searched exactly: never a wrong answer, only a slower one
  (``int8_stats`` counts them).
- ``bf16``: the gallery cast once to bfloat16 (torch), the best
  ``rescore x k`` rows re-scored in float32. Scores are exact; the ranking can
  differ from exact where bfloat16 rounding pushes a true top-k row out.
- ``faiss`` (``pip install faiss-cpu``): a FAISS index from a factory string
  (``Flat``: exact; ``HNSW32``, ``IVF1024,Flat``...: approximate), built once
  per opened index and kept in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from .base import IndexError_

__all__ = ["exact_search", "int8_search", "bf16_search", "faiss_search", "Int8Codes", "BACKENDS",
           "sorted_rows", "chunks_f32"]

BACKENDS = ("exact", "int8", "bf16", "faiss")


def chunks_f32(embeddings: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(embeddings), chunk_size):
        yield np.asarray(embeddings[start:start + chunk_size], np.float32)


def sorted_rows(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, -scores), axis=1) if scores.size else np.zeros_like(rows)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int, chunk_size: int = 65536
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by dot product, sorted (score desc, row asc): ``(scores, rows)``,
    each ``[Q, k]``. Reads ``chunk_size`` rows at a time (works on memmaps)."""
    q = np.asarray(queries, np.float32)
    n = len(embeddings)
    k = min(k, n)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, chunk_size):
        block = np.asarray(embeddings[start:start + chunk_size], np.float32)
        s = q @ block.T
        rows = np.broadcast_to(np.arange(start, start + len(block)), s.shape)
        s = np.concatenate([best_s, s], axis=1)
        rows = np.concatenate([best_r, rows], axis=1)
        if s.shape[1] > k:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(s, part, axis=1)
            rows = np.take_along_axis(rows, part, axis=1)
        best_s, best_r = s, rows
    return sorted_rows(best_s, best_r)


def _rescore(embeddings: np.ndarray, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact float32 scores ``[Q, m]`` of ``rows`` ``[Q, m]`` (each distinct row read once)."""
    uniq, pos = np.unique(rows, return_inverse=True)
    vec = np.asarray(embeddings[uniq], np.float32)
    return np.einsum("qkd,qd->qk", vec[pos.reshape(rows.shape)], q)


# -- int8: quantised candidates, float32 re-scoring, a proof of exactness -----------------------


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("search backends 'int8' and 'bf16' need torch; use --backend exact") from None
    return torch


@dataclass
class Int8Codes:
    """Int8 codes of a gallery: ``rows x dim`` bytes, a per-row bfloat16 scale, the error bound's terms."""

    codes: Any  # torch int8 [n, d]
    scales: Any  # torch bfloat16 [n]: row ~= scale * codes (the scale exact in bfloat16)
    residual_max: float  # max over rows of ||row - scale * codes||
    norm_max: float  # max over rows of ||scale * codes||
    stats: dict[str, int] = field(default_factory=lambda: {"queries": 0, "widened": 0, "exact_fallback": 0})
    _scales_f32: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, embeddings: np.ndarray, chunk_size: int = 1 << 18) -> Int8Codes:
        torch = _torch()
        n, d = embeddings.shape
        codes = np.empty((n, d), np.int8)
        scales = np.empty(n, np.float32)
        res_max = norm_max = 0.0
        for start in range(0, n, chunk_size):
            x = np.asarray(embeddings[start:start + chunk_size], np.float32)
            s = np.abs(x).max(axis=1) / 127.0
            s = torch.from_numpy(np.where(s > 0, s, 1.0).astype(np.float32)).to(torch.bfloat16).float().numpy()
            c = np.clip(np.rint(x / s[:, None]), -127, 127)
            xh = c * s[:, None]
            res_max = max(res_max, float(np.sqrt(((x - xh) ** 2).sum(1)).max(initial=0.0)))
            norm_max = max(norm_max, float(np.sqrt((xh ** 2).sum(1)).max(initial=0.0)))
            codes[start:start + len(x)] = c
            scales[start:start + len(x)] = s
        return cls(torch.from_numpy(codes), torch.from_numpy(scales).to(torch.bfloat16), res_max, norm_max)

    def extended(self, more: np.ndarray) -> Int8Codes:
        """These codes followed by those of the rows ``more``: what :meth:`build` gives for
        the rows these codes were built from plus ``more`` (codes are per row; the bound's
        terms are maxima over rows), without coding the old rows again."""
        torch = _torch()
        tail = Int8Codes.build(more)
        return Int8Codes(torch.cat([self.codes, tail.codes]), torch.cat([self.scales, tail.scales]),
                         max(self.residual_max, tail.residual_max), max(self.norm_max, tail.norm_max))

    @property
    def nbytes(self) -> int:
        return int(self.codes.numel() + 2 * self.scales.numel())

    def to_bytes(self) -> bytes:
        """The codes as an uncompressed ``.npz`` (codes, scales' bfloat16 bits, bound terms)."""
        import io

        torch = _torch()
        buf = io.BytesIO()
        np.savez(buf, codes=self.codes.numpy(), scales=self.scales.view(torch.int16).numpy(),
                 bound=np.array([self.residual_max, self.norm_max], np.float64))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, shape: tuple[int, int]) -> Int8Codes:
        """Codes written by :meth:`to_bytes` for a gallery of ``shape``; ValueError if they do not fit."""
        import io

        torch = _torch()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            codes, scales, bound = z["codes"], z["scales"], z["bound"]
        if codes.shape != tuple(shape) or codes.dtype != np.int8 or scales.shape != (shape[0],) \
                or scales.dtype != np.int16 or bound.shape != (2,):
            raise ValueError(f"codes {codes.shape} {codes.dtype}, scales {scales.shape} for a gallery of {shape}")
        return cls(torch.from_numpy(codes), torch.from_numpy(scales).view(torch.bfloat16), float(bound[0]),
                   float(bound[1]))

    def scales_f32(self) -> np.ndarray:
        """The row scales as float32 (the kernel's input), converted once."""
        if self._scales_f32 is None:
            self._scales_f32 = self.scales.float().numpy()
        return self._scales_f32

    def candidates(self, q: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query's best ``m`` rows by quantised score: ``(approx [Q, m] float32, rows
        [Q, m] int64)``, sorted (desc), and each query's error bound ``E`` ``[Q]``:
        ``|q . row - approx| <= E`` for every row."""
        from . import kernel

        n, d = self.codes.shape
        qn = np.linalg.norm(q, axis=1)
        if kernel.available():
            q16, qs = kernel.query_codes(q, d)
            s, rows = kernel.topm(self.codes.numpy(), self.scales_f32(), q16, m)
            qh = q16 * qs[:, None]
            qh_n = np.linalg.norm(qh, axis=1)
            # |q.x - approx| <= |q.(x - xh)| + |(q - qh).xh| + float32 rounding of the int32 sum, the row
            # scale and the query scale (the sum itself is exact)
            bound = qn * self.residual_max + np.linalg.norm(q - qh, axis=1) * self.norm_max \
                + 4 * 2.0 ** -24 * qh_n * self.norm_max + 1e-7
            return (s * qs[:, None]).astype(np.float32), rows, bound
        torch = _torch()
        qb = torch.from_numpy(np.ascontiguousarray(q)).to(torch.bfloat16)
        with torch.inference_mode():
            approx = torch._weight_int8pack_mm(qb, self.codes, self.scales)  # bfloat16: no float copy of [Q, n]
            a, rows = torch.topk(approx, min(m, n), dim=1)
        q_err = np.linalg.norm(q - qb.float().numpy(), axis=1)
        qb_n = np.linalg.norm(qb.float().numpy(), axis=1)
        # |q.x - approx| <= |q.(x - xh)| + |(q - qb).xh| + bfloat16 rounding of the output (2^-9 relative,
        # doubled) + float32 accumulation (at most d roundings, each relative to |qb||xh|: gamma_d)
        bound = (qn * self.residual_max + q_err * self.norm_max + 2.0 ** -8 * qb_n * self.norm_max
                 + (d + 2) * 2.0 ** -24 * qb_n * self.norm_max + 1e-7)
        return a.float().numpy(), rows.numpy().astype(np.int64), bound


def int8_search(embeddings: np.ndarray, codes: Int8Codes, queries: np.ndarray, k: int, candidates: int = 256,
                query_block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (as :func:`exact_search`) from int8 candidates re-scored in float32."""
    q = np.asarray(queries, np.float32)
    n = len(embeddings)
    k = min(k, n)
    m0 = min(n, max(int(candidates), 2 * k))
    out_s = np.empty((len(q), k), np.float32)
    out_r = np.empty((len(q), k), np.int64)
    for b0 in range(0, len(q), query_block):
        qb = q[b0:b0 + query_block]
        approx, rows, bound = codes.candidates(qb, m0)
        codes.stats["queries"] += len(qb)
        for j in range(len(qb)):
            a, cand, m = approx[j], rows[j:j + 1], m0
            while True:
                s, r = sorted_rows(_rescore(embeddings, qb[j:j + 1], cand), cand)
                proven = m >= n or float(s[0, k - 1]) > float(a[m - 1]) + float(bound[j])
                if proven or m >= 8 * m0:
                    break
                codes.stats["widened"] += 1
                m = min(n, 8 * m)
                wide, cand, _ = codes.candidates(qb[j:j + 1], m)
                a = wide[0]
            if not proven:  # the bound could not rule out every other row: search this query exactly
                codes.stats["exact_fallback"] += 1
                s, r = exact_search(embeddings, qb[j:j + 1], k)
            out_s[b0 + j], out_r[b0 + j] = s[0, :k], r[0, :k]
    return out_s, out_r


# -- bf16 and FAISS ------------------------------------------------------------------------------


def bf16_search(embeddings: np.ndarray, cache: dict, q: np.ndarray, k: int, chunk_size: int, rescore: int
                ) -> tuple[np.ndarray, np.ndarray]:
    torch = _torch()
    gal = cache.get("bf16")
    if gal is None:  # cast chunk by chunk: never a float32 copy of the whole gallery
        gal = torch.cat([torch.from_numpy(c).to(torch.bfloat16) for c in chunks_f32(embeddings, 1 << 18)])
        cache["bf16"] = gal
    n = len(gal)
    m = min(n, max(k * rescore, k + 16))
    qb = torch.from_numpy(q).to(torch.bfloat16)
    with torch.inference_mode():
        if len(q) == 1:  # a matrix-vector product reads the gallery once, fastest for one query
            cand = torch.topk(torch.mv(gal, qb[0]).float(), m).indices[None]
        else:
            best_s = best_r = None
            for start in range(0, n, chunk_size):
                s = (qb @ gal[start:start + chunk_size].T).float()
                r = torch.arange(start, start + s.shape[1]).expand_as(s)
                if best_s is not None:
                    s, r = torch.cat([best_s, s], 1), torch.cat([best_r, r], 1)
                top = torch.topk(s, min(m, s.shape[1]), dim=1).indices
                best_s, best_r = s.gather(1, top), r.gather(1, top)
            cand = best_r
    rows = cand.numpy().astype(np.int64)
    scores = _rescore(embeddings, q, rows)
    part = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    return sorted_rows(np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1))


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(
            "search backend 'faiss' needs the 'faiss' package, which is not installed. "
            "Install it with: pip install faiss-cpu (or faiss-gpu), or use --backend exact"
        ) from None
    return faiss


def faiss_search(embeddings: np.ndarray, cache: dict, q: np.ndarray, k: int, factory: str, nprobe: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    faiss = import_faiss()
    index = cache.get(("faiss", factory))
    if index is None:
        d = int(embeddings.shape[1])
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise IndexError_(f"faiss_factory {factory!r} is not a FAISS index description: "
                              f"{str(err).strip().splitlines()[-1]}") from None
        if not index.is_trained:  # IVF: k-means on (a sample of) the gallery
            n_train = min(len(embeddings), 256 * max(1, getattr(index, "nlist", 1)))
            pick = np.random.default_rng(0).choice(len(embeddings), n_train, replace=False)
            index.train(np.asarray(embeddings[np.sort(pick)], np.float32))
        for c in chunks_f32(embeddings, 1 << 18):
            index.add(np.ascontiguousarray(c))
        cache[("faiss", factory)] = index
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(nprobe, k)
    scores, rows = index.search(np.ascontiguousarray(q), int(k))
    ok = rows >= 0  # FAISS pads with -1 when it finds fewer than k
    scores = np.where(ok, scores, -np.inf).astype(np.float32)
    return sorted_rows(scores, rows.astype(np.int64))
