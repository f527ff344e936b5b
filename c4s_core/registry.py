"""Typed registries: name -> component class, with origin, aliases and Config.

One :class:`Registry` per component kind. Plugins fill them through the
``register_<kind>s(register)`` hooks; pipelines resolve names with
:meth:`Registry.get` and build components with :meth:`Registry.build`.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .config import ComponentConfig, ComponentSpec, validate
from .errors import DuplicateComponentError, RegistrationError, UnknownComponentError

# kind -> hook name. The order is the order of `c4s plugins` output.
KINDS: dict[str, str] = {
    "dataset": "register_datasets",
    "aligner": "register_aligners",
    "sketch_style": "register_sketch_styles",
    "conditioner": "register_conditioners",
    "sampler": "register_samplers",
    "generator": "register_generators",
    "backbone": "register_backbones",
    "head": "register_heads",
    "weights": "register_weights",
    "gallery_store": "register_gallery_stores",
}


@dataclass(frozen=True)
class Origin:
    """Where a component came from: plugin name, distribution and its version."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution:
            return f"plugin {self.plugin!r} ({self.distribution} {self.version or '?'})"
        return f"plugin {self.plugin!r}"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: type
    description: str
    config_cls: type[ComponentConfig]
    origin: Origin
    aliases: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "aliases": list(self.aliases),
            "description": self.description,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "plugin": self.origin.plugin,
            "distribution": self.origin.distribution,
            "version": self.origin.version,
        }


@dataclass
class Registry:
    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def register(
        self,
        cls: type,
        *,
        origin: Origin,
        name: str | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        description: str | None = None,
    ) -> Entry:
        if not inspect.isclass(cls):
            raise RegistrationError(
                f"{origin} registered {cls!r} as a {self.kind}: expected a class"
            )
        name = name or getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistrationError(
                f"{origin} registered {cls.__qualname__} as a {self.kind} without a name: "
                "set a `name` class attribute or pass name=..."
            )
        config_cls = getattr(cls, "Config", None)
        if not (inspect.isclass(config_cls) and issubclass(config_cls, BaseModel)):
            raise RegistrationError(
                f"{origin}: {self.kind} {name!r} ({cls.__qualname__}) has no pydantic Config "
                "class; add `class Config(c4s_core.ComponentConfig): ...`"
            )
        if config_cls.model_config.get("extra") != "forbid":
            raise RegistrationError(
                f"{origin}: {self.kind} {name!r} Config must forbid unknown keys; "
                "derive it from c4s_core.ComponentConfig"
            )
        description = description or getattr(cls, "description", None) or _first_line(cls.__doc__)
        if not description:
            raise RegistrationError(
                f"{origin}: {self.kind} {name!r} needs a one-line description or docstring"
            )
        aliases = tuple(aliases) or tuple(getattr(cls, "aliases", ()))
        for key in (name, *aliases):
            clash = self._lookup(key)
            if clash is not None:
                raise DuplicateComponentError(
                    f"{self.kind} name {key!r} is registered twice: by {clash.origin} "
                    f"({clash.cls.__module__}.{clash.cls.__qualname__}) and by {origin} "
                    f"({cls.__module__}.{cls.__qualname__}). Block one of the plugins "
                    "with --block or C4S_BLOCK_PLUGINS."
                )
        entry = Entry(self.kind, name, cls, description, config_cls, origin, aliases)
        self.entries[name] = entry
        for a in aliases:
            self.aliases[a] = name
        return entry

    def _lookup(self, key: str) -> Entry | None:
        if key in self.entries:
            return self.entries[key]
        if key in self.aliases:
            return self.entries[self.aliases[key]]
        return None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, key: str) -> bool:
        return self._lookup(key) is not None

    def __iter__(self):
        return iter(self.entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Entry:
        entry = self._lookup(key)
        if entry is None:
            known = self.names() + sorted(self.aliases)
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            avail = ", ".join(self.names()) or "none (no plugin registers this kind)"
            raise UnknownComponentError(
                f"unknown {self.kind} {key!r}.{hint} Available: {avail}. "
                "Run `c4s plugins` to see what is installed."
            )
        return entry

    def config(self, key: str, options: dict[str, Any] | BaseModel | None = None) -> ComponentConfig:
        entry = self.get(key)
        if isinstance(options, entry.config_cls):
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        return validate(entry.config_cls, options or {}, f"options for {self.kind} {entry.name!r}")

    def build(self, key: str | ComponentSpec, options: dict[str, Any] | BaseModel | None = None, **kw):
        """Validate ``options`` against the component's Config and construct it."""
        if isinstance(key, ComponentSpec):
            key, options = key.name, key.options
        entry = self.get(key)
        return entry.cls(self.config(entry.name, options), **kw)


class Registries:
    """One registry per kind, plus what the plugin manager loaded and skipped."""

    def __init__(self, pm=None):
        self.pm = pm
        self.by_kind: dict[str, Registry] = {k: Registry(k) for k in KINDS}

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self.by_kind[kind]
        except KeyError:
            raise UnknownComponentError(
                f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}"
            ) from None

    def __getattr__(self, name: str) -> Registry:
        # registries.backbone, registries.sketch_style, ...
        by_kind = self.__dict__.get("by_kind", {})
        if name in by_kind:
            return by_kind[name]
        raise AttributeError(name)

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for e in self[k]]


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""
