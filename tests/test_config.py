import pytest
from pydantic import Field

from c4s_core.config import C4SModel, ComponentSpec, load_config, parse_overrides
from c4s_core.errors import ConfigError


class Inner(C4SModel):
    lr: float = Field(0.1, gt=0, description="Learning rate.")


class Cfg(C4SModel):
    seed: int = Field(0, description="Seed.")
    inner: Inner = Field(default_factory=Inner, description="Inner.")
    backbone: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="ir50"), description="Backbone.")


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a.b=1", "c=[x, y]", "d=true", "e=hello"]) == {
        "a": {"b": 1}, "c": ["x", "y"], "d": True, "e": "hello"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('seed = 3\n[inner]\nlr = 0.5\n[backbone]\nname = "r18"\noptions = {depth = 18}\n')
    cfg = load_config(Cfg, f, ["inner.lr=0.25"])
    assert cfg.seed == 3 and cfg.inner.lr == 0.25
    assert cfg.backbone.name == "r18" and cfg.backbone.options == {"depth": 18}


def test_errors_name_file_and_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: x\ninner:\n  lr: -1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, f)
    msg = str(e.value)
    assert str(f) in msg and "seed" in msg and "inner.lr" in msg and "inner.momentum: unknown field" in msg
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "missing.yaml")
    g = tmp_path / "c.ini"
    g.write_text("x")
    with pytest.raises(ConfigError, match="yaml"):
        load_config(Cfg, g)
    h = tmp_path / "list.yaml"
    h.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, h)


def test_config_file_merges_into_defaults_and_empty_mapping_clears(tmp_path):
    from c4s_core.pipelines import experiment as ex

    p = tmp_path / "c.yaml"
    p.write_text("guidance: {identity: 3.0}\ngenerator_options: {batch_size: 8}\n")
    cfg = load_config(ex.Config, p)
    assert cfg.guidance == {"identity": 3.0, "style": 2.0}  # merged key by key
    assert cfg.generator_options["batch_size"] == 8 and cfg.generator_options["condition_size"] == 64
    p.write_text("guidance: {}\n")
    assert load_config(ex.Config, p).guidance == {}  # {} means none, not the defaults
