"""Helpers shared by pipelines: run folders that describe themselves."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import DataError


def prepare_out(out: Path) -> Path:
    """Create ``out`` or fail with a message naming it (unwritable, a file...)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".c4s-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DataError(f"cannot write to output folder {out}: {err.strerror or err}") from None
    return out


RECORDS = ("config.yaml", "run.json")  # what save_run_config writes


@contextmanager
def keep_records(out: str | os.PathLike | None) -> Iterator[None]:
    """A run that fails leaves an earlier run in ``out`` as it was.

    save_run_config writes a run's records first, so a run that then fails
    (bad input, a refused resume, Ctrl-C) would leave the earlier run's report
    and plots under the failed run's config. On failure the earlier records
    are put back; a run that wrote nothing but its records takes them away
    again, and a folder it created and left empty goes too. A failed run that
    wrote more (checkpoints to resume) keeps its records: they describe it.
    """
    if out is None:
        yield
        return
    out = Path(out)
    existed = out.is_dir()
    old = {n: (out / n).read_bytes() for n in RECORDS if existed and (out / n).is_file()}
    files = _files(out) if existed and not old else {}
    try:
        yield
    except BaseException:
        try:
            _put_back(out, old, existed, files)
        except OSError:
            pass  # the run's own error matters more than a failed restore
        raise


def _files(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``out`` (records aside) with its mtime and size."""
    found = {}
    for root, _dirs, names in os.walk(out):
        for f in names:
            path = os.path.join(root, f)
            if not (Path(root) == out and f in RECORDS):
                st = os.stat(path)
                found[path] = (st.st_mtime_ns, st.st_size)
    return found


def _put_back(out: Path, old: dict[str, bytes], existed: bool, files: dict[str, tuple[int, int]]) -> None:
    from ..data.io import atomic_write_bytes

    if not out.is_dir():
        return
    if old:
        for n in RECORDS:
            if n in old and (not (out / n).is_file() or (out / n).read_bytes() != old[n]):
                atomic_write_bytes(out / n, old[n])
            elif n not in old and (out / n).is_file():
                (out / n).unlink()
        return
    if _files(out) == files:  # the run wrote nothing but its records
        for n in RECORDS:
            if (out / n).is_file():
                (out / n).unlink()
    if not existed:
        for root, _dirs, _names in sorted(os.walk(out), key=lambda w: -len(w[0])):
            if not os.listdir(root):
                os.rmdir(root)  # only empty folders: never a file the run wrote


def remove_partial_files(out: Path) -> int:
    """Delete temp files that a killed run left mid-write (see atomic_write_bytes)."""
    n = 0
    for p in Path(out).rglob(".*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def save_run_config(out: Path, pipeline: str, cfg: BaseModel, extra: dict[str, Any] | None = None) -> None:
    """Write ``out/config.yaml`` (rerunnable with --config) and ``out/run.json``."""
    import yaml

    from .. import __version__
    from ..data.io import atomic_write_bytes

    data = json.loads(cfg.model_dump_json())
    atomic_write_bytes(out / "config.yaml", yaml.safe_dump(data, sort_keys=False).encode())
    info = {
        "pipeline": pipeline,
        "c4s_version": __version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": data,
        **(extra or {}),
    }
    atomic_write_bytes(out / "run.json", json.dumps(info, indent=2, default=str).encode())


def write_json(path: Path, data: Any) -> None:
    from ..data.io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())


class PeakRSS:
    """Peak resident memory (MB) of this process while the ``with`` block runs,
    sampled every ``interval`` s from /proc (ru_maxrss is a lifetime maximum, so
    it cannot tell one stage from the next); ``peak_mb`` is None off Linux."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_mb = interval, None

    @staticmethod
    def _rss_mb() -> float | None:
        import os

        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return None

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self):
        rss = self._rss_mb()
        if rss is not None:
            self.peak_mb = max(self.peak_mb or 0.0, rss)

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        self._take()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._take()
        return False
