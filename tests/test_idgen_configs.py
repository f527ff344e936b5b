"""The issue-18 configs in examples/experiments/idgen load and validate as the
pipelines they are written for, down to each generator's options and the
identity-loss recogniser, so a renamed field or plugin fails here, not in a
run that needs the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from c4s_core.config import load_config
from c4s_core.errors import ConfigError
from c4s_core.pipelines import generate, report_dataset, train_generator
from c4s_core.plugins import get_registries

IDGEN = Path(__file__).resolve().parents[1] / "examples/experiments/idgen"
PIPELINE = {"generate-test.yaml": generate.Config, "report-test.yaml": report_dataset.Config}


@pytest.mark.parametrize("name", sorted(p.name for p in IDGEN.glob("*.yaml")))
def test_idgen_config_validates(name):
    model = PIPELINE.get(name, train_generator.Config)
    cfg = load_config(model, IDGEN / name)
    if model is train_generator.Config:
        gen = get_registries().generator.config(cfg.generator.name, cfg.generator.options)
        assert cfg.steps >= 1000 and cfg.out.parts[:2] == ("c4s-out", "idgen")
        loss = getattr(gen, "identity_loss", None)
        if loss is not None:  # the recogniser must exist and must not be a matcher folder (the judge is one)
            assert loss.backbone.name in get_registries().backbone.names() and loss.backbone.name != "matcher"


def test_a_bad_identity_loss_weight_is_named():
    cfg = load_config(train_generator.Config, IDGEN / "spatial-id-mfn.yaml",
                      ["generator.options.identity_loss.weight=-1"])
    with pytest.raises(ConfigError, match=r"identity_loss\.weight"):
        get_registries().generator.config(cfg.generator.name, cfg.generator.options)
