"""Plugin manager: isolation of broken plugins, strict mode, misspelt hooks, allow/block."""

import importlib.metadata as md
import types

import pytest
from pydantic import Field

import c4s_core
from c4s_core import hookimpl
from c4s_core.errors import C4SError, PluginLoadError, UnknownComponentError
from c4s_core.plugins import build_registries, make_plugin_manager


class Pastel:
    """A pastel sketch style."""

    name = "pastel"
    prompts = ("a pastel sketch",)
    renders = False

    class Config(c4s_core.ComponentConfig):
        softness: float = Field(0.5, ge=0, le=1, description="How soft.")

    def __init__(self, config):
        self.config = config


def module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


@hookimpl
def _register_pastel(register):
    register(Pastel)


_register_pastel.__name__ = "register_sketch_styles"
good = module("good_plugin", register_sketch_styles=_register_pastel)


def test_extra_plugin_registers_with_origin():
    regs = build_registries(make_plugin_manager(entry_points=False, plugins=(("good", good),)))
    e = regs.sketch_style.get("pastel")
    assert e.origin.plugin == "good"
    assert regs.pm.infos["good"].hooks == ["register_sketch_styles"]


def _raising(register):
    register(Pastel)
    raise RuntimeError("boom in register")


def test_plugin_that_raises_while_registering_is_skipped(capsys):
    bad = module("bad", register_sketch_styles=hookimpl(_rename(_raising, "register_sketch_styles")))
    regs = build_registries(make_plugin_manager(entry_points=False, plugins=(("bad", bad),)))
    assert "pastel" not in regs.sketch_style  # partial registration rolled back
    assert any(f.plugin == "bad" and "boom in register" in f.error for f in regs.pm.failures)
    assert "plugin 'bad'" in capsys.readouterr().err
    assert "paired_folder" in regs.dataset  # the others still work


def test_strict_mode_makes_plugin_failure_fatal():
    bad = module("bad", register_sketch_styles=hookimpl(_rename(_raising, "register_sketch_styles")))
    pm = make_plugin_manager(entry_points=False, strict=True, plugins=(("bad", bad),))
    with pytest.raises(PluginLoadError, match="boom in register"):
        build_registries(pm)


def test_misspelt_hook_fails_loudly(capsys):
    def register_sketch_style(register):  # missing the final "s"
        register(Pastel)

    typo = module("typo", register_sketch_style=hookimpl(register_sketch_style))
    pm = make_plugin_manager(entry_points=False, plugins=(("typo", typo),))
    assert not pm.has_plugin("typo")
    assert "register_sketch_style" in pm.failures[0].error
    assert "typo" in capsys.readouterr().err
    with pytest.raises(PluginLoadError, match="register_sketch_style"):
        make_plugin_manager(entry_points=False, strict=True, plugins=(("typo", typo),))


def test_bad_hook_signature_rejected():
    def register_backbones(registrar):  # wrong argument name
        pass

    bad = module("sig", register_backbones=hookimpl(register_backbones))
    pm = make_plugin_manager(entry_points=False, plugins=(("sig", bad),))
    assert not pm.has_plugin("sig") and "registrar" in pm.failures[0].error


class FakeEP:
    def __init__(self, name, value, loader, dist="c4s-fake"):
        self.name, self.value, self._loader = name, value, loader
        self.dist = types.SimpleNamespace(name=dist, version="9.9")

    def load(self):
        return self._loader()


def _fake_eps(monkeypatch, eps):
    real = md.entry_points

    def entry_points(**kw):
        if kw.get("group") == "c4s":
            return list(eps)
        return real(**kw)

    monkeypatch.setattr(md, "entry_points", entry_points)


def _import_error():
    raise ImportError("No module named 'c4s_missing'")


def test_entry_point_import_failure_is_reported_and_skipped(monkeypatch, capsys):
    _fake_eps(monkeypatch, [FakeEP("broken", "c4s_missing", _import_error), FakeEP("good", "good", lambda: good)])
    regs = build_registries(make_plugin_manager(allow=["broken", "good"]))
    assert "pastel" in regs.sketch_style
    assert regs.sketch_style.get("pastel").origin.distribution == "c4s-fake"
    f = regs.pm.failures[0]
    assert (f.plugin, f.stage) == ("broken", "import") and "c4s_missing" in f.error
    assert "plugin 'broken' (c4s-fake) skipped" in capsys.readouterr().err
    with pytest.raises(PluginLoadError, match="broken"):
        make_plugin_manager(allow=["broken"], strict=True)


def test_allow_and_block_lists(monkeypatch):
    _fake_eps(monkeypatch, [FakeEP("good", "good", lambda: good)])
    assert "pastel" not in build_registries(make_plugin_manager(allow=[])).sketch_style
    assert "pastel" in build_registries(make_plugin_manager(allow=["c4s-fake"])).sketch_style
    regs = build_registries(make_plugin_manager(allow=["good"], block=["good"]))
    assert "pastel" not in regs.sketch_style and "good" in regs.pm.blocked
    monkeypatch.setenv("C4S_LOAD_PLUGINS", "good")
    assert "pastel" in build_registries(make_plugin_manager()).sketch_style
    monkeypatch.setenv("C4S_BLOCK_PLUGINS", "good")
    assert "pastel" not in build_registries(make_plugin_manager()).sketch_style


def test_builtins_are_blockable_except_essentials():
    regs = build_registries(make_plugin_manager(entry_points=False, block=["styles"]))
    assert "styles" in regs.pm.blocked
    with pytest.raises(C4SError, match="essential"):
        make_plugin_manager(block=["datasets"])


def test_duplicate_component_from_second_plugin_reported():
    @hookimpl
    def register_sketch_styles(register):
        register(Pastel)

    twin = module("twin", register_sketch_styles=register_sketch_styles)
    regs = build_registries(make_plugin_manager(entry_points=False, plugins=(("good", good), ("twin", twin))))
    assert regs.sketch_style.get("pastel").origin.plugin in {"good", "twin"}
    (f,) = [f for f in regs.pm.failures if "registered twice" in f.error]
    assert "'good'" in f.error and "'twin'" in f.error
    with pytest.raises(UnknownComponentError):
        regs.sketch_style.get("pastels_nope")


def _rename(fn, name):
    fn.__name__ = name
    return fn


def test_plugins_use_core_services_not_pipeline_internals():
    """A built-in plugin imports what a third-party one could: c4s_core's public
    modules, never c4s_core.pipelines (issue 21)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "plugins"
    bad = [f"{p.name}:{i}: {line.strip()}" for p in sorted(root.glob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"\bc4s_core\.pipelines\b|from c4s_core import pipelines", line.split("#", 1)[0])]
    assert not bad, "plugins importing pipeline internals:\n" + "\n".join(bad)
