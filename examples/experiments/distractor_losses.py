"""Where a matcher's rank-1 goes when distractors join the gallery (issue 19).

    python examples/experiments/distractor_losses.py RUN [ARM ...] [--subset REGEX]

RUN is a finished ``c4s experiment`` folder. For each ARM (default: every arm
and baseline evaluated there) it pairs the probes of the small-gallery
protocol with the same probes against the enlarged gallery (aligned with
distractors, perturbed with forensic) from each evaluation's probes.jsonl, and
prints JSON: rank-1 per subset (the probe name's part matched by ``--subset``,
default "fs2k" for FS2K names, "other" for the rest), how many
probes already failed without distractors, and how many were first and lost
that place to a distractor photo.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

PAIRS = (("aligned", "distractors"), ("perturbed", "forensic"))


def _probes(folder: Path) -> dict[str, dict]:
    path = folder / "probes.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (evaluated by a c4s before per-probe records?)")
    return {r["probe"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def losses(run: Path, arm: str, subset: str = r"^(fs2k)") -> dict:
    """Per protocol pair: rank-1 by subset on both galleries, failures already
    there without distractors, and probes whose first place a distractor took."""
    pat = re.compile(subset)

    def sub(name: str) -> str:
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
    a = ap.parse_args()
    arms = a.arms or sorted({p.name[len("05-evaluate-"):].rsplit("-", 1)[0] for p in a.run.glob("05-evaluate-*-*")})
    print(json.dumps({arm: losses(a.run, arm, a.subset) for arm in arms}, indent=1))


if __name__ == "__main__":
    main()
