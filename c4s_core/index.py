"""Gallery index (the folder store): kept as the short import path.

The code lives in :mod:`c4s_core.gallery`: the store contract
(:mod:`~c4s_core.gallery.base`), the folder format
(:mod:`~c4s_core.gallery.folder`), what it verifies
(:mod:`~c4s_core.gallery.integrity`) and its search backends
(:mod:`~c4s_core.gallery.search`).
"""

from .gallery.base import Hit, IndexError_, ModelMismatchError
from .gallery.folder import INDEX_FORMAT, THUMBS_DIR, GalleryIndex
from .gallery.search import BACKENDS, exact_search

__all__ = ["GalleryIndex", "Hit", "IndexError_", "ModelMismatchError", "INDEX_FORMAT", "exact_search",
           "THUMBS_DIR", "BACKENDS"]
