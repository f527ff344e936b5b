"""The same people drawn by several generated sets, side by side (issue 18).

    python examples/experiments/idgen/side_by_side.py OUT.png SET_DIR[=LABEL] ... [--people 8] [--style cufs]

Each SET_DIR is a `c4s generate` folder (its manifest.jsonl). One row per
person drawn in every set (the first ``--people`` in sorted order, so every
call shows the same people): the reference photo, then each set's first sketch
of that person (in ``--style`` when given). A person missing from a set is
an error naming the set: the sets must draw the same people.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(folder: Path, style: str | None) -> tuple[dict[str, Path], dict[str, Path]]:
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{folder}: no manifest.jsonl (not a `c4s generate` folder)")
    photos, sketches = {}, {}
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
        except ValueError as e:
            raise SystemExit(f"{manifest}:{n}: not JSON ({e})") from None
        if r.get("modality") == "photo":
            photos.setdefault(r["identity"], folder / r["path"])
        elif style is None or r.get("style") == style:
            sketches.setdefault(r["identity"], folder / r["path"])
    return photos, sketches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("sets", nargs="+", help="SET_DIR or SET_DIR=LABEL")
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--style", default=None, help="show sketches of this style only")
    a = ap.parse_args()
    import numpy as np
    from PIL import Image

    from c4s_core.data.io import load_image
    from c4s_core.report import failure_sheet

    def load(path: Path) -> np.ndarray:  # 64 px sketches shown at the sheet's cell size
        return np.asarray(Image.fromarray(load_image(path)).resize((128, 128), Image.BICUBIC))

    sets = [(Path(s.split("=", 1)[0]), s.split("=", 1)[1] if "=" in s else Path(s).name) for s in a.sets]
    loaded = [_rows(folder, a.style) for folder, _ in sets]
    common = set.intersection(*(set(sketches) for _, sketches in loaded))
    people = sorted(common)[: a.people]
    if not people:
        raise SystemExit("no person is drawn in every set" + (f" in style {a.style!r}" if a.style else ""))
    photos = loaded[0][0]
    rows = [[(load(photos[p]) if p in photos else None, [p])]
            + [(load(sk[p]), [label]) for (_, label), (_, sk) in zip(sets, loaded, strict=True)]
            for p in people]
    failure_sheet(rows, a.out, thumb=128, header=["photo"] + [label for _, label in sets])
    print(json.dumps({"out": str(a.out), "people": people, "sets": [label for _, label in sets]}))


if __name__ == "__main__":
    main()
