"""User-facing errors. The CLI turns every C4SError into a clean message."""

from __future__ import annotations


class C4SError(Exception):
    """Base for errors a user can act on; the message says what to fix."""


class UnknownComponentError(C4SError, KeyError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(C4SError):
    """Two plugins registered the same name for one kind."""


class RegistrationError(C4SError):
    """A plugin registered something that does not meet the contract."""


class ConfigError(C4SError, ValueError):
    """A config file, override or component option is invalid."""


class PluginLoadError(C4SError):
    """A plugin failed to import or register (raised only in strict mode)."""


class DataError(C4SError):
    """An input file or folder cannot be used; the message names it."""


class ImageReadError(DataError):
    """An image file is missing, empty, truncated, corrupt or not an image."""


class MissingDependencyError(C4SError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def missing_dependency(package: str, extra: str, what: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"{what} needs the '{package}' package, which is not installed. "
        f"Install it with: pip install 'clip4sketch[{extra}]'"
    )
