"""The gallery-store contract: what every store (folder, Milvus, ...) keeps.

A gallery store holds rows of (unit embedding, identity, source image,
thumbnail) built by one model. Stores are a plugin kind
(``register_gallery_stores``): a registered *backend* class opens and creates
stores from a location (``c4s_core.gallery.stores.open_store``); the store it
returns is a :class:`GalleryStore`. The rules every store keeps:

- **one model**: ``info["model_hash"]`` is the sha256 of the model that built
  it; :meth:`GalleryStore.check_model` refuses any other;
- **rows travel whole**: identity, source and thumbnail are stored with the
  vector and removed with it; thumbnails are named by their content's sha256
  and checked on every read;
- **commits**: :meth:`GalleryStore.add` and :meth:`GalleryStore.remove` change
  the open store in memory (or stage rows no search sees);
  :meth:`GalleryStore.save` commits them at once. A reader sees the committed
  generation before or after, never a half-written one; a crash leaves the
  previous one. A save refuses if another writer committed since the open.
- **search**: ``search(queries, top_k) -> [[Hit]]``, identities ranked by their
  best image's dot product (cosine: rows are unit length), ties by row.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["GalleryStore", "Hit", "IndexError_", "ModelMismatchError", "THUMB_NAME", "encode_thumbnail",
           "check_rows", "STORE_DTYPES"]

THUMB_NAME = re.compile(r"^[0-9a-f]{32}\.jpg$")
STORE_DTYPES = ("float32", "float16")


class IndexError_(DataError):  # noqa: N801 - IndexError is a builtin
    """A gallery index is missing, damaged, or cannot take this change."""


class ModelMismatchError(IndexError_):
    """The model is not the one that built the index."""


@dataclass(frozen=True)
class Hit:
    identity: str
    score: float
    source: str  # the best-matching enrolled image
    row: int = -1  # that image's row id in the store (folder: row as opened; rows renumber on save)
    thumb: str | None = None  # that image's thumbnail name, if stored

    def as_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "score": round(float(self.score), 6), "source": self.source}


def encode_thumbnail(image: np.ndarray, max_side: int = 512, quality: int = 90,
                     max_bytes: int | None = None) -> tuple[str, bytes]:
    """``(name, jpeg bytes)`` of uint8 RGB ``image`` shrunk to ``max_side`` (never enlarged);
    the name is the content's sha256 (32 hex) + ``.jpg``. ``max_bytes``: lower the quality
    (then the size) until the JPEG fits (a store with a field size limit)."""
    import hashlib

    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise IndexError_(f"put_thumbnail: expected a uint8 HxWx3 RGB image, got {a.dtype} {a.shape}")
    if max_side < 16:
        raise IndexError_(f"put_thumbnail: max_side must be at least 16, got {max_side}")
    im = Image.fromarray(np.ascontiguousarray(a))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.LANCZOS)
    q = int(quality)
    while True:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        data = buf.getvalue()
        if max_bytes is None or len(data) <= max_bytes:
            break
        if q > 40:
            q -= 15
        else:
            im = im.resize((max(16, im.width * 3 // 4), max(16, im.height * 3 // 4)), Image.LANCZOS)
    return f"{hashlib.sha256(data).hexdigest()[:32]}.jpg", data


def check_rows(identities: Sequence[str], embeddings, dim: int, sources: Sequence[str] | None,
               thumbnails: Sequence[str | None] | None) -> tuple[np.ndarray, list[str], list[str | None]]:
    """Validate rows for ``add``; returns (unit float32 embeddings, sources, thumbnails)."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or emb.shape[1] != dim or len(emb) != len(identities):
        raise IndexError_(f"add: expected embeddings [{len(identities)}, {dim}], got {emb.shape}")
    if not np.isfinite(emb).all():
        raise IndexError_("add: embeddings contain NaN or inf")
    srcs = [str(s) for s in sources] if sources is not None else [""] * len(identities)
    if len(srcs) != len(identities):
        raise IndexError_(f"add: {len(srcs)} sources for {len(identities)} identities")
    thumbs = list(thumbnails) if thumbnails is not None else [None] * len(identities)
    if len(thumbs) != len(identities):
        raise IndexError_(f"add: {len(thumbs)} thumbnails for {len(identities)} identities")
    bad_t = [t for t in thumbs if t is not None and not (isinstance(t, str) and THUMB_NAME.match(t))]
    if bad_t:
        raise IndexError_(f"add: thumbnail names must come from put_thumbnail(), got {bad_t[:3]!r}")
    bad = [i for i in identities if not isinstance(i, str) or not i]
    if bad:
        raise IndexError_(f"add: identities must be non-empty strings, got {bad[:3]!r}")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norm, 1e-12), srcs, thumbs


def _listed(names: Sequence[str]) -> str:
    names = list(names)
    more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
    return f"{', '.join(names[:5])}{more}"


class GalleryStore:
    """Base of every gallery store; subclasses implement the storage, this class the shared rules.

    Subclasses set ``location`` (what messages name: a folder, a URI) and
    ``info`` (model_hash, model, aligner, embedding_dim, dtype, generation,
    created, updated) and implement the methods that raise NotImplementedError.
    """

    kind = "store"
    location: str
    info: dict[str, Any]

    # -- facts ------------------------------------------------------------------------
    @property
    def model_hash(self) -> str:
        return str(self.info["model_hash"])

    @property
    def generation(self) -> int:
        """The committed generation this object shows (each save adds one)."""
        return int(self.info.get("generation", 0))

    def committed_generation(self) -> int:
        """The generation committed now (cheap: a reader polls it to reload)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def identities(self) -> list[str]:
        raise NotImplementedError

    def images_of(self, identity: str) -> list[dict[str, Any]] | None:
        """``[{"source", "thumb"}]`` of an enrolled identity (row order), None if not enrolled."""
        raise NotImplementedError

    def has_thumbnail(self, name: str) -> bool:
        raise NotImplementedError

    def check_model(self, model_hash: str, model_path: str | os.PathLike | None = None) -> None:
        """Refuse a model other than the one that built the store."""
        if model_hash != self.model_hash:
            built = self.info.get("model", {}).get("path", "?")
            given = f" ({model_path})" if model_path else ""
            raise ModelMismatchError(
                f"index {self.location} was built by model {built} (sha256 {self.model_hash[:16]}...), "
                f"not by this model{given} (sha256 {model_hash[:16]}...). Embeddings of different models "
                "do not compare: use the model that built the index, or enroll a new index with this one"
            )

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.location, "store": self.kind, "rows": len(self), "identities": self.count_identities(),
            "thumbnails": self.count_thumbnails(),
            "embedding_dim": int(self.info["embedding_dim"]), "dtype": self.info["dtype"],
            "model_hash": self.model_hash, "model": self.info.get("model", {}),
            "aligner": self.info.get("aligner"), "generation": self.generation,
            "created": self.info.get("created"), "updated": self.info.get("updated"),
        }

    def count_thumbnails(self) -> int:
        raise NotImplementedError

    def count_identities(self) -> int:
        return len(self.identities())

    # -- thumbnails -------------------------------------------------------------------
    def put_thumbnail(self, image: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
        """Keep a JPEG copy of uint8 RGB ``image``; returns its name for :meth:`add`.
        Rows refer to it once :meth:`save` commits."""
        raise NotImplementedError

    def read_thumbnail(self, name: str) -> bytes:
        """The bytes of thumbnail ``name``, hashed on every read."""
        raise NotImplementedError

    def verify(self, thumbnails: bool = True) -> None:
        """Check now what is not checked yet (with ``thumbnails``: every stored image)."""
        raise NotImplementedError

    def verify_thumbnails(self, rows: Iterable[int] | None = None) -> None:
        """Check the thumbnails of ``rows`` (``Hit.row`` values; default all)."""
        raise NotImplementedError

    # -- changes ----------------------------------------------------------------------
    def add(self, identities: Sequence[str], embeddings: np.ndarray, sources: Sequence[str] | None = None,
            replace: bool = False, thumbnails: Sequence[str | None] | None = None) -> dict[str, int]:
        raise NotImplementedError

    def remove(self, identities: Sequence[str], missing_ok: bool = False) -> int:
        raise NotImplementedError

    def save(self) -> str:
        raise NotImplementedError

    def search(self, queries: np.ndarray, top_k: int = 10, **options) -> list[list[Hit]]:
        raise NotImplementedError

    # -- shared checks ----------------------------------------------------------------
    def _check_new(self, identities: Sequence[str], replace: bool, enrolled: set[str]) -> list[str]:
        """The enrolled ones among ``identities`` (an error unless ``replace``)."""
        present = sorted(set(identities) & enrolled)
        if present and not replace:
            raise IndexError_(f"identities already in {self.location}: {_listed(present)}; "
                              "pass --replace to re-enroll them, or remove them first")
        return present

    def _check_known(self, identities: Sequence[str], missing_ok: bool, enrolled: set[str]) -> None:
        unknown = sorted(set(identities) - enrolled)
        if unknown and not missing_ok:
            raise IndexError_(f"not in {self.location}: {_listed(unknown)}; see `c4s match info --identities`")

    def _check_queries(self, queries, top_k: int) -> np.ndarray:
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None]
        d = int(self.info["embedding_dim"])
        if q.ndim != 2 or q.shape[1] != d:
            raise IndexError_(f"search: queries must be [Q, {d}], got {q.shape}")
        if top_k < 1:
            raise IndexError_(f"search: top_k must be at least 1 (got {top_k})")
        return q
