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


def test_groups_by_a_column_of_a_table_keyed_by_probe_name(tmp_path):
    """--by pairs.csv:sketch_style: FS2K's artists as groups; names the table
    lacks (CUFS) fall back to the name pattern."""
    _write(tmp_path / "05-evaluate-real-perturbed", {"fs2k_a": 1, "fs2k_b": 1, "fs2k_c": 1, "AR_1": 1})
    _write(tmp_path / "05-evaluate-real-forensic", {"fs2k_a": 4, "fs2k_b": 1, "fs2k_c": 1, "AR_1": 1})
    table = tmp_path / "pairs.csv"
    table.write_text("name,sketch_style\nfs2k_a,0\nfs2k_b,1\nfs2k_c,0\n")
    mod = _module()
    rows = mod.losses(tmp_path, "real", groups=mod.read_groups(f"{table}:sketch_style"))["perturbed->forensic"]
    assert set(rows) == {"sketch_style=0", "sketch_style=1", "other"}
    assert rows["sketch_style=0"]["probes"] == 2 and rows["sketch_style=0"]["lost_to_distractors"] == 1
    assert rows["sketch_style=0"]["rank1_forensic"] == 0.5 and rows["sketch_style=1"]["rank1_forensic"] == 1.0
    with pytest.raises(SystemExit, match="needs a 'name' and a 'artist' column"):
        mod.read_groups(f"{table}:artist")
