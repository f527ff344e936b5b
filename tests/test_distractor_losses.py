"""examples/experiments/distractor_losses.py pairs each probe's rank without and
with distractors; a probe first without them and not with them lost to one."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("distractor_losses", ROOT / "examples/experiments/distractor_losses.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(folder: Path, ranks: dict[str, int]):
    folder.mkdir(parents=True)
    (folder / "probes.jsonl").write_text("".join(json.dumps({"probe": k, "rank": r}) + "\n" for k, r in ranks.items()))


def test_counts_probes_whose_first_place_a_distractor_took(tmp_path):
    small = {"fs2k_a": 1, "fs2k_b": 1, "fs2k_c": 3, "AR_1": 1}
    big = {"fs2k_a": 1, "fs2k_b": 2, "fs2k_c": 9, "AR_1": 1}
    _write(tmp_path / "05-evaluate-real-aligned", small)
    _write(tmp_path / "05-evaluate-real-distractors", big)
    out = _module().losses(tmp_path, "real")
    assert set(out) == {"aligned->distractors"}  # perturbed/forensic were not evaluated
    fs2k, other = out["aligned->distractors"]["fs2k"], out["aligned->distractors"]["other"]
    assert fs2k == {"probes": 3, "rank1_aligned": 0.667, "rank1_distractors": 0.333,
                    "failed_without_distractors": 1, "lost_to_distractors": 1}
    assert other["lost_to_distractors"] == 0 and other["rank1_distractors"] == 1.0


def test_refuses_evaluations_of_different_probes(tmp_path):
    _write(tmp_path / "05-evaluate-real-aligned", {"fs2k_a": 1})
    _write(tmp_path / "05-evaluate-real-distractors", {"fs2k_b": 1})
    with pytest.raises(SystemExit, match="ranked different probes"):
        _module().losses(tmp_path, "real")
