"""Helpers shared by training loops: seeding, RNG state, learning-rate
schedules and resumable checkpoints (safetensors + JSON, never pickle).

A training *state* is any nest of dicts, lists, numbers, strings and tensors
(model/optimizer/scheduler ``state_dict()``, RNG states, counters).
:func:`save_state` splits it into ``NAME.safetensors`` (the tensors) and
``NAME.json`` (the structure, with ``{"__tensor__": key}`` where each tensor
was); :func:`load_state` puts it back together. Both files are written
atomically, the JSON last, so a state whose JSON exists is complete.

Import cost: numpy and the standard library at import; torch and safetensors
inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = [
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "flatten_state",
    "unflatten_state",
    "save_state",
    "load_state",
    "save_weights",
    "load_weights",
    "canonical_safetensors",
    "lr_at",
    "save_verified_folder",
    "read_folder_json",
    "folder_lists",
    "folder_has",
    "read_verified",
    "load_verified",
    "verify_folder",
    "read_format_json",
    "recorded_config",
    "load_verified_into",
    "latest_checkpoint",
    "prune_checkpoints",
    "save_training_checkpoint",
    "read_training_checkpoint",
]

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"
_STATE_FORMAT = "c4s_state"  # marks a state JSON that records its tensors' hash


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, as a state nest (tensors and JSON values)."""
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_jsonable(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"]).astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_to_jsonable(v) for v in x]
    return x


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, Any], Any]:
    """Split a state nest into ``(tensors by key, JSON-able skeleton)``."""
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            key = path or "tensor"
            tensors[key] = x.detach().cpu().contiguous().clone()
            return {_TENSOR: key}
        if isinstance(x, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(x)), path)
        if isinstance(x, Mapping):
            keys = list(x)
            if keys and all(isinstance(k, int) for k in keys):  # optimizer state: param ids
                return {_INTKEYS: {str(k): walk(x[k], f"{path}.{k}" if path else str(k)) for k in keys}}
            bad = [k for k in keys if not isinstance(k, str)]
            if bad:
                raise TypeError(f"state keys must be str or int, got {bad[0]!r} at {path or '(root)'}")
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in x.items()}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path or '(root)'} in a training state")

    skeleton = walk(obj, prefix)
    return tensors, skeleton


def unflatten_state(skeleton: Any, tensors: Mapping[str, Any]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        if set(skeleton) == {_TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE])
        if set(skeleton) == {_INTKEYS}:
            return {int(k): unflatten_state(v, tensors) for k, v in skeleton[_INTKEYS].items()}
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_state(folder: str | Path, name: str, state: Any) -> None:
    """Write ``folder/name.safetensors`` then ``folder/name.json``, atomically."""
    from safetensors.torch import save

    from .data.io import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_state(state)
    data = canonical_safetensors(save(tensors))
    atomic_write_bytes(folder / f"{name}.safetensors", data)
    # the JSON records the tensors' hash, so a damaged state is refused on load
    doc = {_STATE_FORMAT: 1, "safetensors_sha256": hashlib.sha256(data).hexdigest(), "state": skeleton}
    atomic_write_bytes(folder / f"{name}.json", json.dumps(doc, indent=1).encode())


def load_state(folder: str | Path, name: str) -> Any:
    """Read what :func:`save_state` wrote; a missing or broken file is a DataError."""
    from safetensors.torch import load_file

    from .data.io import file_hash

    folder = Path(folder)
    js, st = folder / f"{name}.json", folder / f"{name}.safetensors"
    for p in (js, st):
        if not p.is_file():
            raise DataError(f"training state {p} not found (was the run stopped while saving?)")
    try:
        doc = json.loads(js.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DataError(f"training state {js} is unreadable: {err}") from None
    skeleton = doc
    if isinstance(doc, dict) and _STATE_FORMAT in doc:
        skeleton = doc.get("state")
        want, got = doc.get("safetensors_sha256"), file_hash(st, 64)
        if got != want:
            raise DataError(
                f"{st}: content hash {got[:16]}... does not match {js.name} ({str(want)[:16]}...): "
                "the training state was changed or damaged after it was written; refusing to resume from it"
            )
    # states from before the hash was recorded load unchecked
    try:
        return unflatten_state(skeleton, load_file(str(st)))
    except Exception as err:  # safetensors raises its own error types
        raise DataError(f"training state in {folder} ({name}.json/.safetensors) is unreadable: {err}") from None


def save_weights(path: str | Path, state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """Save a flat ``{name: tensor}`` as safetensors, atomically; returns its sha256."""
    from safetensors.torch import save

    from .data.io import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    data = canonical_safetensors(save(tensors, metadata=dict(metadata) if metadata else None))
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written in one fixed order.

    safetensors serialises ``__metadata__`` from a hash map whose order changes
    from process to process, so equal tensors gave files (and hashes) that
    differed; sorted keys make the bytes a function of the content. The tensor
    offsets are untouched: only the header text is rewritten, padded with
    spaces to a multiple of 8 bytes as the format asks.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]



def load_weights(path: str | Path) -> dict[str, Any]:
    """Load a flat state dict from ``.safetensors``, or from a torch file with
    ``torch.load(weights_only=True)`` (taking its ``state_dict`` entry if any)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise DataError(f"{path} is not a readable safetensors file: {err}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(
            f"{path} cannot be read with torch.load(weights_only=True): {err}. "
            "c4s never unpickles arbitrary objects; convert it to safetensors."
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path} holds no state dict (a mapping of names to tensors)")
    return dict(obj)


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.6, 0.85),
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then ``constant``,
    ``cosine`` (to ``min_lr`` at ``total_steps``) or ``step`` (times ``gamma``
    at each milestone, given as fractions of ``total_steps``). A pure function
    of its arguments, so a resumed run needs no scheduler state."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return base_lr * gamma ** sum(t >= m for m in milestones)
    raise ValueError(f"unknown schedule {schedule!r}; use constant, cosine or step")



# -- verified folders ------------------------------------------------------------------------
# A weights folder (a generator, a checkpoint) is a JSON description plus files; the
# JSON records each file's sha256 under ``weights_sha256`` ({file name: hash}), so a
# file changed or damaged after it was written is refused, naming it, instead of
# being sampled from or trained on.

FOLDER_HASHES = "weights_sha256"
_UNVERIFIED_WARNED: set[str] = set()


def save_verified_folder(
    path: str | Path,
    weights: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
    json_name: str,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write the folder ``path`` whole: every ``{file name: state dict}`` of
    ``weights`` (safetensors, through :func:`save_weights`), every ``{file name:
    bytes}`` of ``files``, then ``json_name`` holding ``info`` plus
    ``weights_sha256``, the sha256 of each of those files. Built in a temp folder
    beside ``path`` and renamed over it, so a killed save leaves the old folder
    or the new one, never half of one."""
    import os
    import shutil

    from .data.io import atomic_write_bytes, replace_folder

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        hashes = {name: save_weights(tmp / name, sd) for name, sd in weights.items()}
        for name, data in (files or {}).items():
            atomic_write_bytes(tmp / name, data)
            hashes[name] = hashlib.sha256(data).hexdigest()
        doc = {**info, FOLDER_HASHES: dict(sorted(hashes.items()))}
        atomic_write_bytes(tmp / json_name, json.dumps(doc, indent=2, default=str).encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_folder(tmp, path)


def read_folder_json(folder: str | Path, json_name: str) -> dict[str, Any]:
    """The description ``folder/json_name`` (a DataError naming it if absent or not a JSON object)."""
    p = Path(folder) / json_name
    if not p.is_file():
        raise DataError(f"{Path(folder)}: no {json_name} (not a folder written by c4s, or an incomplete copy)")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DataError(f"{p} is not valid JSON: {err}") from None
    if not isinstance(info, dict):
        raise DataError(f"{p} is not a JSON object")
    return info


def folder_lists(info: Mapping[str, Any], name: str) -> bool:
    """Whether the folder description ``info`` records a hash for file ``name``
    (then the file must be there: an optional file that went missing is refused)."""
    rec = info.get(FOLDER_HASHES)
    return isinstance(rec, Mapping) and name in rec


def read_verified(folder: str | Path, name: str, info: Mapping[str, Any], json_name: str) -> bytes:
    """The bytes of ``folder/name``, checked against the sha256 that ``info`` (the
    contents of ``folder/json_name``) records for it. Folders written before the
    hashes were recorded load unchecked, with one warning per folder."""
    folder = Path(folder)
    p = folder / name
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p} is missing (the folder is incomplete)") from None
    except OSError as err:
        raise DataError(f"cannot read {p}: {err.strerror or err}") from None
    rec = info.get(FOLDER_HASHES)
    if rec is None:
        key = str(folder.resolve())
        if key not in _UNVERIFIED_WARNED:
            import warnings

            _UNVERIFIED_WARNED.add(key)
            warnings.warn(f"{folder / json_name} records no content hashes (written by an older c4s); "
                          "its files are loaded unchecked. Save the folder again to add them.", stacklevel=3)
        return data
    if not isinstance(rec, Mapping):
        raise DataError(f"{folder / json_name}: {FOLDER_HASHES} is not a mapping of file names to sha256 hashes")
    want = rec.get(name)
    if want is None:
        raise DataError(f"{p}: {json_name} records no content hash for it (it lists {', '.join(sorted(rec)) or 'none'}); "
                        "refusing to load a file the folder does not vouch for")
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise DataError(
            f"{p}: content hash {got[:16]}... does not match {json_name} ({str(want)[:16]}...): "
            "the file was changed or damaged after it was written; refusing to load it"
        )
    return data


def load_verified(folder: str | Path, name: str, info: Mapping[str, Any], json_name: str) -> dict[str, Any]:
    """The safetensors state dict ``folder/name``, read once, checked as
    :func:`read_verified` does, then parsed from memory."""
    from safetensors.torch import load

    data = read_verified(folder, name, info, json_name)
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own error types
        raise DataError(f"{Path(folder) / name} is not a readable safetensors file: {err}") from None


def verify_folder(folder: str | Path, json_name: str) -> dict[str, Any]:
    """Check every file the folder's ``json_name`` records a hash for; returns
    the description. A folder from before the hashes were recorded passes."""
    info = read_folder_json(folder, json_name)
    rec = info.get(FOLDER_HASHES)
    for name in sorted(rec) if isinstance(rec, Mapping) else ([] if rec is None else [None]):
        if name is None:
            raise DataError(f"{Path(folder) / json_name}: {FOLDER_HASHES} is not a mapping of file names to sha256 hashes")
        read_verified(folder, name, info, json_name)
    return info


def read_format_json(folder: str | Path, json_name: str, fmt: str, what: str) -> dict[str, Any]:
    """The description ``folder/json_name`` of a saved component, refused (a
    DataError naming the file) when it is absent, not JSON, or its ``format``
    is not ``fmt``; ``what`` names the kind of folder in the first message."""
    path = Path(folder)
    meta_p = path / json_name
    if not meta_p.is_file():
        raise DataError(f"{path}: not a {what} folder (no {json_name})")
    try:
        meta = json.loads(meta_p.read_text())
    except ValueError as err:
        raise DataError(f"{meta_p} is not valid JSON: {err}") from None
    if meta.get("format") != fmt:
        raise DataError(f"{meta_p}: format {meta.get('format')!r} is not {fmt}")
    return meta


def recorded_config(config_cls: type, info: Mapping[str, Any], where: str, device: str | None = None):
    """The component config ``info["config"]`` a saved folder records, validated
    as ``config_cls`` (errors name ``where``), with ``device`` (when given) in
    place of the recorded one."""
    from .config import validate

    data = dict(info["config"])
    if device is not None:
        data["device"] = device
    return validate(config_cls, data, where)


def folder_has(folder: str | Path, info: Mapping[str, Any], name: str) -> bool:
    """Whether to read the optional file ``folder/name``: it is there, or the
    description ``info`` vouches for it (then a missing one is refused on reading
    rather than skipped)."""
    return (Path(folder) / name).is_file() or folder_lists(info, name)


def load_verified_into(module, folder: str | Path, name: str, info: Mapping[str, Any], json_name: str) -> None:
    """Load the verified state dict ``folder/name`` (:func:`load_verified`) into
    ``module``, refusing one whose keys do not fit it (a DataError naming both sides)."""
    bad = module.load_state_dict(load_verified(folder, name, info, json_name), strict=False)
    if bad.missing_keys or bad.unexpected_keys:
        raise DataError(f"{Path(folder) / name} does not fit the recorded config: missing {bad.missing_keys[:10]}, "
                        f"unexpected {bad.unexpected_keys[:10]}")


def save_training_checkpoint(
    ckdir: str | Path,
    step: int,
    save_folder,
    trainer_state: Mapping[str, Any],
    history: Any,
    keep: int,
) -> Path:
    """Write checkpoint ``ckdir/step_NNNNNNN``: ``save_folder(path, files)`` (a
    component's own weights-folder writer, see :func:`save_verified_folder`)
    gets ``trainer_state.pt`` (``torch.save`` of ``trainer_state``: optimizer and
    RNG states, step) and ``history.json`` to put in the same atomic folder,
    hashed like the weights; then all but the newest ``keep`` are pruned."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(dict(trainer_state), buf)
    d = save_folder(Path(ckdir) / f"step_{step:07d}",
                    {"trainer_state.pt": buf.getvalue(), "history.json": json.dumps(history).encode()})
    prune_checkpoints(ckdir, keep)
    return d


def read_training_checkpoint(
    folder: str | Path,
    weights: Sequence[str],
    optional: Sequence[str] = (),
    json_name: str = "generator.json",
) -> dict[str, Any]:
    """Everything a checkpoint written by :func:`save_training_checkpoint` holds,
    as plain data on the CPU, every file checked against the hashes ``json_name``
    records: ``{"info": the description, "weights": {file: state dict} (each of
    ``weights``, then each of ``optional``, None where absent), "trainer": the
    trainer_state.pt mapping, "history": list}``."""
    import io

    import torch

    d = Path(folder)
    info = read_folder_json(d, json_name)
    sds: dict[str, Any] = {name: load_verified(d, name, info, json_name) for name in weights}
    for name in optional:
        sds[name] = load_verified(d, name, info, json_name) if folder_has(d, info, name) else None
    data = read_verified(d, "trainer_state.pt", info, json_name)
    try:
        trainer = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"cannot resume from {d}: trainer_state.pt unreadable ({err}); delete that folder") from None
    history = []
    if folder_has(d, info, "history.json"):
        history = json.loads(read_verified(d, "history.json", info, json_name))
    return {"info": info, "weights": sds, "trainer": trainer, "history": history}


def latest_checkpoint(ckdir: str | Path, marker: str = "trainer_state.pt") -> Path | None:
    """The newest complete ``step_*`` checkpoint in ``ckdir`` (one holding ``marker``)."""
    ckdir = Path(ckdir)
    if not ckdir.is_dir():
        return None
    done = [d for d in sorted(ckdir.glob("step_*")) if (d / marker).is_file()]
    return done[-1] if done else None


def prune_checkpoints(ckdir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``step_*`` checkpoints."""
    import shutil

    for old in sorted(Path(ckdir).glob("step_*"))[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
