"""One test per hook (named test_<hook>), a meta-test that enforces it, and a
check that docs/plugin-hooks.md documents every hook with its signature."""

import inspect
import re
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import Field

import c4s_core
from c4s_core import hookimpl, hookspecs
from c4s_core.plugins import build_registries, make_plugin_manager
from c4s_core.registry import KINDS

HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("register_") and callable(f))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugin-hooks.md"


def make_component(kind):
    class Comp:
        """A test component."""

        name = f"test_{kind}"

        class Config(c4s_core.ComponentConfig):
            size: int = Field(4, ge=1, description="Size.")

        def __init__(self, config):
            self.config = config

    return Comp


def registries_with(hook_name, kind):
    comp = make_component(kind)

    def impl(register):
        register(comp, aliases=(f"t_{kind}",))

    impl.__name__ = hook_name
    plugin = types.ModuleType("hooktest")
    setattr(plugin, hook_name, hookimpl(impl))
    return build_registries(make_plugin_manager(entry_points=False, plugins=(("hooktest", plugin),)))


def check_kind(hook_name):
    kind = {v: k for k, v in KINDS.items()}[hook_name]
    regs = registries_with(hook_name, kind)
    obj = regs[kind].build(f"t_{kind}", {"size": 3})
    assert obj.config.size == 3
    assert regs[kind].get(f"test_{kind}").origin.plugin == "hooktest"


def test_register_conditioners():
    check_kind("register_conditioners")


def test_register_samplers():
    check_kind("register_samplers")


def test_register_sketch_styles():
    check_kind("register_sketch_styles")


def test_register_generators():
    check_kind("register_generators")


def test_register_backbones():
    check_kind("register_backbones")


def test_register_heads():
    check_kind("register_heads")


def test_register_datasets():
    check_kind("register_datasets")


def test_register_aligners():
    check_kind("register_aligners")


def test_register_weights():
    check_kind("register_weights")


def test_register_gallery_stores(monkeypatch):
    check_kind("register_gallery_stores")
    from c4s_core.gallery import open_store
    from c4s_core.gallery.stores import FolderStore

    opened = []

    class MemoryStore(FolderStore):
        """A test store: remembers what it was asked to open."""

        name = "memtest"

        def open(self, location, mmap=False, verify=False):
            opened.append((location, mmap))
            return "store"

    @hookimpl
    def register_gallery_stores(register):
        register(MemoryStore)

    plugin = types.ModuleType("storetest")
    plugin.register_gallery_stores = register_gallery_stores
    regs = build_registries(make_plugin_manager(entry_points=False, plugins=(("storetest", plugin),)))
    monkeypatch.setattr("c4s_core.plugins._default", regs)
    assert open_store("memtest:some/where", mmap=True) == "store" and opened == [("some/where", True)]
    with pytest.raises(KeyError, match="unknown gallery_store 'nosuch'"):
        open_store("nosuch:x")


def test_register_commands(monkeypatch):
    from c4s_core import cli as cli_mod

    @hookimpl
    def register_commands(cli):
        @cli.command(name="hello-test")
        @click.option("--who", default="world")
        def hello(who):
            click.echo(f"hello {who}")

    plugin = types.ModuleType("cmdtest")
    plugin.register_commands = register_commands
    regs = build_registries(make_plugin_manager(entry_points=False, plugins=(("cmdtest", plugin),)))
    monkeypatch.setattr("c4s_core.plugins._default", regs)
    monkeypatch.setattr(cli_mod, "_plugin_commands_added", False)
    try:
        cli_mod.add_plugin_commands()
        res = CliRunner().invoke(cli_mod.cli, ["hello-test", "--who", "c4s"])
        assert res.exit_code == 0, res.output
        assert res.output.strip() == "hello c4s"
    finally:
        cli_mod.cli.commands.pop("hello-test", None)


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    assert f"test_{hook}" in vars(sys.modules[__name__]), f"no test_{hook} in {__file__}"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    text = DOCS.read_text()
    sig = f"{hook}({', '.join(inspect.signature(getattr(hookspecs, hook)).parameters)})"
    assert re.search(rf"^## {re.escape(sig)}$", text, re.M), f"docs/plugin-hooks.md lacks '## {sig}'"


def test_every_kind_has_a_hook():
    assert set(KINDS.values()) <= set(HOOKS)
