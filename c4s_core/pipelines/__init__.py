"""Pipelines: each module has a pydantic ``Config`` (a C4SModel) and
``run(config, progress=True) -> dict`` (a JSON-able summary). Modules import
torch and friends only inside ``run``, so configs load fast for the CLI.
"""

from __future__ import annotations

import importlib

from ..errors import UnknownComponentError

# name -> module; the CLI makes one command per entry.
PIPELINES: dict[str, str] = {
    "synth": "c4s_core.pipelines.synth",
    "align": "c4s_core.pipelines.align",
    "evaluate": "c4s_core.pipelines.evaluate",
    "demo": "c4s_core.pipelines.demo",
    "train-generator": "c4s_core.pipelines.train_generator",
    "train-matcher": "c4s_core.pipelines.train_matcher",
    "export": "c4s_core.pipelines.export",
    "generate": "c4s_core.pipelines.generate",
    "report-dataset": "c4s_core.pipelines.report_dataset",
    "filter-set": "c4s_core.pipelines.filter_set",
    "experiment": "c4s_core.pipelines.experiment",
    "seeds": "c4s_core.pipelines.seeds",
}


def get_pipeline(name: str):
    if name not in PIPELINES:
        import difflib

        near = difflib.get_close_matches(name, list(PIPELINES), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownComponentError(
            f"unknown pipeline {name!r}.{hint} Available: {', '.join(sorted(PIPELINES))}"
        )
    return importlib.import_module(PIPELINES[name])
