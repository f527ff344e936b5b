"""Helpers shared by pipelines: run folders that describe themselves."""

from __future__ import annotations

import json
import platform
import time
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
