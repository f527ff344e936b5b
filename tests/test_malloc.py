"""The c4s command's malloc tuning: large freed blocks are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from c4s_core.malloc import tune_malloc

PROBE = r"""
import resource, sys
import numpy as np
from c4s_core.malloc import tune_malloc
done = tune_malloc()
a = np.ones(8 << 20); del a            # 64 MiB: above glibc's default mmap threshold (at most 32 MiB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(8 << 20)                   # the same size again, every page written
print(done, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(tune: str) -> tuple[bool, int]:
    env = {**os.environ, "C4S_MALLOC_TUNE": tune}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    done, n = out.stdout.split()
    return done == "True", int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_large_blocks_are_reused():
    if not tune_malloc():
        pytest.skip("not glibc")
    done, tuned = faults("1")
    undone, plain = faults("0")
    assert done and not undone
    # 64 MiB is 16,384 pages of 4 KiB: unmapped on free and faulted in again by default
    # (fewer with transparent huge pages, at least 32 of 2 MiB); reused from the heap when tuned
    assert plain >= 32 and tuned < max(8, plain // 4), (tuned, plain)
