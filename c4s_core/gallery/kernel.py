"""The compiled int8 kernel (``_int8.c``): each query's best rows by quantised score.

Built at install when a C compiler is present (``setup.py``, optional); where it
is missing, :func:`available` is False and int8 search falls back to torch's
weight-only int8 product (correct, about twice as slow at 1M rows).
``C4S_INT8_KERNEL=0`` disables it (to compare the two paths).

Why a kernel: one query against 1M x 512 int8 codes is 0.5 GB of reads, about
a quarter of float32's; torch's int8 products are compute-bound on CPUs without
VNNI, and a separate top-k over a [Q, n] score matrix costs as much again.
"""

from __future__ import annotations

import ctypes
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

__all__ = ["available", "default_threads", "query_codes", "topm"]

_ROWS_PER_THREAD = 1 << 16  # below this, another thread costs more than it saves


@lru_cache(maxsize=1)
def _lib():
    if os.environ.get("C4S_INT8_KERNEL", "1") == "0":
        return None
    try:
        from importlib.util import find_spec

        spec = find_spec("c4s_core.gallery._int8")
        if spec is None or not spec.origin:
            return None
        lib = ctypes.CDLL(spec.origin)
    except (ImportError, OSError):
        return None
    P, I64 = ctypes.c_void_p, ctypes.c_int64
    lib.c4s_int8_topm.argtypes = [P, P, I64, I64, I64, P, I64, I64, P, P]
    lib.c4s_int8_topm.restype = None
    return lib


def available() -> bool:
    """Whether the compiled kernel is built and enabled."""
    return _lib() is not None


@lru_cache(maxsize=2)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process (``pid``: a forked child must not reuse its parent's dead threads)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="c4s-int8")


def query_codes(q: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``[Q, d]`` float32 as int16 codes and a per-query scale (``q ~= scale * codes``).

    The int16 range is capped so that a row's sum of ``d`` products
    (``|code| <= 127``) cannot overflow int32: the kernel's sums are exact."""
    qmax = float(min(32767, (2**31 - 1) // (127 * max(d, 1))))
    amax = np.abs(q).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float64)
    codes = np.clip(np.rint(q / scale[:, None]), -qmax, qmax).astype(np.int16)
    return codes, scale


def default_threads() -> int:
    """torch's thread count where torch is loaded (one setting for every backend), else the CPUs
    this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def topm(codes: np.ndarray, scales: np.ndarray, q16: np.ndarray, m: int, threads: int | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``m`` rows of ``codes`` ``[n, d]`` int8 by ``scales[i] * (q16 . codes[i])``.

    Returns ``(scores [Q, m] float32, rows [Q, m] int64)``, sorted by score (desc)
    then row; ``m`` is capped at ``n``. Rows are split in contiguous ranges over
    ``threads`` (default: :func:`default_threads`) and each range's best ``m`` merged: the
    union holds the global best ``m``."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("the int8 kernel is not built (see c4s_core.gallery.kernel)")
    n, d = codes.shape
    if not (codes.dtype == np.int8 and codes.flags.c_contiguous and scales.dtype == np.float32
            and scales.shape == (n,) and q16.dtype == np.int16 and q16.ndim == 2 and q16.shape[1] == d):
        raise ValueError(f"int8 kernel: codes {codes.dtype}{codes.shape}, scales {scales.dtype}{scales.shape}, "
                         f"queries {q16.dtype}{q16.shape}")
    q16 = np.ascontiguousarray(q16)
    scales = np.ascontiguousarray(scales)
    nq, m = len(q16), max(1, min(int(m), n))
    t = max(1, min(threads or default_threads(), -(-n // _ROWS_PER_THREAD)))
    bounds = np.linspace(0, n, t + 1).astype(np.int64)
    top_s = np.empty((t, nq, m), np.float32)
    top_r = np.empty((t, nq, m), np.int64)

    def run(p: int) -> None:
        lib.c4s_int8_topm(codes.ctypes.data, scales.ctypes.data, int(bounds[p]), int(bounds[p + 1]), d,
                          q16.ctypes.data, nq, m, top_s[p].ctypes.data, top_r[p].ctypes.data)

    if t == 1:
        run(0)
    else:
        list(_pool(t, os.getpid()).map(run, range(t)))
    s = top_s.transpose(1, 0, 2).reshape(nq, t * m)
    r = top_r.transpose(1, 0, 2).reshape(nq, t * m)
    order = np.lexsort((r, -s), axis=1)[:, :m]  # score desc, then row; -1 rows (-inf) sort last
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
