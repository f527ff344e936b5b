"""Plugin manager factory and loader.

Built-in plugins (``plugins/``, imported as ``c4s_plugins``) and third-party
ones are found the same way: entry points in the group ``c4s``. Loading is
isolated per plugin: one that fails to import, has a bad hook signature, a
misspelt hook name, or raises while registering is reported with its name and
skipped (strict mode makes that fatal), so one broken plugin never breaks c4s.

Environment (CLI flags of the same meaning take precedence):

``C4S_LOAD_PLUGINS``  comma-separated allow list of third-party plugins (entry
                      point or distribution names); set but empty loads none.
``C4S_BLOCK_PLUGINS`` comma-separated plugins not to load (built-ins included,
                      except the essential ones).
``C4S_STRICT_PLUGINS`` "1"/"true": a plugin failure is an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import C4SError, PluginLoadError
from .registry import KINDS, Origin, Registries

ENV_ALLOW = "C4S_LOAD_PLUGINS"
ENV_BLOCK = "C4S_BLOCK_PLUGINS"
ENV_STRICT = "C4S_STRICT_PLUGINS"
GROUP = "c4s"
DISTRIBUTION = "clip4sketch"

# Built-ins: entry-point name -> module. Same names as in pyproject.toml, so a
# source checkout that is not installed still finds them.
BUILTIN_PLUGINS: dict[str, str] = {
    "datasets": "c4s_plugins.datasets",
    "synthfaces": "c4s_plugins.synthfaces",
    "styles": "c4s_plugins.styles",
    "aligners": "c4s_plugins.aligners",
    "dlib": "c4s_plugins.dlib_models",
    "hog": "c4s_plugins.hog",
    "backbones": "c4s_plugins.backbones",
    "heads": "c4s_plugins.heads",
    "conditioners": "c4s_plugins.conditioners",
    "samplers": "c4s_plugins.samplers",
    "diffusion": "c4s_plugins.diffusion",
    "onnx_matcher": "c4s_plugins.onnx_matcher",
    "gan": "c4s_plugins.gan",
    "procedural": "c4s_plugins.procedural",
    "face_api": "c4s_plugins.face_api",
    "face_id": "c4s_plugins.face_id",
    "spatial": "c4s_plugins.spatial",
    "human_models": "c4s_plugins.human_models",
    "folder_store": "c4s_plugins.folder_store",
    "milvus_store": "c4s_plugins.milvus_store",
}
# The default pipelines read data through these; they may not be blocked.
ESSENTIAL_PLUGINS = frozenset({"datasets", "synthfaces", "folder_store"})


@dataclass
class PluginFailure:
    plugin: str
    distribution: str | None
    stage: str  # "import", "register", "hooks", "register_<kind>s", ...
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        dist = f" ({self.distribution})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist} skipped: {self.stage} failed: {self.error}"


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    module: str
    hooks: list[str] = field(default_factory=list)

    @property
    def origin(self) -> Origin:
        return Origin(self.name, self.distribution, self.version)


class C4SPluginManager(pluggy.PluginManager):
    def __init__(self, strict: bool = False):
        super().__init__("c4s")
        self.add_hookspecs(hookspecs)
        self.strict = strict
        self.failures: list[PluginFailure] = []
        self.infos: dict[str, PluginInfo] = {}
        self.blocked: list[str] = []

    def fail(self, failure: PluginFailure, cause: BaseException | None = None) -> None:
        if self.strict:
            raise PluginLoadError(f"{failure}\n{failure.traceback}".rstrip()) from cause
        self.failures.append(failure)
        print(f"c4s: warning: {failure}", file=sys.stderr)

    def add(self, obj: Any, info: PluginInfo) -> bool:
        """Register one plugin object; on a bad or misspelt hook, unregister it."""
        try:
            self.register(obj, name=info.name)
            self.check_pending()
        except Exception as err:  # pluggy.PluginValidationError and friends
            if self.is_registered(obj):
                self.unregister(obj)
            self.fail(PluginFailure(info.name, info.distribution, "hook validation", str(err)), err)
            return False
        info.hooks = sorted(h.name for h in self.get_hookcallers(obj) or [])
        self.infos[info.name] = info
        return True


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _strict_from_env() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on")


def make_plugin_manager(
    *,
    allow: list[str] | None = None,
    block: list[str] | None = None,
    strict: bool | None = None,
    entry_points: bool = True,
    plugins: tuple[tuple[str, Any], ...] = (),
) -> C4SPluginManager:
    """Build a manager with the built-ins, entry-point plugins and ``plugins``.

    ``allow``/``block``/``strict`` default to the environment variables.
    ``plugins`` are extra ``(name, object)`` pairs, e.g. test plugins.
    ``entry_points=False`` loads only the built-ins and ``plugins``.
    """
    strict = _strict_from_env() if strict is None else strict
    allow = _env_list(ENV_ALLOW) if allow is None else allow
    block = (_env_list(ENV_BLOCK) or []) if block is None else block
    pm = C4SPluginManager(strict=strict)
    bad = sorted(set(block) & ESSENTIAL_PLUGINS)
    if bad:
        raise C4SError(f"plugin(s) {', '.join(bad)} are essential to c4s and cannot be blocked")

    eps = []
    if entry_points:
        eps = list(md.entry_points(group=GROUP))
    found_builtins = set()
    candidates: list[tuple[str, str | None, str | None, str, bool, Callable[[], Any]]] = []
    for ep in eps:
        dist = ep.dist.name if ep.dist else None
        ver = ep.dist.version if ep.dist else None
        builtin = dist == DISTRIBUTION and ep.name in BUILTIN_PLUGINS
        if builtin:
            found_builtins.add(ep.name)
        candidates.append((ep.name, dist, ver, ep.value, builtin, ep.load))
    for name, module in BUILTIN_PLUGINS.items():
        if name not in found_builtins:  # running from a source tree, not installed
            candidates.insert(
                list(BUILTIN_PLUGINS).index(name),
                (name, DISTRIBUTION, _own_version(), module, True,
                 lambda m=module: importlib.import_module(m)),
            )
    candidates.sort(key=lambda c: (not c[4],))  # built-ins first, stable

    for name, dist, ver, module, builtin, load in candidates:
        if name in block or (dist and dist in block):
            pm.blocked.append(name)
            continue
        if not builtin and allow is not None and name not in allow and dist not in allow:
            pm.blocked.append(name)
            continue
        if pm.has_plugin(name):
            pm.fail(PluginFailure(name, dist, "import", f"a plugin named {name!r} is already loaded"))
            continue
        try:
            obj = load()
        except Exception as err:
            pm.fail(
                PluginFailure(name, dist, "import", f"{type(err).__name__}: {err}", traceback.format_exc()),
                err,
            )
            continue
        pm.add(obj, PluginInfo(name, dist, ver, builtin, module))
    for name, obj in plugins:
        pm.add(obj, PluginInfo(name, None, None, False, getattr(obj, "__name__", repr(obj))))
    return pm


def _own_version() -> str:
    from . import __version__

    return __version__


def call_hook_isolated(pm: C4SPluginManager, hook_name: str, make_kwargs: Callable[[PluginInfo], dict]) -> None:
    """Call each plugin's implementation of ``hook_name`` separately, so one
    that raises is reported and skipped instead of breaking the others."""
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        info = pm.infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, None, None, False, "?")
        kwargs = make_kwargs(info)
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as err:
            failure = PluginFailure(
                info.name, info.distribution, hook_name, f"{type(err).__name__}: {err}",
                traceback.format_exc(),
            )
            yield (info, failure, err)
        else:
            yield (info, None, None)


def build_registries(pm: C4SPluginManager) -> Registries:
    """Fill one registry per kind from the plugins' ``register_*`` hooks."""
    regs = Registries(pm)
    for kind, hook_name in KINDS.items():
        reg = regs[kind]
        for info_failure in _register_kind(pm, reg, hook_name):
            info, failure, err = info_failure
            # roll back what this plugin registered for the kind before failing
            for n in [n for n, e in reg.entries.items() if e.origin.plugin == info.name]:
                entry = reg.entries.pop(n)
                for a in entry.aliases:
                    reg.aliases.pop(a, None)
            pm.fail(failure, err)
    return regs


def _register_kind(pm, reg, hook_name):
    def make_kwargs(info: PluginInfo) -> dict:
        def register(cls, name=None, aliases=(), description=None):
            return reg.register(cls, origin=info.origin, name=name, aliases=aliases, description=description)

        return {"register": register}

    for info, failure, err in call_hook_isolated(pm, hook_name, make_kwargs):
        if failure is not None:
            yield info, failure, err


_default: Registries | None = None


def get_registries(reload: bool = False) -> Registries:
    """The process-wide registries, loaded once on first use (idempotent)."""
    global _default
    if _default is None or reload:
        _default = build_registries(make_plugin_manager())
    return _default


def set_registries(regs: Registries | None) -> None:
    """Replace (or with None, forget) the process-wide registries; for the CLI and tests."""
    global _default
    _default = regs
