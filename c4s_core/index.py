"""Gallery index: enrolled face embeddings with identities, searched exactly.

An index is a folder::

    G/index.json           format, model hash and facts, dtype, counts, file names, sha256s
    G/embeddings-<n>.npy   float16 or float32 [rows, D], L2-normalised
    G/ids-<n>.json         one {"identity", "source"[, "thumb"]} per row
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
the file; nothing damaged is searched, shown or carried into a new generation):

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

Search backends (scores are dot products: cosine, as rows are unit length;
identities score by their best image):

- ``exact`` (default): float32, over ``chunk_size`` rows at a time with
  ``argpartition`` keeping only candidates, so memory stays
  ``O(queries x (chunk_size + k x m))`` where ``m`` is the most images any
  identity has. Memory-bound: one query reads the whole gallery.
- ``bf16``: the gallery cast once to bfloat16 (torch; half the bytes per query,
  AMX/AVX512-BF16 matrix units where the CPU has them), the best
  ``rescore x k`` rows per query re-scored in float32. Scores are exact; the
  ranking differs from ``exact`` only where bfloat16 rounding (about 3
  significant digits) pushes a true top-k row below the candidates.
- ``faiss`` (``pip install faiss-cpu``): a FAISS index from ``faiss_factory``
  (``Flat``: exact; ``HNSW32``, ``IVF1024,Flat``...: approximate, sub-linear),
  built once per opened index and kept in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import DataError, MissingDependencyError

__all__ = ["GalleryIndex", "Hit", "IndexError_", "ModelMismatchError", "INDEX_FORMAT", "exact_search",
           "THUMBS_DIR"]

INDEX_FORMAT = "c4s-gallery-index"
INDEX_FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
THUMBS_DIR = "thumbs"
_THUMB_NAME = re.compile(r"^[0-9a-f]{32}\.jpg$")
Backend = Literal["exact", "bf16", "faiss"]
BACKENDS = ("exact", "bf16", "faiss")


class IndexError_(DataError):  # noqa: N801 - IndexError is a builtin
    """A gallery index is missing, damaged, or cannot take this change."""


class ModelMismatchError(IndexError_):
    """The model is not the one that built the index."""


@dataclass(frozen=True)
class Hit:
    identity: str
    score: float
    source: str  # the best-matching enrolled image
    row: int = -1  # that image's row in the index (as opened; rows renumber on save)

    def as_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "score": round(float(self.score), 6), "source": self.source}


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the generation check remains
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


_HINT = "the index is damaged: restore the folder from a backup or re-enroll it"
# sha256 of the files this process hashed and found as index.json says, by (path, device, inode, size,
# mtime): an unchanged file is not hashed twice (serve's reloads, repeated opens of a large gallery)
_VERIFIED: dict[tuple, str] = {}


def _damaged(path: Path, what: str) -> IndexError_:
    return IndexError_(f"{path}: {what}; {_HINT}")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple:
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_file(path: Path, want: str, key: tuple | None = None,
                mismatch: str = "sha256 differs from index.json") -> None:
    """Refuse ``path`` unless its sha256 starts with ``want``; hashed once per process while unchanged.
    ``key``: the file's stat key when it was opened (a file changed since then is refused)."""
    try:
        now = _stat_key(path)
    except OSError as err:
        raise _damaged(path, f"cannot read it ({err.strerror or err})") from None
    if key is not None and now != key:
        raise IndexError_(f"{path} changed since the index was opened; open the index again")
    got = _VERIFIED.get(now) or _file_sha256(path)
    if not want or not got.startswith(want):
        raise _damaged(path, mismatch)
    _VERIFIED[now] = got  # only what matched is remembered


def _npy_from_buffer(buf: np.ndarray, path: Path) -> np.ndarray:
    """The array in the .npy bytes ``buf`` (uint8), sharing them (no second copy of a large gallery)."""
    import io

    from numpy.lib import format as npf

    head = io.BytesIO(buf[:1 << 20].tobytes())  # the header only
    try:
        version = npf.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = npf.read_array_header_2_0(head)
        else:
            raise ValueError(f"npy format version {version} is not one c4s writes")
    except ValueError as err:
        raise _damaged(path, f"not a readable .npy array ({err})") from None
    if dtype.hasobject:
        raise _damaged(path, "holds Python objects, not embeddings")
    count = int(np.prod(shape, dtype=np.int64))
    offset = head.tell()
    if offset + count * dtype.itemsize != len(buf):
        raise _damaged(path, f"{len(buf)} bytes where its header says {offset + count * dtype.itemsize}")
    return buf[offset:].view(dtype).reshape(shape, order="F" if fortran else "C")


class GalleryIndex:
    """Rows of (embedding, identity, source image) built by one model."""

    def __init__(self, folder: Path, info: dict[str, Any], embeddings: np.ndarray, rows: list[dict[str, str]],
                 unverified: tuple[Path, str, tuple] | None = None):
        self.folder = Path(folder)
        self.info = info
        self.embeddings = embeddings
        # (file, sha256, stat at open) of memory-mapped embeddings not yet hashed: done on first use
        self._unverified = unverified
        self.rows = rows
        self._opened_generation = int(info.get("generation", 0))
        self._cache: dict[str, Any] = {}  # backend structures of these embeddings (bf16 copy, FAISS index)

    @property
    def embeddings(self) -> np.ndarray:
        """The rows' vectors (memory-mapped ones are verified here, on first use)."""
        if self._unverified is not None:
            path, sha, key = self._unverified
            _check_file(path, sha, key)
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
        if dtype not in DTYPES:
            raise IndexError_(f"index dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if folder.exists() and not folder.is_dir():
            raise IndexError_(f"{folder} exists and is not a folder")
        if (folder / "index.json").exists() and not overwrite:
            raise IndexError_(f"{folder} already holds an index; add identities with `c4s match add`, "
                              "or pass --overwrite to start again")
        if folder.is_dir() and not (folder / "index.json").exists() and any(
                p for p in folder.iterdir() if p.name != ".lock"):
            raise IndexError_(f"{folder} is a non-empty folder without an index; choose an empty or new folder")
        from . import __version__

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
        if info.get("format") != INDEX_FORMAT:
            raise IndexError_(f"{js} is not a c4s gallery index (format {info.get('format')!r})")
        if int(info.get("format_version", 0)) > INDEX_FORMAT_VERSION:
            raise IndexError_(f"{js} has format_version {info['format_version']}; this c4s reads up to "
                              f"{INDEX_FORMAT_VERSION}: upgrade c4s")
        return info

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
            raise _damaged(js, f"lacks {', '.join(lacking)}")
        emb_path, ids_path = folder / info["embeddings_file"], folder / info["ids_file"]
        for p in (emb_path, ids_path):
            if not p.is_file():
                raise IndexError_(f"{folder}: {p.name} named by index.json is missing; the index is damaged, "
                                  "re-enroll it")
        try:
            raw_ids = ids_path.read_bytes()
        except OSError as err:
            raise _damaged(ids_path, f"cannot read it ({err.strerror or err})") from None
        ids_ok = _sha256(raw_ids) == info["ids_sha256"]
        try:
            rows = json.loads(raw_ids)["rows"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) and "identity" in r for r in rows):
                raise ValueError("rows must be a list of {identity, source} objects")
        except (ValueError, KeyError, TypeError) as err:
            raise _damaged(ids_path, "sha256 differs from index.json" if not ids_ok else f"not readable ({err})") from None
        unverified = None
        if mmap:
            try:
                key = _stat_key(emb_path)
                emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as err:
                raise _damaged(emb_path, f"not a readable .npy array ({err})") from None
            if isinstance(emb, np.memmap) and key[3] != emb.offset + emb.nbytes:
                raise _damaged(emb_path, f"{key[3]} bytes where its header says {emb.offset + emb.nbytes}")
            unverified = (emb_path, str(info["embeddings_sha256"]), key)
        else:
            try:
                with open(emb_path, "rb") as f:
                    # numpy memory (huge pages where the OS has them) is filled ~5x faster than a bytearray
                    buf = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
                    got = f.readinto(memoryview(buf))
            except OSError as err:
                raise _damaged(emb_path, f"cannot read it ({err.strerror or err})") from None
            if got != len(buf) or _sha256(buf) != info["embeddings_sha256"]:
                raise _damaged(emb_path, "sha256 differs from index.json")
            emb = _npy_from_buffer(buf, emb_path)
        n, d = int(info["rows"]), int(info["embedding_dim"])
        if emb.shape != (n, d) or len(rows) != n or str(emb.dtype) != info["dtype"]:
            raise IndexError_(f"{folder}: index files disagree (embeddings {emb.shape} {emb.dtype}, "
                              f"{len(rows)} ids, index.json says {n} x {d} {info['dtype']}); re-enroll it")
        if not ids_ok:
            raise _damaged(ids_path, "sha256 differs from index.json")
        gi = cls(folder, info, emb, rows, unverified=unverified)
        if verify:
            gi.verify(thumbnails=True)
        return gi

    # -- facts ----------------------------------------------------------------------------
    @property
    def model_hash(self) -> str:
        return str(self.info["model_hash"])

    def __len__(self) -> int:
        return len(self.rows)

    def identities(self) -> list[str]:
        return sorted({r["identity"] for r in self.rows})

    def check_model(self, model_hash: str, model_path: str | os.PathLike | None = None) -> None:
        """Refuse a model other than the one that built the index."""
        if model_hash != self.model_hash:
            built = self.info.get("model", {}).get("path", "?")
            given = f" ({model_path})" if model_path else ""
            raise ModelMismatchError(
                f"index {self.folder} was built by model {built} (sha256 {self.model_hash[:16]}...), "
                f"not by this model{given} (sha256 {model_hash[:16]}...). Embeddings of different models "
                "do not compare: use the model that built the index, or enroll a new index with this one"
            )

    def summary(self) -> dict[str, Any]:
        ids = [r["identity"] for r in self.rows]
        return {
            "index": str(self.folder), "rows": len(self.rows), "identities": len(set(ids)),
            "thumbnails": sum(1 for r in self.rows if r.get("thumb")),
            "embedding_dim": int(self.info["embedding_dim"]), "dtype": self.info["dtype"],
            "model_hash": self.model_hash, "model": self.info.get("model", {}),
            "aligner": self.info.get("aligner"), "generation": int(self.info.get("generation", 0)),
            "created": self.info.get("created"), "updated": self.info.get("updated"),
        }

    # -- thumbnails -----------------------------------------------------------------------
    def put_thumbnail(self, image: np.ndarray, max_side: int = 512, quality: int = 90) -> str:
        """Store a JPEG copy of uint8 RGB ``image`` (shrunk to ``max_side``, never
        enlarged) under ``thumbs/``; returns its name for :meth:`add`. Written
        now, named by content: rows refer to it once :meth:`save` commits."""
        import io

        from PIL import Image

        from .data.io import atomic_write_bytes

        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise IndexError_(f"put_thumbnail: expected a uint8 HxWx3 RGB image, got {a.dtype} {a.shape}")
        if max_side < 16:
            raise IndexError_(f"put_thumbnail: max_side must be at least 16, got {max_side}")
        im = Image.fromarray(np.ascontiguousarray(a))
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(quality))
        data = buf.getvalue()
        name = f"{_sha256(data)[:32]}.jpg"
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
        if not name or not _THUMB_NAME.match(str(name)):
            return None
        path = self.folder / THUMBS_DIR / name
        return path if path.is_file() else None

    def read_thumbnail(self, name: str) -> bytes:
        """The bytes of thumbnail ``name`` (a row's ``thumb``), hashed on every read: a
        file whose content no longer matches its name is an :class:`IndexError_`."""
        if not isinstance(name, str) or not _THUMB_NAME.match(name):
            raise IndexError_(f"{name!r} is not a thumbnail name of this index")
        path = self.folder / THUMBS_DIR / name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise _damaged(path, f"thumbnail missing or damaged ({err.strerror or err})") from None
        if _sha256(data)[:32] != name[:32]:
            raise _damaged(path, "thumbnail missing or damaged (its content does not match its name)")
        return data

    def verify_thumbnails(self, rows: Iterable[int] | None = None) -> None:
        """Check the thumbnails that ``rows`` (default: all) name against their content
        hashes; each unchanged file is hashed once per process."""
        picked = self.rows if rows is None else [self.rows[int(r)] for r in rows if 0 <= int(r) < len(self.rows)]
        for name in sorted({r["thumb"] for r in picked if r.get("thumb")}):
            path = self.folder / THUMBS_DIR / str(name)
            if not _THUMB_NAME.match(str(name)) or not path.is_file():
                raise _damaged(path, "thumbnail missing or damaged (named by a row, but no such file)")
            _check_file(path, name[:32], mismatch="thumbnail missing or damaged (its content does not match its name)")

    def _remove_unused_thumbnails(self) -> None:
        tdir = self.folder / THUMBS_DIR
        if not tdir.is_dir():
            return
        used = {r.get("thumb") for r in self.rows}
        for p in tdir.iterdir():
            if p.name not in used and _THUMB_NAME.match(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- changes --------------------------------------------------------------------------
    def add(self, identities: Sequence[str], embeddings: np.ndarray, sources: Sequence[str] | None = None,
            replace: bool = False, thumbnails: Sequence[str | None] | None = None) -> dict[str, int]:
        """Append rows. An identity already enrolled is an error unless
        ``replace`` (its old rows are dropped first). ``thumbnails``: per row,
        a name returned by :meth:`put_thumbnail`, or None."""
        emb = np.asarray(embeddings, np.float32)
        d = int(self.info["embedding_dim"])
        if emb.ndim != 2 or emb.shape[1] != d or len(emb) != len(identities):
            raise IndexError_(f"add: expected embeddings [{len(identities)}, {d}], got {emb.shape}")
        if not np.isfinite(emb).all():
            raise IndexError_("add: embeddings contain NaN or inf")
        sources = list(sources) if sources is not None else [""] * len(identities)
        thumbs = list(thumbnails) if thumbnails is not None else [None] * len(identities)
        if len(thumbs) != len(identities):
            raise IndexError_(f"add: {len(thumbs)} thumbnails for {len(identities)} identities")
        bad_t = [t for t in thumbs if t is not None and not (isinstance(t, str) and _THUMB_NAME.match(t))]
        if bad_t:
            raise IndexError_(f"add: thumbnail names must come from put_thumbnail(), got {bad_t[:3]!r}")
        bad = [i for i in identities if not isinstance(i, str) or not i]
        if bad:
            raise IndexError_(f"add: identities must be non-empty strings, got {bad[:3]!r}")
        new = set(identities)
        present = sorted(new & set(self.identities()))
        removed = 0
        if present:
            if not replace:
                more = f" (+{len(present) - 5} more)" if len(present) > 5 else ""
                raise IndexError_(f"identities already in {self.folder}: {', '.join(present[:5])}{more}; "
                                  "pass --replace to re-enroll them, or remove them first")
            removed = self.remove(present)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norm, 1e-12)
        self.embeddings = np.concatenate([np.asarray(self.embeddings), emb.astype(self.info["dtype"])])
        self._cache.clear()
        self.rows = self.rows + [
            {"identity": i, "source": str(s), **({"thumb": t} if t else {})}
            for i, s, t in zip(identities, sources, thumbs, strict=True)
        ]
        return {"rows_added": len(emb), "identities_added": len(new), "rows_replaced": removed}

    def remove(self, identities: Sequence[str], missing_ok: bool = False) -> int:
        """Drop every row of ``identities``; unknown names are an error unless ``missing_ok``."""
        gone = set(identities)
        unknown = sorted(gone - set(self.identities()))
        if unknown and not missing_ok:
            raise IndexError_(f"not in {self.folder}: {', '.join(unknown[:5])}"
                              f"{f' (+{len(unknown) - 5} more)' if len(unknown) > 5 else ''}; "
                              "see `c4s match info --identities`")
        keep = [k for k, r in enumerate(self.rows) if r["identity"] not in gone]
        removed = len(self.rows) - len(keep)
        self.embeddings = np.asarray(self.embeddings)[keep]
        self._cache.clear()
        self.rows = [self.rows[k] for k in keep]
        return removed

    def save(self) -> Path:
        """Commit atomically: new generation files, then index.json, then clean up."""
        folder = self.folder
        _ = self.embeddings  # memory-mapped rows carried over: verified before new hashes are written
        with _lock(folder):
            if (folder / "index.json").is_file():
                on_disk = int(self.read_info(folder).get("generation", 0))
                if on_disk != self._opened_generation:
                    raise IndexError_(f"{folder} was changed by another process since it was opened "
                                      f"(generation {on_disk}, opened {self._opened_generation}); run the command again")
            from .data.io import atomic_write_bytes

            gen = self._opened_generation + 1
            emb = np.ascontiguousarray(np.asarray(self.embeddings, self.info["dtype"]))
            emb_bytes = _npy_bytes(emb)
            ids_bytes = json.dumps({"rows": self.rows}, indent=0).encode()
            info = dict(self.info)
            info.update(
                generation=gen, rows=len(self.rows), identities=len({r["identity"] for r in self.rows}),
                embeddings_file=f"embeddings-{gen}.npy", ids_file=f"ids-{gen}.json",
                embeddings_sha256=_sha256(emb_bytes), ids_sha256=_sha256(ids_bytes),
                updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            atomic_write_bytes(folder / info["embeddings_file"], emb_bytes)
            atomic_write_bytes(folder / info["ids_file"], ids_bytes)
            atomic_write_bytes(folder / "index.json", json.dumps(info, indent=2).encode())  # the commit
            for p in folder.iterdir():
                if p.name.startswith(("embeddings-", "ids-")) and p.name not in (
                        info["embeddings_file"], info["ids_file"]):
                    with contextlib.suppress(OSError):
                        p.unlink()
            self._remove_unused_thumbnails()
            self.info = info
            self.embeddings = emb
            self._cache.clear()
            self._opened_generation = gen
        return folder

    # -- search ---------------------------------------------------------------------------
    def _bf16_search(self, q: np.ndarray, k: int, chunk_size: int, rescore: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            import torch
        except ImportError:
            raise MissingDependencyError("search backend 'bf16' needs torch; use --backend exact") from None
        gal = self._cache.get("bf16")
        if gal is None:  # cast chunk by chunk: never a float32 copy of the whole gallery
            gal = torch.cat([torch.from_numpy(c).to(torch.bfloat16) for c in _chunks_f32(self.embeddings, 1 << 18)])
            self._cache["bf16"] = gal
        n = len(gal)
        m = min(n, max(k * rescore, k + 16))
        qb = torch.from_numpy(q).to(torch.bfloat16)
        with torch.inference_mode():
            if len(q) == 1:  # a matrix-vector product reads the gallery once, fastest for one query
                cand = torch.topk(torch.mv(gal, qb[0]).float(), m).indices[None]
            else:
                best_s = best_r = None
                for start in range(0, n, chunk_size):
                    s = (qb @ gal[start:start + chunk_size].T).float()
                    r = torch.arange(start, start + s.shape[1]).expand_as(s)
                    if best_s is not None:
                        s, r = torch.cat([best_s, s], 1), torch.cat([best_r, r], 1)
                    top = torch.topk(s, min(m, s.shape[1]), dim=1).indices
                    best_s, best_r = s.gather(1, top), r.gather(1, top)
                cand = best_r
        rows = cand.numpy().astype(np.int64)
        # exact float32 scores of the candidates (each row read once), then the best k of them
        uniq, pos = np.unique(rows, return_inverse=True)
        vec = np.asarray(self.embeddings[uniq], np.float32)
        scores = np.einsum("qkd,qd->qk", vec[pos.reshape(rows.shape)], q)
        part = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        return _sorted(np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1))

    def _faiss_search(self, q: np.ndarray, k: int, factory: str, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _import_faiss()
        index = self._cache.get(("faiss", factory))
        if index is None:
            d = int(self.info["embedding_dim"])
            try:
                index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as err:
                raise IndexError_(f"faiss_factory {factory!r} is not a FAISS index description: "
                                  f"{str(err).strip().splitlines()[-1]}") from None
            if not index.is_trained:  # IVF: k-means on (a sample of) the gallery
                n_train = min(len(self.embeddings), 256 * max(1, getattr(index, "nlist", 1)))
                pick = np.random.default_rng(0).choice(len(self.embeddings), n_train, replace=False)
                index.train(np.asarray(self.embeddings[np.sort(pick)], np.float32))
            for c in _chunks_f32(self.embeddings, 1 << 18):
                index.add(np.ascontiguousarray(c))
            self._cache[("faiss", factory)] = index
        if hasattr(index, "nprobe"):
            index.nprobe = nprobe
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = max(nprobe, k)
        scores, rows = index.search(np.ascontiguousarray(q), int(k))
        ok = rows >= 0  # FAISS pads with -1 when it finds fewer than k
        scores = np.where(ok, scores, -np.inf).astype(np.float32)
        return _sorted(scores, rows.astype(np.int64))

    def _identity_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(identities, row -> identity code, images per identity), cached per ``rows`` list
        (add and remove make a new list), so repeated searches skip the sort."""
        key = (id(self.rows), len(self.rows))
        cached = getattr(self, "_codes_cache", None)
        if cached is None or cached[0] != key or cached[1] is not self.rows:
            cached = (key, self.rows, _codes(self.rows))
            self._codes_cache = cached
        return cached[2]

    def search(self, queries: np.ndarray, top_k: int = 10, chunk_size: int = 65536,
               backend: Backend = "exact", faiss_factory: str = "Flat", faiss_nprobe: int = 16,
               rescore: int = 4) -> list[list[Hit]]:
        """Top-``top_k`` identities per query (best image per identity), best first.
        ``backend``: exact, bf16 or faiss (see the module docstring)."""
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None]
        d = int(self.info["embedding_dim"])
        if q.ndim != 2 or q.shape[1] != d:
            raise IndexError_(f"search: queries must be [Q, {d}], got {q.shape}")
        if top_k < 1 or chunk_size < 1:
            raise IndexError_(f"search: top_k and chunk_size must be at least 1 (got {top_k}, {chunk_size})")
        if len(self.rows) == 0:
            return [[] for _ in range(len(q))]
        uniq, codes, counts = self._identity_codes()
        # the k-th best identity's best row ranks at most (k-1)*m + 1 among rows
        keep = min(len(self.rows), top_k * int(counts.max()))
        if backend == "faiss":
            scores, rows = self._faiss_search(q, keep, faiss_factory, faiss_nprobe)
        elif backend == "exact":
            scores, rows = exact_search(self.embeddings, q, keep, chunk_size)
        elif backend == "bf16":
            scores, rows = self._bf16_search(q, keep, chunk_size, rescore)
        else:
            raise IndexError_(f"search backend {backend!r} is not one of {', '.join(BACKENDS)}")
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
                hits.append(Hit(str(uniq[c]), float(s), self.rows[r]["source"], int(r)))
                if len(hits) == top_k:
                    break
            out.append(hits)
        return out


def _chunks_f32(embeddings: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(embeddings), chunk_size):
        yield np.asarray(embeddings[start:start + chunk_size], np.float32)


def _sorted(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, -scores), axis=1) if scores.size else np.zeros_like(rows)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _codes(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.array([r["identity"] for r in rows], dtype=object)
    uniq, codes, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return uniq, codes.reshape(-1), counts


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int, chunk_size: int = 65536
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by dot product, sorted (score desc, row asc): ``(scores, rows)``,
    each ``[Q, k]``. Reads ``chunk_size`` rows at a time (works on memmaps)."""
    q = np.asarray(queries, np.float32)
    n = len(embeddings)
    k = min(k, n)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, chunk_size):
        block = np.asarray(embeddings[start:start + chunk_size], np.float32)
        s = q @ block.T
        rows = np.broadcast_to(np.arange(start, start + len(block)), s.shape)
        s = np.concatenate([best_s, s], axis=1)
        rows = np.concatenate([best_r, rows], axis=1)
        if s.shape[1] > k:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(s, part, axis=1)
            rows = np.take_along_axis(rows, part, axis=1)
        best_s, best_r = s, rows
    return _sorted(best_s, best_r)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(
            "search backend 'faiss' needs the 'faiss' package, which is not installed. "
            "Install it with: pip install faiss-cpu (or faiss-gpu), or use --backend exact"
        ) from None
    return faiss
