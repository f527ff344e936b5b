"""On-disk embedding cache: one file per (encoder identity, input content).

Keys are the SHA-256 of the encoder's ``identity`` string (name + options +
weights hash) and the content of each input part (image pixels with shape and
dtype, or text), so a changed option, weight file or image never returns a
stale vector. Values are float arrays stored as ``.npy`` (default) or
``.safetensors``; writes are atomic (temp file + rename), so a killed run
leaves no half file. Numpy only at import.

    cache = EmbeddingCache("~/.cache/c4s/emb", identity=cond.identity)
    tokens = cache.map(photos, lambda todo: cond.encode(todo).numpy())

:func:`encode_cached` does that for any conditioner (``encode(photos, styles)``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .data.io import atomic_write_bytes
from .errors import ConfigError

__all__ = ["EmbeddingCache", "content_hash", "conditioner_identity", "encode_cached"]

Part = np.ndarray | str | bytes | None


def content_hash(*parts: Part, salt: str = "") -> str:
    """SHA-256 hex of ``salt`` and each part (arrays by shape, dtype and bytes)."""
    h = hashlib.sha256(salt.encode())
    for p in parts:
        if p is None:
            h.update(b"\x00none")
        elif isinstance(p, np.ndarray):
            h.update(b"\x01" + str((p.shape, str(p.dtype))).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, bytes):
            h.update(b"\x02" + len(p).to_bytes(8, "little") + p)
        else:
            b = str(p).encode()
            h.update(b"\x03" + len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings on disk under ``root/<key[:2]>/<key>.<fmt>``, keyed by content."""

    def __init__(self, root: str | Path, identity: str, fmt: Literal["npy", "safetensors"] = "npy"):
        if not identity:
            raise ConfigError("EmbeddingCache needs a non-empty encoder identity (name + options + weights hash)")
        if fmt not in ("npy", "safetensors"):
            raise ConfigError(f"EmbeddingCache fmt must be 'npy' or 'safetensors', got {fmt!r}")
        self.root = Path(root).expanduser()
        self.identity = identity
        self.fmt = fmt
        self.hits = 0
        self.misses = 0

    def key(self, *parts: Part) -> str:
        return content_hash(*parts, salt=self.identity)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.{self.fmt}"

    def get(self, *parts: Part) -> np.ndarray | None:
        p = self.path(self.key(*parts))
        try:
            if self.fmt == "npy":
                return np.load(p, allow_pickle=False)
            from safetensors.numpy import load_file

            return load_file(str(p))["value"]
        except (OSError, ValueError, KeyError):  # absent or unreadable: recompute
            return None
        except Exception:  # safetensors raises its own error types on a corrupt file
            return None

    def put(self, value: np.ndarray, *parts: Part) -> None:
        value = np.ascontiguousarray(value)
        if self.fmt == "npy":
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            data = buf.getvalue()
        else:
            from safetensors.numpy import save

            data = save({"value": value})
        atomic_write_bytes(self.path(self.key(*parts)), data)

    def map(self, items: Sequence[tuple[Part, ...]], compute: Callable[[list[int]], Any]) -> list[np.ndarray]:
        """Values for each ``items[i]`` (a tuple of key parts); ``compute(indices)``
        returns an array ``[len(indices), ...]`` for the ones not cached yet."""
        out: list[np.ndarray | None] = [self.get(*parts) for parts in items]
        todo = [i for i, v in enumerate(out) if v is None]
        self.hits += len(items) - len(todo)
        self.misses += len(todo)
        if todo:
            values = np.asarray(compute(todo))
            for i, v in zip(todo, values, strict=True):
                self.put(v, *items[i])
                out[i] = np.asarray(v)
        return out  # type: ignore[return-value]


def conditioner_identity(cond: Any) -> str:
    """A conditioner's cache identity: its ``identity`` attribute, else its
    ``fingerprint()`` (``dlib_id``), else name + options (weights unknown)."""
    ident = getattr(cond, "identity", None)
    if callable(ident):
        ident = ident()
    if not ident and hasattr(cond, "fingerprint"):
        ident = cond.fingerprint()
    if not ident and hasattr(getattr(cond, "encoder", None), "fingerprint"):
        ident = cond.encoder.fingerprint()
    if not ident:
        cfg = getattr(cond, "config", None)
        dumped = cfg.model_dump_json() if hasattr(cfg, "model_dump_json") else repr(cfg)
        ident = f"{getattr(cond, 'name', type(cond).__name__)}:{dumped}"
    return str(ident)


def condition_shape(cond: Any) -> tuple[int, ...]:
    """Per-item shape of a conditioner's output: ``(num_tokens, dim)`` for token
    conditioners, ``(channels, size, size)`` for ``kind = "spatial"`` ones."""
    if getattr(cond, "kind", "tokens") == "spatial":
        return (int(cond.channels), int(cond.size), int(cond.size))
    return (int(cond.num_tokens), int(cond.dim))


def encode_cached(
    cond: Any,
    photos: Sequence[np.ndarray],
    styles: Sequence[str] | None,
    cache: EmbeddingCache | None,
    batch_size: int = 64,
) -> np.ndarray:
    """``cond.encode(photos, styles)`` as float32 ``[B, *condition_shape(cond)]``, per item
    through ``cache`` (None: no cache). The key uses only what the conditioner
    reads (its ``uses`` attribute: "photo", "style" or "both"; default "photo"
    unless it is a style encoder)."""
    uses = getattr(cond, "uses", "photo")
    n = len(photos) if photos is not None and len(photos) else len(styles or [])
    styles_l = list(styles) if styles is not None else [None] * n

    def parts(i: int) -> tuple[Part, ...]:
        p = None if uses == "style" else np.asarray(photos[i])
        s = None if uses == "photo" else styles_l[i]
        return (p, s)

    def compute(idx: list[int]) -> np.ndarray:
        chunks = []
        for a in range(0, len(idx), batch_size):
            sel = idx[a:a + batch_size]
            ph = [photos[i] for i in sel] if photos is not None and len(photos) else []
            st = [styles_l[i] for i in sel] if styles is not None else None
            t = cond.encode(ph, st)
            chunks.append(t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32))
        return np.concatenate(chunks).astype(np.float32)

    if cache is None:
        return compute(list(range(n))) if n else np.zeros((0, *condition_shape(cond)), np.float32)
    return np.stack(cache.map([parts(i) for i in range(n)], compute)).astype(np.float32) if n else np.zeros(
        (0, *condition_shape(cond)), np.float32
    )
