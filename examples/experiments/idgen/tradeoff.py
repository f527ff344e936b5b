"""Identity against style across judged sets: one point per set (issue 18).

    python examples/experiments/idgen/tradeoff.py OUT.png SET_DIR[=LABEL] ... [--json DIR]

Each SET_DIR is a set judged by judge.sh (its report/report.json holds the
judge block). The plot puts the judge's rank-1 ratio (generated / real) against
style accuracy, with the goal's corner (ratio >= 0.8, style >= 0.65) shaded;
``--json DIR`` also writes each set's judge block to DIR/NAME.json, the form
docs/results/identity-generator/ keeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("sets", nargs="+", help="SET_DIR or SET_DIR=LABEL")
    ap.add_argument("--json", type=Path, default=None, help="write each set's judge block here")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.axvspan(0.8, 1.05, ymin=0.65 / 1.05, color="tab:green", alpha=0.12, label="goal")
    for item in a.sets:
        path, _, label = item.partition("=")
        d = Path(path)
        rep = json.loads((d / "report" / "report.json").read_text())
        j = rep.get("judge")
        if not j:
            raise SystemExit(f"{d}/report/report.json has no judge block; run judge.sh on it first")
        style = (j.get("style") or {}).get("accuracy")
        y = 0.02 if style is None else style  # no artist style (procedural): on the floor, marked x
        # a legend, not annotations: nearby points' labels overlapped
        ax.scatter([j["rank1_ratio"]], [y], s=40, marker="x" if style is None else "o",
                   label=(label or d.name) + (" (no artist style)" if style is None else ""))
        if a.json:
            a.json.mkdir(parents=True, exist_ok=True)
            keep = {k: rep.get(k) for k in ("sketches", "identities", "styles", "samplers")}
            (a.json / f"{d.name}.json").write_text(json.dumps({"set": d.name, "judge": j, **keep}, indent=1) + "\n")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("judge rank-1, generated / real sketches")
    ax.set_ylabel("style accuracy (4 artist styles)")
    ax.set_title("Identity against style")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=120)
    print(a.out)


if __name__ == "__main__":
    main()
