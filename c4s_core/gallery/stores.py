"""Gallery stores by location: ``--store URI`` resolved through the ``gallery_store`` registry.

A store location is a folder path (the default store) or ``SCHEME:REST``,
where ``SCHEME`` names a registered gallery store and ``REST`` is that store's
location, optionally followed by ``?key=value&...`` options validated by the
store's ``Config`` (an unknown key or bad value is an error naming it)::

    gallery/                                   folder store (``folder:gallery/`` says the same)
    milvus:galleries/mugshots.db?collection=g  Milvus Lite, a local file
    milvus:http://milvus.internal:19530?collection=g   a Milvus server or cluster

A registered store class (hook ``register_gallery_stores``) is built with
its validated ``Config`` and must offer ``create(location, *, model_hash,
embedding_dim, dtype, model, aligner, overwrite)`` and ``open(location, *,
mmap, verify)``, both returning a :class:`c4s_core.gallery.base.GalleryStore`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..config import ComponentConfig
from .base import GalleryStore, IndexError_
from .folder import GalleryIndex

__all__ = ["FolderStore", "parse_store", "open_store", "create_store"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.S)


class FolderConfig(ComponentConfig):
    """The folder store has no options: its location is the folder."""


class FolderStore:
    """A folder of hashed files (index.json, embeddings, ids, thumbnails); exact, int8, bf16 or FAISS search."""

    name = "folder"
    Config = FolderConfig

    def __init__(self, config: FolderConfig | None = None):
        self.config = config or FolderConfig()

    def create(self, location: str | Path, **kw: Any) -> GalleryIndex:
        return GalleryIndex.create(location, **kw)

    def open(self, location: str | Path, mmap: bool = False, verify: bool = False) -> GalleryIndex:
        return GalleryIndex.open(location, mmap=mmap, verify=verify)


def parse_store(uri: str | Path) -> tuple[str, str, dict[str, str]]:
    """``(store name, location, options)`` of a store URI (a plain path is the folder store)."""
    text = str(uri)
    if not text.strip():
        raise IndexError_("--store: empty; pass a gallery folder or SCHEME:LOCATION (see `c4s plugins --kind gallery_store`)")
    m = _SCHEME.match(text)
    if m is None or (len(m.group(1)) == 1):  # no scheme, or a Windows drive letter
        return "folder", text, {}
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "folder":
        return "folder", rest, {}
    options: dict[str, str] = {}
    if "?" in rest:
        rest, query = rest.rsplit("?", 1)
        try:
            options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            raise IndexError_(f"--store {text}: options after '?' must be key=value pairs joined by '&'") from None
    if not rest:
        raise IndexError_(f"--store {text}: no location after '{scheme}:'")
    return scheme, rest, options


def _backend(uri: str | Path):
    from .. import get_registries

    name, location, options = parse_store(uri)
    reg = get_registries().gallery_store
    if name not in reg and name == "folder":  # the folder store plugin blocked: the core still reads folders
        return FolderStore(), location
    return reg.build(name, options), location


def open_store(uri: str | Path, mmap: bool = False, verify: bool = False) -> GalleryStore:
    """Open the gallery store at ``uri`` (``mmap``: folder stores map embeddings lazily)."""
    backend, location = _backend(uri)
    return backend.open(location, mmap=mmap, verify=verify)


def create_store(uri: str | Path, **kw: Any) -> GalleryStore:
    """Create an empty gallery store at ``uri``; ``kw`` as :meth:`GalleryIndex.create`."""
    backend, location = _backend(uri)
    return backend.create(location, **kw)
