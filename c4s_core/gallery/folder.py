"""The folder gallery store (the default): an index is a folder of hashed files.

::

    G/index.json           format, model hash and facts, dtype, counts, file names, sha256s
    G/embeddings-<n>.npy   float16 or float32 [rows, D], L2-normalised
    G/ids-<n>.json         one {"identity", "source"[, "thumb"]} per row
    G/int8-<e>-<f>.npz     optional cache: the int8 search codes of the embeddings whose
                           sha256 starts with <e> (<f>: the file's own sha256), written
                           on first int8 search, dropped with its generation
    G/thumbs/<sha>.jpg     optional: a copy of each enrolled image (at most
                           ``thumbnail_size`` px a side), named by its content hash
    G/.lock                taken while writing

``<n>`` is the generation: every save writes new data files, then replaces
``index.json`` atomically (the commit), then removes older generations. A
crash at any point leaves the previous index intact. A save also refuses if
another process committed since this one opened the index.

Thumbnails let a viewer (``c4s serve``) show gallery images from the index
alone, never from the ``source`` paths: :meth:`GalleryIndex.put_thumbnail`
writes one before the commit (content-addressed, so a crash leaves at most an
orphan file), rows name it, :meth:`GalleryIndex.thumbnail_path` resolves a
row's, and :meth:`GalleryIndex.save` removes the ones no row names.

Integrity: what is verified when (a mismatch is an :class:`IndexError_` naming
the file; nothing damaged is searched, shown or carried into a new generation;
the helpers are in :mod:`c4s_core.gallery.integrity`):

- every :meth:`GalleryIndex.open`: ``index.json`` (format, the fields it needs);
  ``ids-<n>.json`` against its sha256 (it is read whole anyway: ~100 bytes a
  row); the embeddings' ``.npy`` header (shape, dtype) against ``index.json`` and
  the file's size against header + rows x dim x itemsize (truncation, appended
  bytes). Thumbnails are not read.
- the embeddings' sha256: loaded (``mmap=False``), hashed in memory as read,
  before any use. Memory-mapped, hashed (streamed, one pass) the first time the
  rows are used (search, add, remove, save, :meth:`GalleryIndex.verify`), so
  ``c4s match info`` never reads them; a process remembers the files it verified
  (path, inode, size, mtime), so reopening an unchanged file (``c4s serve``'s
  reload, repeated opens) does not hash it again, and a file changed since the
  open is refused.
- thumbnails (named by their content's sha256): :meth:`GalleryIndex.read_thumbnail`
  hashes every read; :meth:`GalleryIndex.verify_thumbnails` checks the rows
  given (``c4s match search`` and ``c4s serve`` check those of the hits they
  return, once per file and process); ``open(verify=True)`` (``c4s match info
  --verify``) checks every file, embeddings and thumbnails.
- :meth:`GalleryIndex.save` (``add``/``remove``) writes new hashes only over
  verified data: ids verified at open, embeddings verified before the first byte
  is written; thumbnails carried over keep their content names (save does not
  re-hash them, so a damaged one stays visible to ``info --verify``).

An index belongs to one model: :meth:`GalleryIndex.check_model` refuses any
other (a different file hash), since embeddings of two models do not compare.
Search backends (exact, int8, bf16, faiss) are in :mod:`c4s_core.gallery.search`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import integrity as ig
from .base import (
    STORE_DTYPES,
    THUMB_NAME,
    GalleryStore,
    Hit,
    IndexError_,
    check_rows,
    encode_thumbnail,
)
from .search import BACKENDS, Int8Codes, bf16_search, exact_search, faiss_search, int8_search

__all__ = ["GalleryIndex", "INDEX_FORMAT", "INDEX_FORMAT_VERSION", "THUMBS_DIR", "Backend"]

INDEX_FORMAT = "c4s-gallery-index"
INDEX_FORMAT_VERSION = 1
THUMBS_DIR = "thumbs"
Backend = Literal["exact", "int8", "bf16", "faiss"]


class GalleryIndex(GalleryStore):
    """Rows of (embedding, identity, source image) built by one model, in a folder."""

    kind = "folder"

    def __init__(self, folder: Path, info: dict[str, Any], embeddings: np.ndarray, rows: list[dict[str, str]],
                 unverified: tuple[Path, str, tuple] | None = None):
        self.folder = Path(folder)
        self.location = str(self.folder)
        self.info = info
        self.embeddings = embeddings
        # (file, sha256, stat at open) of memory-mapped embeddings not yet hashed: done on first use
        self._unverified = unverified
        self.rows = rows
        self._opened_generation = int(info.get("generation", 0))
        self._cache: dict[Any, Any] = {}  # backend structures of these embeddings (int8 codes, bf16, FAISS)
        self._dirty = False  # rows changed since the committed generation (add/remove before save)

    @property
    def embeddings(self) -> np.ndarray:
        """The rows' vectors (memory-mapped ones are verified here, on first use)."""
        if self._unverified is not None:
            path, sha, key = self._unverified
            ig.check_file(path, sha, key)
            self._unverified = None
        return self._embeddings

    @embeddings.setter
    def embeddings(self, value: np.ndarray) -> None:
        self._embeddings = value
        self._unverified = None

    def verify(self, thumbnails: bool = True) -> None:
        """Check now what is not checked yet: the embeddings' sha256 (memory-mapped) and,
        with ``thumbnails``, every thumbnail a row names."""
        _ = self.embeddings
        if thumbnails:
            self.verify_thumbnails()

    # -- create / open --------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, *, model_hash: str, embedding_dim: int, dtype: str = "float32",
               model: dict[str, Any] | None = None, aligner: dict[str, Any] | None = None,
               overwrite: bool = False) -> GalleryIndex:
        """A new, empty index (written by :meth:`save`). An existing index is an
        error unless ``overwrite``."""
        folder = Path(folder)
        if dtype not in STORE_DTYPES:
            raise IndexError_(f"index dtype {dtype!r} is not one of {', '.join(STORE_DTYPES)}")
        if folder.exists() and not folder.is_dir():
            raise IndexError_(f"{folder} exists and is not a folder")
        if (folder / "index.json").exists() and not overwrite:
            raise IndexError_(f"{folder} already holds an index; add identities with `c4s match add`, "
                              "or pass --overwrite to start again")
        if folder.is_dir() and not (folder / "index.json").exists() and any(
                p for p in folder.iterdir() if p.name != ".lock"):
            raise IndexError_(f"{folder} is a non-empty folder without an index; choose an empty or new folder")
        from .. import __version__

        info = {
            "format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "model_hash": model_hash,
            "model": dict(model or {}), "aligner": aligner, "embedding_dim": int(embedding_dim), "dtype": dtype,
            "generation": int(json.loads((folder / "index.json").read_text())["generation"])
            if overwrite and (folder / "index.json").exists() else 0,
            "c4s_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return cls(folder, info, np.zeros((0, int(embedding_dim)), dtype), [])

    @classmethod
    def read_info(cls, folder: str | Path) -> dict[str, Any]:
        folder = Path(folder)
        js = folder / "index.json"
        if not js.is_file():
            raise IndexError_(f"{folder}: no gallery index here (index.json missing); "
                              "create one with `c4s match enroll`")
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
        except ValueError as err:
            raise IndexError_(f"{js} is not valid JSON: {err}") from None
        if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
            got = info.get("format") if isinstance(info, dict) else type(info).__name__
            raise IndexError_(f"{js} is not a c4s gallery index (format {got!r})")
        if int(info.get("format_version", 0)) > INDEX_FORMAT_VERSION:
            raise IndexError_(f"{js} has format_version {info['format_version']}; this c4s reads up to "
                              f"{INDEX_FORMAT_VERSION}: upgrade c4s")
        return info

    def committed_generation(self) -> int:
        return int(self.read_info(self.folder).get("generation", 0))

    @classmethod
    def open(cls, folder: str | Path, mmap: bool = False, verify: bool = False) -> GalleryIndex:
        """Open an index; ``mmap`` maps the embeddings read-only (search over
        large galleries without loading them; their sha256 is checked on first
        use); ``verify`` checks every file now, thumbnails included. See the
        module docstring for what is verified when."""
        folder = Path(folder)
        info = cls.read_info(folder)
        js = folder / "index.json"
        need = ("embeddings_file", "ids_file", "embeddings_sha256", "ids_sha256", "rows", "embedding_dim", "dtype")
        lacking = [k for k in need if k not in info]
        if lacking:
            raise ig.damaged(js, f"lacks {', '.join(lacking)}")
        emb_path, ids_path = folder / info["embeddings_file"], folder / info["ids_file"]
        for p in (emb_path, ids_path):
            if not p.is_file():
                raise IndexError_(f"{folder}: {p.name} named by index.json is missing; the index is damaged, "
                                  "re-enroll it")
        try:
            raw_ids = ids_path.read_bytes()
        except OSError as err:
            raise ig.damaged(ids_path, f"cannot read it ({err.strerror or err})") from None
        ids_ok = ig.sha256_hex(raw_ids) == info["ids_sha256"]
        try:
            rows = json.loads(raw_ids)["rows"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) and "identity" in r for r in rows):
                raise ValueError("rows must be a list of {identity, source} objects")
        except (ValueError, KeyError, TypeError) as err:
            raise ig.damaged(ids_path, "sha256 differs from index.json" if not ids_ok else f"not readable ({err})") from None
        unverified = None
        if mmap:
            try:
                key = ig.stat_key(emb_path)
                emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as err:
                raise ig.damaged(emb_path, f"not a readable .npy array ({err})") from None
            if isinstance(emb, np.memmap) and key[3] != emb.offset + emb.nbytes:
                raise ig.damaged(emb_path, f"{key[3]} bytes where its header says {emb.offset + emb.nbytes}")
            unverified = (emb_path, str(info["embeddings_sha256"]), key)
        else:
            try:
                with open(emb_path, "rb") as f:
                    # numpy memory (huge pages where the OS has them) is filled ~5x faster than a bytearray
                    buf = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
                    got = f.readinto(memoryview(buf))
            except OSError as err:
                raise ig.damaged(emb_path, f"cannot read it ({err.strerror or err})") from None
            if got != len(buf) or ig.sha256_hex(buf) != info["embeddings_sha256"]:
                raise ig.damaged(emb_path, "sha256 differs from index.json")
            emb = ig.npy_from_buffer(buf, emb_path)
        n, d = int(info["rows"]), int(info["embedding_dim"])
        if emb.shape != (n, d) or len(rows) != n or str(emb.dtype) != info["dtype"]:
            raise IndexError_(f"{folder}: index files disagree (embeddings {emb.shape} {emb.dtype}, "
                              f"{len(rows)} ids, index.json says {n} x {d} {info['dtype']}); re-enroll it")
        if not ids_ok:
            raise ig.damaged(ids_path, "sha256 differs from index.json")
        gi = cls(folder, info, emb, rows, unverified=unverified)
        if verify:
            gi.verify(thumbnails=True)
        return gi

    # -- facts ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def identities(self) -> list[str]:
        return sorted({r["identity"] for r in self.rows})

    def _by_identity(self) -> dict[str, list[int]]:
        """identity -> its rows, cached per ``rows`` list (add and remove make a new one)."""
        cached = self._cache.get("by_identity")
        if cached is None or cached[0] is not self.rows:
            by: dict[str, list[int]] = {}
            for r, row in enumerate(self.rows):
                by.setdefault(row["identity"], []).append(r)
            cached = (self.rows, by, {row["thumb"] for row in self.rows if row.get("thumb")})
            self._cache["by_identity"] = cached
        return cached[1]

    def images_of(self, identity: str) -> list[dict[str, Any]] | None:
        rows = self._by_identity().get(identity)
        if rows is None:
            return None
        return [{"source": self.rows[r].get("source", ""), "thumb": self.rows[r].get("thumb"), "row": r}
                for r in rows]

    def has_thumbnail(self, name: str) -> bool:
        self._by_identity()
        return name in self._cache["by_identity"][2]

    def count_thumbnails(self) -> int:
        return sum(1 for r in self.rows if r.get("thumb"))

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.pop("store")  # the folder summary is what it always was
        return out

    # -- thumbnails -----------------------------------------------------------------------
    def put_thumbnail(self, image: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
        """Store a JPEG copy of uint8 RGB ``image`` (shrunk to ``max_side``, never
        enlarged) under ``thumbs/``; returns its name for :meth:`add`. Written
        now, named by content: rows refer to it once :meth:`save` commits."""
        from ..data.io import atomic_write_bytes

        name, data = encode_thumbnail(image, max_side, quality)
        path = self.folder / THUMBS_DIR / name
        if not path.is_file():
            atomic_write_bytes(path, data)
        return name

    def thumbnail_path(self, row: int) -> Path | None:
        """The stored image of ``row`` (an int in ``range(len(self))``), or None
        when that row has none. Only names this index wrote resolve, inside
        ``thumbs/``; a row out of range is an :class:`IndexError_`."""
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= int(row) < len(self.rows):
            raise IndexError_(f"row {row!r} is not in this index (0..{len(self.rows) - 1})")
        name = self.rows[int(row)].get("thumb")
        if not name or not THUMB_NAME.match(str(name)):
            return None
        path = self.folder / THUMBS_DIR / name
        return path if path.is_file() else None

    def read_thumbnail(self, name: str) -> bytes:
        """The bytes of thumbnail ``name`` (a row's ``thumb``), hashed on every read: a
        file whose content no longer matches its name is an :class:`IndexError_`."""
        if not isinstance(name, str) or not THUMB_NAME.match(name):
            raise IndexError_(f"{name!r} is not a thumbnail name of this index")
        path = self.folder / THUMBS_DIR / name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ig.damaged(path, f"thumbnail missing or damaged ({err.strerror or err})") from None
        if ig.sha256_hex(data)[:32] != name[:32]:
            raise ig.damaged(path, "thumbnail missing or damaged (its content does not match its name)")
        return data

    def verify_thumbnails(self, rows: Iterable[int] | None = None) -> None:
        """Check the thumbnails that ``rows`` (default: all) name against their content
        hashes; each unchanged file is hashed once per process."""
        picked = self.rows if rows is None else [self.rows[int(r)] for r in rows if 0 <= int(r) < len(self.rows)]
        for name in sorted({r["thumb"] for r in picked if r.get("thumb")}):
            path = self.folder / THUMBS_DIR / str(name)
            if not THUMB_NAME.match(str(name)) or not path.is_file():
                raise ig.damaged(path, "thumbnail missing or damaged (named by a row, but no such file)")
            ig.check_file(path, name[:32], mismatch="thumbnail missing or damaged (its content does not match its name)")

    def _remove_unused_thumbnails(self) -> None:
        tdir = self.folder / THUMBS_DIR
        if not tdir.is_dir():
            return
        used = {r.get("thumb") for r in self.rows}
        for p in tdir.iterdir():
            if p.name not in used and THUMB_NAME.match(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- changes --------------------------------------------------------------------------
    def add(self, identities: Sequence[str], embeddings: np.ndarray, sources: Sequence[str] | None = None,
            replace: bool = False, thumbnails: Sequence[str | None] | None = None) -> dict[str, int]:
        """Append rows. An identity already enrolled is an error unless
        ``replace`` (its old rows are dropped first). ``thumbnails``: per row,
        a name returned by :meth:`put_thumbnail`, or None."""
        emb, sources, thumbs = check_rows(identities, embeddings, int(self.info["embedding_dim"]), sources, thumbnails)
        present = self._check_new(identities, replace, set(self._by_identity()))
        removed = self.remove(present) if present else 0
        self.embeddings = np.concatenate([np.asarray(self.embeddings), emb.astype(self.info["dtype"])])
        self._cache.clear()
        self._dirty = True
        self.rows = self.rows + [
            {"identity": i, "source": str(s), **({"thumb": t} if t else {})}
            for i, s, t in zip(identities, sources, thumbs, strict=True)
        ]
        return {"rows_added": len(emb), "identities_added": len(set(identities)), "rows_replaced": removed}

    def remove(self, identities: Sequence[str], missing_ok: bool = False) -> int:
        """Drop every row of ``identities``; unknown names are an error unless ``missing_ok``."""
        gone = set(identities)
        self._check_known(identities, missing_ok, set(self._by_identity()))
        keep = [k for k, r in enumerate(self.rows) if r["identity"] not in gone]
        removed = len(self.rows) - len(keep)
        self.embeddings = np.asarray(self.embeddings)[keep]
        self._cache.clear()
        self._dirty = True
        self.rows = [self.rows[k] for k in keep]
        return removed

    def save(self) -> Path:
        """Commit atomically: new generation files, then index.json, then clean up."""
        folder = self.folder
        _ = self.embeddings  # memory-mapped rows carried over: verified before new hashes are written
        with ig.folder_lock(folder):
            if (folder / "index.json").is_file():
                on_disk = int(self.read_info(folder).get("generation", 0))
                if on_disk != self._opened_generation:
                    raise IndexError_(f"{folder} was changed by another process since it was opened "
                                      f"(generation {on_disk}, opened {self._opened_generation}); run the command again")
            from ..data.io import atomic_write_bytes

            gen = self._opened_generation + 1
            emb = np.ascontiguousarray(np.asarray(self.embeddings, self.info["dtype"]))
            emb_bytes = ig.npy_bytes(emb)
            ids_bytes = json.dumps({"rows": self.rows}, indent=0).encode()
            info = dict(self.info)
            info.update(
                generation=gen, rows=len(self.rows), identities=len({r["identity"] for r in self.rows}),
                embeddings_file=f"embeddings-{gen}.npy", ids_file=f"ids-{gen}.json",
                embeddings_sha256=ig.sha256_hex(emb_bytes), ids_sha256=ig.sha256_hex(ids_bytes),
                updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            atomic_write_bytes(folder / info["embeddings_file"], emb_bytes)
            atomic_write_bytes(folder / info["ids_file"], ids_bytes)
            atomic_write_bytes(folder / "index.json", json.dumps(info, indent=2).encode())  # the commit
            keep_codes = f"int8-{info['embeddings_sha256'][:16]}-"
            for p in folder.iterdir():
                if (p.name.startswith(("embeddings-", "ids-")) and p.name not in (
                        info["embeddings_file"], info["ids_file"])) or (
                        p.name.startswith("int8-") and not p.name.startswith(keep_codes)):
                    with contextlib.suppress(OSError):
                        p.unlink()
            self._remove_unused_thumbnails()
            self.info = info
            self.embeddings = emb
            self._cache.clear()
            self._dirty = False
            self._opened_generation = gen
        return folder

    # -- search ---------------------------------------------------------------------------
    def _identity_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(identities, row -> identity code, images per identity), cached per ``rows`` list."""
        cached = self._cache.get("codes")
        if cached is None or cached[0] is not self.rows:
            ids = np.array([r["identity"] for r in self.rows], dtype=object)
            uniq, codes, counts = np.unique(ids, return_inverse=True, return_counts=True)
            cached = (self.rows, (uniq, codes.reshape(-1), counts))
            self._cache["codes"] = cached
        return cached[1]

    def int8_codes(self, prior: GalleryIndex | None = None) -> Int8Codes:
        """The int8 codes of these rows (kept until the rows change). Built on first use and
        written beside the index as ``int8-<embeddings sha>-<file sha>.npz``, so the next
        process (``c4s serve``'s restart) reads them instead of building them again (1M x
        512: ~13 s to build, ~1 s to read and hash). A cache file whose content does not
        match its name, or that does not fit, is rebuilt; a read-only folder only skips
        the write. ``prior``: an older generation of this gallery whose codes are built
        (``c4s serve``'s reload); if its vectors are this one's first rows (only appends since),
        its codes are kept and only the new rows are coded."""
        codes = self._cache.get("int8")
        if codes is not None:
            return codes
        emb = self.embeddings  # verified before anything is derived from it
        # only the committed generation's codes are written: pending add/remove rows have no sha yet
        key = "" if self._dirty else str(self.info.get("embeddings_sha256", ""))[:16]
        if key:
            for p in sorted(self.folder.glob(f"int8-{key}-*.npz")):
                try:
                    data = p.read_bytes()
                    if ig.sha256_hex(data)[:16] != p.stem.rsplit("-", 1)[1]:
                        raise ValueError("its content does not match its name")
                    codes = Int8Codes.from_bytes(data, emb.shape)
                    break
                except (OSError, ValueError) as err:  # a damaged cache: never used, rebuilt below
                    warnings.warn(f"{p}: int8 codes not used ({err}); building them again", stacklevel=2)
                    with contextlib.suppress(OSError):
                        p.unlink()
        if codes is None:
            codes = self._appended_to(prior, emb) or Int8Codes.build(emb)
            if key:
                from ..data.io import atomic_write_bytes

                data = codes.to_bytes()
                with contextlib.suppress(OSError):  # a read-only gallery: build per process, as before
                    atomic_write_bytes(self.folder / f"int8-{key}-{ig.sha256_hex(data)[:16]}.npz", data)
        self._cache["int8"] = codes
        return codes

    @staticmethod
    def _appended_to(prior: GalleryIndex | None, emb: np.ndarray) -> Int8Codes | None:
        """``prior``'s codes extended by the rows after its own, if ``prior``'s vectors are
        exactly (bit for bit) the first rows of ``emb``; else None. Codes are a function of
        each row alone, so these equal a full build."""
        old = None if prior is None else prior._cache.get("int8")
        if old is None:
            return None
        n0 = len(prior.rows)
        if not 0 < n0 <= len(emb) or not np.array_equal(np.asarray(prior.embeddings), emb[:n0]):
            return None
        return old.extended(emb[n0:]) if n0 < len(emb) else old

    def search(self, queries: np.ndarray, top_k: int = 10, chunk_size: int = 65536,
               backend: Backend = "exact", faiss_factory: str = "Flat", faiss_nprobe: int = 16,
               rescore: int = 4, candidates: int = 256) -> list[list[Hit]]:
        """Top-``top_k`` identities per query (best image per identity), best first.
        ``backend``: exact, int8, bf16 or faiss (see :mod:`c4s_core.gallery.search`)."""
        if top_k < 1 or chunk_size < 1:
            raise IndexError_(f"search: top_k and chunk_size must be at least 1 (got {top_k}, {chunk_size})")
        q = self._check_queries(queries, top_k)
        if backend not in BACKENDS:
            raise IndexError_(f"search backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if len(self.rows) == 0:
            return [[] for _ in range(len(q))]
        uniq, codes, counts = self._identity_codes()
        # the k-th best identity's best row ranks at most (k-1)*m + 1 among rows
        keep = min(len(self.rows), top_k * int(counts.max()))
        if backend == "faiss":
            scores, rows = faiss_search(self.embeddings, self._cache, q, keep, faiss_factory, faiss_nprobe)
        elif backend == "exact":
            scores, rows = exact_search(self.embeddings, q, keep, chunk_size)
        elif backend == "int8":
            scores, rows = int8_search(self.embeddings, self.int8_codes(), q, keep, candidates)
        else:
            scores, rows = bf16_search(self.embeddings, self._cache, q, keep, chunk_size, rescore)
        out = []
        for qi in range(len(q)):
            hits, seen = [], set()
            for s, r in zip(scores[qi], rows[qi], strict=True):
                if r < 0:  # FAISS found fewer rows
                    break
                c = codes[r]
                if c in seen:
                    continue
                seen.add(c)
                row = self.rows[r]
                hits.append(Hit(str(uniq[c]), float(s), row["source"], int(r), row.get("thumb")))
                if len(hits) == top_k:
                    break
            out.append(hits)
        return out
