"""The matcher folder: ``model.safetensors`` (backbone weights) + ``matcher.json``
(backbone name and options, input size, colour order, normalisation, embedding
size, ``weights_sha256`` and what the writer adds). ``train-matcher`` writes
it; the ``matcher`` backbone, export and evaluation read it, checking the
weights' hash. A core service, so plugins need no pipeline internals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["MATCHER_FORMAT", "MATCHER_FORMAT_VERSION", "save_matcher", "read_matcher"]

MATCHER_FORMAT = "c4s-matcher"
MATCHER_FORMAT_VERSION = 1


def save_matcher(folder: Path, backbone, backbone_name: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/model.safetensors`` and ``folder/matcher.json``; returns the info."""
    from . import __version__
    from .pipelines.common import write_json
    from .training import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    sha = save_weights(folder / "model.safetensors", backbone.model.state_dict(),
                       {"format": MATCHER_FORMAT, "backbone": backbone_name})
    info = {
        "format": MATCHER_FORMAT,
        "format_version": MATCHER_FORMAT_VERSION,
        "backbone": {"name": backbone_name, "options": backbone.architecture()},
        "input_size": list(backbone.input_size),
        "color_order": backbone.color_order,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "embedding_dim": int(backbone.embedding_dim),
        "weights_sha256": sha,
        "c4s_version": __version__,
        **extra,
    }
    write_json(folder / "matcher.json", info)
    return info


def read_matcher(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(folder, matcher.json contents)`` for a matcher folder, its
    ``matcher.json``, or a train-matcher run folder (its ``best/``)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / "matcher.json").is_file() and (path / "best" / "matcher.json").is_file():
        path = path / "best"
    js = path / "matcher.json"
    if not js.is_file():
        raise DataError(f"{path}: no matcher.json (give a folder written by `c4s train-matcher`, e.g. OUT/best)")
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(f"{js} is not valid JSON: {err}") from None
    if info.get("format") != MATCHER_FORMAT or "backbone" not in info:
        raise DataError(f"{js} is not a c4s matcher description (format {info.get('format')!r})")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise DataError(f"{path}: model.safetensors is missing beside matcher.json")
    want = info.get("weights_sha256")
    if want:
        import hashlib

        got = hashlib.sha256(weights.read_bytes()).hexdigest()
        if got != want:
            raise DataError(
                f"{weights}: content hash {got[:16]}... does not match matcher.json ({want[:16]}...): "
                "the weights were changed or damaged after training; refusing to load them"
            )
    return path, info
