"""What filtering buys: the judge's figures against the share of sketches kept.

    python examples/experiments/idgen/filter_curve.py OUT.png DIR=LABEL ... [--json FILE]

Each DIR is a `c4s filter-set` output (filter.json) judged into DIR/report
(`c4s report-dataset --set path=DIR --out DIR/report` with a judge), or an
unfiltered generated set with its judged report/ (kept share 1). DIRs with the
same LABEL are one line. Left: judge rank-1 ratio (generated / real sketches of
the same gallery size); right: style accuracy; the goal's lines dashed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def point(d: Path) -> dict:
    rep = d / "report" / "report.json"
    if not rep.is_file():
        raise SystemExit(f"{rep} not found: judge the set first (report-dataset --out {d / 'report'})")
    j = json.loads(rep.read_text()).get("judge")
    if not j:
        raise SystemExit(f"{rep} has no judge block")
    f = json.loads((d / "filter.json").read_text()) if (d / "filter.json").is_file() else None
    return {"dir": d.name, "far": f and f["far"], "threshold": f and f["threshold"],
            "kept_share": f["kept_share"] if f else 1.0, "kept_sketches": f and f["kept_sketches"],
            "kept_identities": f and f["kept_identities"], "identities": j["identities"],
            "generated_rank1": j["generated"]["rank1"], "real_rank1": j["real"]["rank1"],
            "rank1_ratio": j["rank1_ratio"], "style_accuracy": (j.get("style") or {}).get("accuracy"),
            "frechet": j.get("frechet_distance")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("sets", nargs="+", help="DIR=LABEL")
    ap.add_argument("--json", type=Path, default=None, help="write every point here")
    a = ap.parse_args()
    lines: dict[str, list[dict]] = defaultdict(list)
    for item in a.sets:
        path, _, label = item.partition("=")
        lines[label or "set"].append(point(Path(path)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    for label, pts in lines.items():
        pts.sort(key=lambda p: p["kept_share"])
        x = [p["kept_share"] for p in pts]
        left.plot(x, [p["rank1_ratio"] for p in pts], "o-", label=label)
        right.plot(x, [p["style_accuracy"] for p in pts], "o-", label=label)
    for ax, goal, name in ((left, 0.8, "judge rank-1, generated / real"), (right, 0.65, "style accuracy")):
        ax.axhline(goal, color="k", ls="--", lw=0.8)
        ax.set_xlabel("share of sketches kept")
        ax.set_ylabel(name)
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
    left.legend(fontsize=8)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=120)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(lines, indent=1) + "\n")
    print(a.out)


if __name__ == "__main__":
    main()
