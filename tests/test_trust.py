"""Trust: no pickle-based loading anywhere; tampered artefacts are refused;
evaluate gives the same figures from a torch matcher and from its ONNX export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import c4s_core
from c4s_core.errors import C4SError

ROOT = Path(__file__).resolve().parents[1]
TINY_IR = {"widths": [8, 8, 16, 16], "input_size": 32, "device": "cpu"}


def test_no_pickle_based_loading_in_the_code():
    bad = []
    for p in list((ROOT / "c4s_core").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                bad.append(f"{p.name}:{i}: {line.strip()}")
            if re.search(r"^\s*import pickle|pickle\.loads?\(|allow_pickle=True", code):
                bad.append(f"{p.name}:{i}: {line.strip()}")
    assert not bad, "pickle-based loading:\n" + "\n".join(bad)


@pytest.fixture
def matcher_folder(tmp_path):
    from c4s_core.pipelines.train_matcher import save_matcher

    bb = c4s_core.get_registries().backbone.build("ir_18", TINY_IR)
    save_matcher(tmp_path / "m", bb, "ir_18", {"data_hash": "test"})
    return tmp_path / "m"


def test_tampered_matcher_weights_are_refused(matcher_folder):
    reg = c4s_core.get_registries().backbone
    reg.build("matcher", {"path": str(matcher_folder), "device": "cpu"})  # intact: loads
    w = matcher_folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(C4SError, match="does not match matcher.json"):
        reg.build("matcher", {"path": str(matcher_folder), "device": "cpu"})


def test_evaluate_same_figures_from_torch_and_onnx(matcher_folder, tmp_path):
    from c4s_core.pipelines import evaluate
    from c4s_core.pipelines import export as export_pipe

    exp = export_pipe.run(export_pipe.Config(
        backbone={"name": "matcher", "options": {"path": str(matcher_folder)}},
        out=tmp_path / "onnx", check_batches=[1, 5], parity={"count": 6}), progress=False)
    data = {"name": "synthfaces", "options": {"num_identities": 12, "size": 64}}
    common = dict(probes=data, gallery=data, aligner={"name": "center", "options": {"box": [0, 0, 1, 1]}})
    r_torch = evaluate.run(evaluate.Config(
        **common, backbone={"name": "matcher", "options": {"path": str(matcher_folder), "device": "cpu"}},
        out=tmp_path / "ev-torch"), progress=False)
    r_onnx = evaluate.run(evaluate.Config(
        **common, backbone={"name": "onnx", "options": {"path": str(exp["model"])}},
        out=tmp_path / "ev-onnx"), progress=False)
    assert r_torch["rank"] == r_onnx["rank"]
    assert r_torch["auc"] == pytest.approx(r_onnx["auc"], abs=1e-3)
    t = json.loads((tmp_path / "ev-torch" / "report.json").read_text())
    assert t["counts"]["probes_used"] == 24
