"""Pydantic configs: component options and pipeline settings, all strict.

Every config forbids unknown keys, so a typo fails with the field's name.
Pipeline configs load from YAML or TOML plus ``key.sub=value`` overrides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

__all__ = [
    "C4SModel",
    "ComponentConfig",
    "ComponentSpec",
    "load_config",
    "format_validation_error",
    "parse_overrides",
]

M = TypeVar("M", bound=BaseModel)


class C4SModel(BaseModel):
    """Base of all c4s configs: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ComponentConfig(C4SModel):
    """Base of every component's nested ``Config`` (its options)."""


class ComponentSpec(C4SModel):
    """A component chosen by name, with its options (validated by its Config)."""

    name: str = Field(description="Registered name (or alias) of the component.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the component's Config."
    )


def format_validation_error(err: ValidationError, where: str,
                            source: Callable[[tuple], str | None] | None = None) -> str:
    """One line per bad field; ``source(loc)`` may say where its value came from."""
    lines = [f"invalid {where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        inp = e.get("input")
        shown = "" if isinstance(inp, dict) or e["type"] == "missing" else f" (got {inp!r})"
        origin = source(tuple(e["loc"])) if source else None
        lines.append(f"  {loc}: {msg}{shown}" + (f" [from {origin}]" if origin else ""))
    return "\n".join(lines)


def validate(model: type[M], data: Any, where: str,
             source: Callable[[tuple], str | None] | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where, source)) from None


def _has(data: Any, loc: tuple) -> bool:
    """Whether ``data`` (nested dicts and lists) sets the field at ``loc`` or a section above it."""
    for i, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return i > 0 and not isinstance(data, (dict, list))
    return True


def _config_name(model: type) -> str:
    """``train-matcher config`` for a pipeline's Config, else the class name."""
    mod = model.__module__
    if model.__name__ == "Config" and ".pipelines." in mod:
        return mod.rsplit(".", 1)[-1].replace("_", "-") + " config"
    return model.__name__


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: use .yaml, .yml, .toml or .json")
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:]}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> nested dict; values parsed as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE, e.g. --set seed=3")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {pair!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {p} is set both as a value and a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` over ``base``; a component section naming another
    component (a different ``name``) replaces the default rather than merging,
    so one component's options never leak into another's. An empty mapping
    replaces too: ``guidance: {}`` means none, not the defaults."""
    out = dict(base)
    for k, v in extra.items():
        old = out.get(k)
        if isinstance(v, dict) and v and isinstance(old, dict) and not (
            "name" in v and "name" in old and v["name"] != old["name"]
        ):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    model: type[M], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> M:
    """Defaults <- file <- overrides, validated by ``model``; errors name the field."""
    try:  # defaults first, so a file or --set need only name what changes
        data: dict[str, Any] = json.loads(model().model_dump_json())
    except ValidationError:  # the model has required fields
        data = {}
    file_data = read_config_file(path) if path is not None else {}
    set_data = parse_overrides(overrides) if overrides else {}
    data = deep_merge(deep_merge(data, file_data), set_data)

    def source(loc: tuple) -> str | None:  # --set wins over the file, as in the merge
        for pair in overrides:
            key = tuple(pair.split("=", 1)[0].strip().split("."))
            if loc[:len(key)] == key or key[:len(loc)] == loc:
                return f"--set {pair}"
        if path is not None and _has(file_data, loc):
            return f"config file {path}"
        return None

    where = _config_name(model) + (f" (file {path})" if path is not None else "")
    return validate(model, data, where, source)


def dump_config(cfg: BaseModel, fmt: str = "yaml") -> str:
    data = json.loads(cfg.model_dump_json())
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "toml":
        return _to_toml(data)
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):  # a None leaves the key out, as below
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items() if x is not None) + "}"
        raise ConfigError(f"cannot write {v!r} as TOML (TOML has no null; in a list, give a value)")

    lines, tables = [], []
    for k, v in data.items():
        if v is None:
            continue  # TOML has no null: leaving the key out keeps the default
        if isinstance(v, dict) and v and all(not isinstance(x, dict) or x for x in v.values()):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {val(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"\n[{name}]\n" + _to_toml(v, name + ".")
    return out
