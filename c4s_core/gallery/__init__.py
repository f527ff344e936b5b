"""Gallery stores: enrolled face embeddings with identities and thumbnails, searched.

- :mod:`.base`: the contract every store keeps (:class:`GalleryStore`, :class:`Hit`, errors);
- :mod:`.folder`: the default store, a folder of hashed files (:class:`GalleryIndex`);
- :mod:`.integrity`: what the folder store verifies, and how;
- :mod:`.search`: the folder store's search backends (exact, int8, bf16, faiss);
- :mod:`.stores`: store URIs (``--store``) resolved through the ``gallery_store`` registry.
"""

from .base import GalleryStore, Hit, IndexError_, ModelMismatchError
from .folder import INDEX_FORMAT, THUMBS_DIR, GalleryIndex
from .search import BACKENDS, Int8Codes, exact_search, int8_search
from .stores import FolderStore, create_store, open_store, parse_store

__all__ = ["GalleryStore", "GalleryIndex", "Hit", "IndexError_", "ModelMismatchError", "INDEX_FORMAT",
           "THUMBS_DIR", "BACKENDS", "Int8Codes", "exact_search", "int8_search", "FolderStore", "open_store",
           "create_store", "parse_store"]
