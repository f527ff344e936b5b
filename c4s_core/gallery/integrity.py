"""What a gallery folder trusts and when: hashes, locks, the ``.npy`` reader.

Every file an index names carries its sha256 (``index.json``); a file that
does not match is refused with its path named, and nothing damaged is
searched, shown or carried into a new generation. Hashing a large gallery is
one streamed pass; a process remembers the files it verified (path, device,
inode, size, mtime) so reopening an unchanged file does not hash it again.
See :mod:`c4s_core.gallery.folder` for which check runs at which step.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import IndexError_

__all__ = ["HINT", "damaged", "sha256_hex", "file_sha256", "stat_key", "check_file", "npy_bytes",
           "npy_from_buffer", "folder_lock", "VERIFIED"]

HINT = "the index is damaged: restore the folder from a backup or re-enroll it"
# sha256 of the files this process hashed and found as index.json says, by (path, device, inode, size,
# mtime): an unchanged file is not hashed twice (serve's reloads, repeated opens of a large gallery)
VERIFIED: dict[tuple, str] = {}


def damaged(path: Path, what: str) -> IndexError_:
    return IndexError_(f"{path}: {what}; {HINT}")


def sha256_hex(data) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def stat_key(path: Path) -> tuple:
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_file(path: Path, want: str, key: tuple | None = None,
               mismatch: str = "sha256 differs from index.json") -> None:
    """Refuse ``path`` unless its sha256 starts with ``want``; hashed once per process while unchanged.
    ``key``: the file's stat key when it was opened (a file changed since then is refused)."""
    from . import integrity  # looked up at call time, so a test can count the hashing

    try:
        now = stat_key(path)
    except OSError as err:
        raise damaged(path, f"cannot read it ({err.strerror or err})") from None
    if key is not None and now != key:
        raise IndexError_(f"{path} changed since the index was opened; open the index again")
    got = VERIFIED.get(now) or integrity.file_sha256(path)
    if not want or not got.startswith(want):
        raise damaged(path, mismatch)
    VERIFIED[now] = got  # only what matched is remembered


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def npy_from_buffer(buf: np.ndarray, path: Path) -> np.ndarray:
    """The array in the .npy bytes ``buf`` (uint8), sharing them (no second copy of a large gallery)."""
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
        raise damaged(path, f"not a readable .npy array ({err})") from None
    if dtype.hasobject:
        raise damaged(path, "holds Python objects, not embeddings")
    count = int(np.prod(shape, dtype=np.int64))
    offset = head.tell()
    if offset + count * dtype.itemsize != len(buf):
        raise damaged(path, f"{len(buf)} bytes where its header says {offset + count * dtype.itemsize}")
    return buf[offset:].view(dtype).reshape(shape, order="F" if fortran else "C")


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` while writing (no-op where fcntl is missing)."""
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
