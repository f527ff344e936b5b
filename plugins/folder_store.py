"""Built-in gallery store ``folder``: the folder index (``c4s_core.gallery.folder``).

The default store: a plain path passed to ``--store`` (or ``--index``) is a
folder store. Essential: ``c4s match`` and ``c4s serve`` rely on it.
"""

from __future__ import annotations

from c4s_core import hookimpl
from c4s_core.gallery.stores import FolderStore


@hookimpl
def register_gallery_stores(register):
    register(FolderStore)
