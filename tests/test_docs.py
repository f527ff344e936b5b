"""The generated CLI reference must match the CLI (regenerate with docs/make_cli_reference.py)."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (DOCS / "cli.md").read_text() == mod.render(), (
        "docs/cli.md is stale: run `python docs/make_cli_reference.py`"
    )
