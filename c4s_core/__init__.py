"""c4s: CLIP4Sketch as a plugin framework.

Plugins need only ``import c4s_core`` for ``hookimpl`` and the base classes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .config import C4SModel, ComponentConfig, ComponentSpec
from .errors import C4SError
from .hookspecs import hookimpl

try:
    __version__ = version("clip4sketch")
except PackageNotFoundError:  # source tree, not installed
    __version__ = "0.0.0+source"

__all__ = [
    "__version__",
    "hookimpl",
    "C4SError",
    "C4SModel",
    "ComponentConfig",
    "ComponentSpec",
    "get_registries",
]


def get_registries(reload: bool = False):
    """Registries of every component kind, loading plugins on first use."""
    from .plugins import get_registries as _get

    return _get(reload=reload)
