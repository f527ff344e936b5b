"""Where a matcher's rank-1 goes when distractors join the gallery (issue 19).

    python examples/experiments/distractor_losses.py RUN [ARM ...] [--subset REGEX] [--by CSV:COLUMN]

RUN is a finished ``c4s experiment`` folder. For each ARM (default: every arm
and baseline evaluated there) it pairs the probes of the small-gallery
protocol with the same probes against the enlarged gallery (aligned with
distractors, perturbed with forensic) from each evaluation's probes.jsonl, and
prints JSON: rank-1 per subset (the probe name's part matched by ``--subset``,
default "fs2k" for FS2K names, "other" for the rest), how many
probes already failed without distractors, and how many were first and lost
that place to a distractor photo. ``--by CSV:COLUMN`` groups by a column of a
table keyed by probe name (its ``name`` column) instead, e.g.
``../shared/data/fs2k_train/pairs.csv:sketch_style`` for FS2K's three artists;
probes the table does not name fall back to ``--subset``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

PAIRS = (("aligned", "distractors"), ("perturbed", "forensic"))


def _probes(folder: Path) -> dict[str, dict]:
    path = folder / "probes.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (evaluated by a c4s before per-probe records?)")
    return {r["probe"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def read_groups(spec: str) -> dict[str, str]:
    """``CSV:COLUMN`` -> {probe name: "COLUMN=value"} from the table's ``name`` column."""
    path, _, column = spec.rpartition(":")
    if not path or not column:
        raise SystemExit(f"--by {spec!r}: give CSV:COLUMN")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "name" not in rows[0] or column not in rows[0]:
        raise SystemExit(f"{path}: needs a 'name' and a {column!r} column (has {', '.join(rows[0]) if rows else 'no rows'})")
    return {r["name"]: f"{column}={r[column]}" for r in rows}


def losses(run: Path, arm: str, subset: str = r"^(fs2k)", groups: dict[str, str] | None = None) -> dict:
    """Per protocol pair: rank-1 by subset on both galleries, failures already
    there without distractors, and probes whose first place a distractor took.
    ``groups``: probe name -> its group, before ``subset``."""
    pat = re.compile(subset)
    groups = groups or {}

    def sub(name: str) -> str:
        if name in groups:
            return groups[name]
        m = pat.search(name)
        return m.group(1) if m else "other"

    out = {}
    for small, big in PAIRS:
        a, b = run / f"05-evaluate-{arm}-{small}", run / f"05-evaluate-{arm}-{big}"
        if not (a.is_dir() and b.is_dir()):
            continue
        pa, pb = _probes(a), _probes(b)
        if pa.keys() != pb.keys():
            raise SystemExit(f"{a} and {b} ranked different probes")
        rows = {}
        for name in sorted({sub(k) for k in pa}):
            ks = [k for k in pa if sub(k) == name]
            rows[name] = {"probes": len(ks),
                          f"rank1_{small}": round(sum(pa[k]["rank"] == 1 for k in ks) / len(ks), 3),
                          f"rank1_{big}": round(sum(pb[k]["rank"] == 1 for k in ks) / len(ks), 3),
                          "failed_without_distractors": sum(pa[k]["rank"] > 1 for k in ks),
                          "lost_to_distractors": sum(pa[k]["rank"] == 1 and pb[k]["rank"] > 1 for k in ks)}
        out[f"{small}->{big}"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("arms", nargs="*")
    ap.add_argument("--subset", default=r"^(fs2k)", help="regex; group 1 names a probe's subset ('other' if none)")
    ap.add_argument("--by", help="CSV:COLUMN: group by that column of a table keyed by probe name")
    a = ap.parse_args()
    groups = read_groups(a.by) if a.by else None
    arms = a.arms or sorted({p.name[len("05-evaluate-"):].rsplit("-", 1)[0] for p in a.run.glob("05-evaluate-*-*")})
    print(json.dumps({arm: losses(a.run, arm, a.subset, groups) for arm in arms}, indent=1))


if __name__ == "__main__":
    main()
