import pytest
from pydantic import Field

import c4s_core
from c4s_core.errors import (
    ConfigError,
    DuplicateComponentError,
    RegistrationError,
    UnknownComponentError,
)
from c4s_core.registry import Origin, Registry


class Thing:
    """A thing for tests."""

    name = "ir50"
    aliases = ("r50",)

    class Config(c4s_core.ComponentConfig):
        depth: int = Field(50, ge=18, le=152, description="Depth.")
        mode: str = Field("a", description="Mode.")

    def __init__(self, config):
        self.config = config


A = Origin("plugin-a", "dist-a", "1.0")
B = Origin("plugin-b", "dist-b", "2.0")


def test_register_and_get_by_alias():
    reg = Registry("backbone")
    reg.register(Thing, origin=A)
    assert reg.get("r50").cls is Thing
    assert reg.get("ir50").origin == A
    assert "r50" in reg and "r18" not in reg


def test_duplicate_name_names_both_origins():
    reg = Registry("backbone")
    reg.register(Thing, origin=A)
    with pytest.raises(DuplicateComponentError) as e:
        reg.register(Thing, origin=B)
    msg = str(e.value)
    assert "plugin-a" in msg and "dist-a" in msg and "plugin-b" in msg and "dist-b" in msg


def test_duplicate_alias_is_an_error():
    reg = Registry("backbone")
    reg.register(Thing, origin=A)
    with pytest.raises(DuplicateComponentError, match="'r50'"):
        reg.register(Thing, origin=B, name="other", aliases=("r50",))


def test_unknown_name_suggests_nearest():
    reg = Registry("backbone")
    reg.register(Thing, origin=A)
    with pytest.raises(UnknownComponentError) as e:
        reg.get("ir05")
    assert isinstance(e.value, KeyError)
    assert "Did you mean 'ir50'" in str(e.value) and "Available: ir50" in str(e.value)


def test_bad_config_field_reported_by_name():
    reg = Registry("backbone")
    reg.register(Thing, origin=A)
    with pytest.raises(ConfigError) as e:
        reg.build("ir50", {"depth": 7, "colour": "x"})
    msg = str(e.value)
    assert "depth" in msg and "greater than or equal to 18" in msg
    assert "colour: unknown field" in msg
    assert reg.build("r50", {"depth": 100}).config.depth == 100


def test_registration_contract_checked():
    reg = Registry("backbone")

    class NoConfig:
        """x"""
        name = "nc"

    class LooseConfig:
        """x"""
        name = "lc"

        class Config(c4s_core.C4SModel.__base__):  # plain pydantic BaseModel: allows extra keys
            pass

    with pytest.raises(RegistrationError, match="no pydantic Config"):
        reg.register(NoConfig, origin=A)
    with pytest.raises(RegistrationError, match="forbid unknown keys"):
        reg.register(LooseConfig, origin=A)
    with pytest.raises(RegistrationError, match="expected a class"):
        reg.register(Thing(Thing.Config()), origin=A)


def test_builtin_registries_have_origins():
    regs = c4s_core.get_registries()
    e = regs.dataset.get("paired_folder")
    assert e.origin.plugin == "datasets" and e.origin.distribution == "clip4sketch"
    with pytest.raises(UnknownComponentError, match="unknown component kind"):
        regs["backbones"]
