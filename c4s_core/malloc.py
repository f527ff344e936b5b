"""Keep glibc from returning big freed blocks to the OS between tensor operations.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (32 MB at most by default)
with fresh ``mmap`` pages and unmaps them on free, so every training or sampling
step pays for zeroing and faulting its large activations again. On 2 cores that
was 40 % of a generate run's CPU time in system calls (utime 11.5 s, stime
7.6 s over 10 s), and a stack of 64-channel 3x3 convolutions at batch 32 ran
1.5-1.8x faster with the blocks kept (``benchmarks/bench_malloc.py``). So the
``c4s`` command raises both thresholds to 256 MiB at start: freed blocks up to
that size stay in the heap for the next step. The price is resident memory:
freed blocks are kept for reuse instead of returned at once, so a process
holds more than it uses at any moment (``bench_malloc.py`` reports the peak
RSS both ways; a diffusion ``generate`` at batch 32 was seen at 2.7 GB with a
1 GiB threshold against 1.5 GB without). A stage's peak RSS (``stage.json``)
can then include memory an earlier stage of the same process freed.

``C4S_MALLOC_TUNE=0`` leaves glibc's defaults. Other C libraries (musl, macOS,
Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_malloc", "THRESHOLD"]

THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def tune_malloc(threshold: int = THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes; whether it was done."""
    if os.environ.get("C4S_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    value = ctypes.c_int(min(int(threshold), 2**31 - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
