"""The ``c4s`` command line: thin wrappers that parse, build a config and call a pipeline."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from . import __version__
from .errors import C4SError

_GLOBAL = {"strict": False, "block": (), "allow": None}


def _registries():
    from .plugins import build_registries, get_registries, make_plugin_manager, set_registries

    if _GLOBAL.get("dirty"):
        allow = _GLOBAL["allow"]
        set_registries(
            build_registries(
                make_plugin_manager(
                    allow=None if allow is None else [a for a in allow.split(",") if a],
                    block=list(_GLOBAL["block"]) or None,
                    strict=_GLOBAL["strict"] or None,
                )
            )
        )
        _GLOBAL["dirty"] = False
    return get_registries()


class C4SGroup(click.Group):
    """Turns c4s errors into clean click errors instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except C4SError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=C4SGroup)
@click.version_option(__version__, "--version", prog_name="c4s")
@click.option("--strict", is_flag=True, help="A plugin that fails to load is an error (env C4S_STRICT_PLUGINS=1).")
@click.option("--block", multiple=True, metavar="PLUGIN", help="Do not load this plugin (repeatable; env C4S_BLOCK_PLUGINS).")
@click.option("--plugins", "allow", metavar="A,B", default=None, help="Load only these third-party plugins (env C4S_LOAD_PLUGINS; '' loads none).")
def cli(strict, block, allow):
    """c4s: CLIP4Sketch, diffusion-generated forensic sketches for sketch-to-mugshot matching.

    A plugin framework: datasets, aligners, sketch styles, conditioners,
    samplers, generators, backbones and heads are plugins, chosen by name
    in each pipeline's config. See README.md. First command:

        c4s demo --out c4s-out/demo
    """
    if strict or block or allow is not None:
        _GLOBAL.update(strict=strict, block=block, allow=allow, dirty=True)


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--kind", default=None, help="Only this component kind (e.g. backbone).")
@click.option("--hook", default=None, help="Only plugins implementing this hook (e.g. register_samplers).")
@click.option("--builtins/--no-builtins", default=True, show_default=True, help="Include built-in plugins.")
def plugins_cmd(as_json, kind, hook, builtins):
    """List loaded plugins and the components they register."""
    regs = _registries()
    pm = regs.pm
    infos = [i for i in pm.infos.values() if builtins or not i.builtin]
    if hook:
        infos = [i for i in infos if hook in i.hooks]
    names = {i.name for i in infos}
    comps = [e for e in regs.entries(kind) if e.origin.plugin in names]
    data = {
        "plugins": [
            {"name": i.name, "distribution": i.distribution, "version": i.version,
             "builtin": i.builtin, "module": i.module, "hooks": i.hooks}
            for i in infos
        ],
        "components": [e.as_dict() for e in comps],
        "blocked": pm.blocked,
        "failures": [
            {"plugin": f.plugin, "distribution": f.distribution, "stage": f.stage, "error": f.error}
            for f in pm.failures
        ],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    current = None
    for e in comps:
        if e.kind != current:
            current = e.kind
            click.echo(f"\n{e.kind}:")
        alias = f" (alias {', '.join(e.aliases)})" if e.aliases else ""
        src = "built-in" if e.origin.distribution == "clip4sketch" else str(e.origin)
        click.echo(f"  {e.name:<20}{e.description}{alias}  [{src}]")
    for f in pm.failures:
        click.echo(f"\nfailed: {f}", err=True)


@cli.command()
@click.argument("kind")
@click.argument("name")
def describe(kind, name):
    """Show a component's description, origin and options (from its Config)."""
    regs = _registries()
    e = regs[kind].get(name)
    click.echo(f"{e.kind} {e.name}: {e.description}")
    click.echo(f"origin: {e.origin}")
    if e.aliases:
        click.echo(f"aliases: {', '.join(e.aliases)}")
    # pretrained weights: where they come from and under what licence
    src = e if e.kind == "weights" else None
    if src is None and getattr(e.cls, "weight_source", None):
        src = regs.weights.get(e.cls.weight_source)
    if src is not None:
        from . import weights as store

        w = src.cls
        click.echo(f"weights: {src.name} = {w.package}@{w.version} (sha256 {w.sha256[:16]}...), stored in {store.folder(src.name)}")
        click.echo(f"licence: {w.licence}")
        click.echo(f"upstream: {w.upstream}")
    schema = e.config_cls.model_json_schema()
    props = schema.get("properties", {})
    fields = e.config_cls.model_fields
    from pydantic import TypeAdapter

    click.echo("options:" if props else "options: none")
    for key, p in props.items():
        typ = p.get("type") or "|".join(x.get("type", "?") for x in p.get("anyOf", [])) or "object"
        field = fields.get(key) or next((f for f in fields.values() if f.alias == key), None)
        if field is not None and field.is_required():
            shown = "required"
        elif field is not None:  # the schema leaves out defaults made by a default_factory
            value = field.get_default(call_default_factory=True)
            shown = "default " + json.dumps(TypeAdapter(Any).dump_python(value, mode="json"))
        else:
            shown = "default " + json.dumps(p.get("default"))
        click.echo(f"  {key} ({typ}, {shown}): {p.get('description', '')}")


@cli.group()
def config():
    """Show pipeline configs."""


@config.command("show")
@click.argument("pipeline")
@click.option("--format", "fmt", type=click.Choice(["yaml", "toml", "json"]), default="yaml", show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Show this file merged over the defaults.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a field.")
def config_show(pipeline, fmt, config_file, sets):
    """Print PIPELINE's config (defaults, or a file with overrides), validated."""
    from .config import dump_config, load_config
    from .pipelines import get_pipeline

    mod = get_pipeline(pipeline)
    click.echo(dump_config(load_config(mod.Config, config_file, sets), fmt).rstrip())


@config.command("schema")
@click.argument("pipeline")
def config_schema(pipeline):
    """Print PIPELINE's config JSON schema (every field with type, default, description)."""
    from .pipelines import get_pipeline

    click.echo(json.dumps(get_pipeline(pipeline).Config.model_json_schema(), indent=2))


def _pipeline_command(name: str, module: str) -> click.Command:
    import importlib

    fields = importlib.import_module(module).Config.model_fields

    def command(config_file, sets, out, no_progress, resume=False, shard=None, judge=None):
        from .config import load_config

        mod = importlib.import_module(module)
        sets = list(sets) + ([f"out={out}"] if out else [])
        sets += ["resume=true"] if resume else []
        sets += [f"shard={shard}"] if shard else []
        sets += [f"judge={judge}"] if judge else []
        from .pipelines.common import keep_records

        cfg = load_config(mod.Config, config_file, sets)
        _registries()
        # under torchrun only rank 0 writes records, so only it puts them back
        with keep_records(getattr(cfg, "out", None) if os.environ.get("RANK", "0") == "0" else None):
            summary = mod.run(cfg, progress=not no_progress)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            click.echo(json.dumps(summary, indent=2, default=str))

    # options apply bottom-up; pipeline-specific ones only where the Config has the field
    if "judge" in fields:
        command = click.option("--judge", default=None, metavar="MATCHER",
                               help="Matcher folder that judges identity fidelity (same as --set judge=DIR).")(command)
    if "shard" in fields:
        command = click.option("--shard", default=None, metavar="I/N", help="Do shard I of N (1-based) of the work.")(command)
    if "resume" in fields:
        command = click.option("--resume", is_flag=True, help="Continue a killed run from its last checkpoint.")(command)
    command = click.option("--no-progress", is_flag=True, help="Hide progress bars.")(command)
    command = click.option("--out", default=None, help="Output folder (same as --set out=DIR).")(command)
    command = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config field, e.g. --set seed=3 (repeatable).")(command)
    command = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML config file.")(command)
    doc = _PIPELINE_HELP.get(name, f"Run the {name} pipeline.")
    return click.command(name=name, help=doc + "\n\nSee `c4s config show " + name + "` for every option.")(command)


_PIPELINE_HELP = {
    "synth": "Render the embedded synthfaces set (photos + sketches) to a folder.",
    "align": "Align the faces of a dataset to the 5-point template and write the crops.",
    "evaluate": "Match probe sketches against a photo gallery: CMC, TAR@FAR, ROC, report.",
    "train-matcher": "Train a sketch-to-mugshot matcher (backbone + margin head) on real and generated sets.",
    "train-generator": "Train the CLIP4Sketch diffusion generator (or another generator) on photo/sketch pairs.",
    "export": "Export a matcher to ONNX (uint8 RGB in, unit embeddings out), checked against torch; fp16/int8.",
    "generate": "Generate a synthetic sketch set (OUT/IDENTITY/STYLE_K.png + manifest.jsonl) with any generator.",
    "report-dataset": "Report on a generated set: identity similarity, diversity, style counts, contact sheet.",
    "filter-set": "Keep the generated sketches a recogniser still matches to their photo (a threshold or a FAR).",
    "experiment": "The paper's comparison: real vs real + diffusion/GAN/procedural sketches, same matcher and budget, beside HOG.",
    "seeds": "Pool experiments that differ only in the matchers' seed: per-seed rank-1, pooled differences, two-level bootstrap.",
    "demo": "The main job on the embedded default: the whole CLIP4Sketch loop, from generator to deployed search, with a report.",
}


def _add_pipelines() -> None:
    from .pipelines import PIPELINES

    for name, module in PIPELINES.items():
        if name not in cli.commands:
            cli.add_command(_pipeline_command(name, module))


_plugin_commands_added = False


def add_plugin_commands() -> None:
    """Let plugins add commands (``register_commands(cli)``), once."""
    global _plugin_commands_added
    if _plugin_commands_added:
        return
    _plugin_commands_added = True
    from .plugins import call_hook_isolated

    pm = _registries().pm
    for _info, failure, err in call_hook_isolated(pm, "register_commands", lambda info: {"cli": cli}):
        if failure is not None:
            pm.fail(failure, err)


def _prescan(argv: list[str]) -> None:
    """Apply --strict/--block/--plugins before plugin commands are collected."""
    it = iter(argv)
    for a in it:
        if a == "--strict":
            _GLOBAL.update(strict=True, dirty=True)
        elif a == "--block":
            _GLOBAL.update(block=(*_GLOBAL["block"], next(it, "")), dirty=True)
        elif a.startswith("--block="):
            _GLOBAL.update(block=(*_GLOBAL["block"], a.split("=", 1)[1]), dirty=True)
        elif a == "--plugins":
            _GLOBAL.update(allow=next(it, ""), dirty=True)
        elif a.startswith("--plugins="):
            _GLOBAL.update(allow=a.split("=", 1)[1], dirty=True)
        elif not a.startswith("-"):
            break  # the subcommand: its own options follow


_add_pipelines()


def _add_builtin_groups() -> None:
    from .match_cli import match
    from .serve import serve_command
    from .weights_cli import weights

    cli.add_command(match)
    cli.add_command(serve_command)
    cli.add_command(weights)


_add_builtin_groups()


def main(argv: list[str] | None = None) -> None:
    from .malloc import tune_malloc

    tune_malloc()  # before the first tensor: large blocks are reused, not re-faulted each step
    argv = sys.argv[1:] if argv is None else argv
    _prescan(argv)
    try:
        add_plugin_commands()
    except C4SError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    cli.main(args=argv, prog_name="c4s")


if __name__ == "__main__":
    main()
