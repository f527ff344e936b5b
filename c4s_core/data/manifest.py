"""Manifests: one JSON object per line, appended atomically per record."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    return list(iter_manifest(path))


def iter_manifest(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield records; a torn last line (killed writer) is ignored, any other bad
    line is an error naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) and not line.endswith("\n"):
                return  # half-written final record from an interrupted run
            raise DataError(f"{path}:{i}: not valid JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        yield rec


def append_manifest(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Append records, each as one complete line; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A torn final line from a killed run would glue onto the next record.
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                _drop_torn_tail(path)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def write_manifest(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    from .io import atomic_write_bytes

    lines = [json.dumps(r, sort_keys=True) + "\n" for r in records]
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))
    return len(lines)


def _drop_torn_tail(path: Path) -> None:
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    from .io import atomic_write_bytes

    atomic_write_bytes(path, keep)
