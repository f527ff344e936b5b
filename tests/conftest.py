"""Test setup: no network, no autoloaded third-party plugins, tmp user dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# Never autoload installed third-party plugins; tests that want one load it explicitly.
os.environ["C4S_LOAD_PLUGINS"] = ""
os.environ.pop("C4S_BLOCK_PLUGINS", None)
os.environ.pop("C4S_STRICT_PLUGINS", None)

# what the c4s command does at start: pipelines run in-process here (c4s_core/malloc.py)
from c4s_core.malloc import tune_malloc  # noqa: E402

tune_malloc()

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("C4S_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set C4S_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def cufs(shared_data) -> Path:
    p = shared_data / "cufs_train"
    if not (p / "photos").is_dir():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture(autouse=True)
def _fresh_registries(tmp_path, monkeypatch):
    """Each test starts from freshly loaded registries and a tmp home."""
    from c4s_core.plugins import set_registries

    monkeypatch.setenv("C4S_HOME", str(tmp_path / "c4s-home"))
    set_registries(None)
    yield
    set_registries(None)
