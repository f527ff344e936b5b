"""examples/experiments/idgen/side_by_side.py: one sheet, a row per person drawn
in every set, each cell that set's sketch of that person."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from c4s_core.data.io import load_image, save_image

TOOL = Path(__file__).resolve().parents[1] / "examples/experiments/idgen/side_by_side.py"


def _set(root: Path, colour: tuple[int, int, int], people: list[str]) -> Path:
    rows = []
    for p in people:
        save_image(root / p / "photo.png", np.full((64, 64, 3), 90, np.uint8))
        save_image(root / p / "cufs_0.png", np.full((64, 64, 3), colour, np.uint8))
        rows += [{"path": f"{p}/photo.png", "identity": p, "modality": "photo"},
                 {"path": f"{p}/cufs_0.png", "identity": p, "modality": "sketch", "style": "cufs", "k": 0}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


def test_each_cell_shows_that_sets_sketch_of_the_rows_person(tmp_path):
    red = _set(tmp_path / "a", (250, 0, 0), ["p1", "p2", "p3"])
    blue = _set(tmp_path / "b", (0, 0, 250), ["p2", "p3"])  # p1 is not drawn here: not shown
    out = tmp_path / "sheet.png"
    r = _run(str(out), f"{red}=A", f"{blue}=B", "--style", "cufs")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["people"] == ["p2", "p3"]
    sheet = load_image(out)
    # failure_sheet's layout: 170 px cells, 6 px padding, 22 px header, 34 px of text under each 128 px image
    assert sheet.shape[:2] == (22 + 6 + 2 * (128 + 34 + 6), 6 + 3 * (170 + 6))
    for row in range(2):
        y = 22 + 6 + row * (128 + 34 + 6) + 64
        cells = [sheet[y, 6 + col * 176 + 21 + 64] for col in range(3)]
        assert cells[0].tolist() == [90, 90, 90]
        assert cells[1].tolist() == [250, 0, 0] and cells[2].tolist() == [0, 0, 250]


@pytest.mark.parametrize("case", ["disjoint", "not_a_set"])
def test_sets_without_common_people_or_manifest_are_named(tmp_path, case):
    a = _set(tmp_path / "a", (250, 0, 0), ["p1"])
    b = _set(tmp_path / "b", (0, 0, 250), ["p2"]) if case == "disjoint" else tmp_path / "empty"
    b.mkdir(exist_ok=True)
    r = _run(str(tmp_path / "sheet.png"), str(a), str(b))
    assert r.returncode != 0 and not (tmp_path / "sheet.png").exists()
    assert ("no person is drawn in every set" if case == "disjoint" else f"{b}: no manifest.jsonl") in r.stderr


CURVE = TOOL.parent / "filter_curve.py"


def _judged(d: Path, ratio: float, style: float, kept: float | None) -> Path:
    j = {"identities": 10, "generated": {"rank1": ratio / 2}, "real": {"rank1": 0.5}, "rank1_ratio": ratio,
         "style": {"accuracy": style}, "frechet_distance": 0.3}
    (d / "report").mkdir(parents=True)
    (d / "report" / "report.json").write_text(json.dumps({"judge": j}))
    if kept is not None:
        (d / "filter.json").write_text(json.dumps({"far": 0.01, "threshold": 0.9, "kept_share": kept,
                                                   "kept_sketches": 5, "kept_identities": 4}))
    return d


def test_filter_curve_puts_each_judged_set_at_its_kept_share(tmp_path):
    full = _judged(tmp_path / "full", 0.5, 0.7, None)
    strict = _judged(tmp_path / "strict", 0.8, 0.6, 0.2)
    out, js = tmp_path / "curve.png", tmp_path / "curve.json"
    r = subprocess.run([sys.executable, str(CURVE), str(out), f"{strict}=A", f"{full}=A", "--json", str(js)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pts = json.loads(js.read_text())["A"]
    assert [(p["dir"], p["kept_share"], p["rank1_ratio"], p["style_accuracy"]) for p in pts] == [
        ("strict", 0.2, 0.8, 0.6), ("full", 1.0, 0.5, 0.7)]  # sorted by the share kept; unfiltered: all of it
    assert out.read_bytes()[:4] == b"\x89PNG"
    r = subprocess.run([sys.executable, str(CURVE), str(out), str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode != 0 and "report.json not found" in r.stderr
