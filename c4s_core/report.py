"""Figures and the markdown summary of an evaluation.

matplotlib (Agg canvas, no pyplot state) and Pillow are imported inside the
functions, so importing this module stays cheap. Every file is written
atomically (a temporary name, then a rename).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "compare_sentence",
    "failure_sheet",
    "plot_cmc",
    "plot_roc",
    "plot_scores",
    "write_markdown",
]


def _figure(w: float = 5.0, h: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def plot_cmc(curves: Mapping[str, Sequence[float]], path: Path, max_rank: int = 50) -> None:
    """CMC curves (identification rate against rank), one line per label."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, curve in curves.items():
        n = min(len(curve), max_rank)
        ax.plot(range(1, n + 1), list(curve)[:n], marker="o", markersize=3, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("CMC")
    _save(fig, path)


def plot_roc(rocs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """ROC curves: TAR against FAR on a log axis, one line per label."""
    fig = _figure()
    ax = fig.add_subplot()
    lo = 1.0
    for label, (far, tar) in rocs.items():
        if len(far):
            ax.plot(far, tar, label=label)
            lo = min(lo, float(np.min(far)))
    ax.set_xscale("log")
    ax.set_xlim(min(lo, 1e-3), 1.0)
    ax.set_ylim(0, 1.02)
    for f in (1e-3, 1e-2, 1e-1):
        ax.axvline(f, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("ROC")
    _save(fig, path)


def plot_scores(genuine: np.ndarray, impostor: np.ndarray, path: Path, title: str = "",
                thresholds: Mapping[str, float] | None = None) -> None:
    """Histograms (density) of genuine and impostor pair scores, with optional
    vertical lines at named thresholds (e.g. the one of FAR=1e-2)."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    both = [x for x in (genuine, impostor) if len(x)]
    lo = min(float(np.min(x)) for x in both) if both else 0.0
    hi = max(float(np.max(x)) for x in both) if both else 1.0
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 61)
    for x, label, colour in ((impostor, "impostor", "tab:red"), (genuine, "genuine", "tab:green")):
        if len(x):
            h, e = np.histogram(x, bins=bins, density=True)
            ax.stairs(h, e, fill=True, alpha=0.45, color=colour, label=f"{label} ({len(x):,} pairs)")
    for k, (name, t) in enumerate((thresholds or {}).items()):
        ax.axvline(t, color="k", lw=0.8, ls="--")
        ax.text(t, ax.get_ylim()[1] * (0.97 - 0.07 * k), f" {name}", fontsize=7, va="top")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend(loc="upper left")
    ax.set_title(title or "pair scores")
    _save(fig, path)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumb(image: np.ndarray | None, size: int) -> np.ndarray:
    from PIL import Image

    if image is None:
        return np.full((size, size, 3), 200, np.uint8)
    im = Image.fromarray(np.asarray(image, np.uint8))
    im.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return np.asarray(canvas)


def failure_sheet(rows: Sequence[Sequence[tuple[np.ndarray | None, Sequence[str]]]], path: Path,
                  thumb: int = 128, header: Sequence[str] = ("probe", "top wrong match", "true mate")) -> None:
    """Contact sheet: one row per failure, each cell an image with text lines
    under it (identity, score...). ``rows[i][j] = (image, lines)``."""
    from PIL import Image, ImageDraw

    from .data.io import save_image

    font, small = _font(13), _font(11)
    ncol = max((len(r) for r in rows), default=len(header))
    cell_w, text_h, head_h, pad = max(thumb, 170), 34, 22, 6
    W = pad + ncol * (cell_w + pad)
    H = head_h + pad + len(rows) * (thumb + text_h + pad)
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(header[:ncol]):
        draw.text((pad + j * (cell_w + pad), 4), name, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = head_h + pad + i * (thumb + text_h + pad)
        for j, (image, lines) in enumerate(row):
            x = pad + j * (cell_w + pad)
            sheet.paste(Image.fromarray(_thumb(image, thumb)), (x + (cell_w - thumb) // 2, y))
            for k, line in enumerate(list(lines)[:2]):
                draw.text((x, y + thumb + 2 + 15 * k), _clip(str(line), cell_w, small, draw),
                          fill=(160, 0, 0) if j == 1 else (0, 0, 0), font=small)
    save_image(path, np.asarray(sheet))


def _clip(text: str, width: int, font, draw) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _headline(rep: Mapping[str, Any]) -> list[tuple[str, Any]]:
    cols = [(f"rank-{k}", v) for k, v in rep["rank"].items()]
    cols += [(f"TAR@FAR={k}", v) for k, v in rep["tar_at_far"].items()]
    cols.append(("AUC", rep.get("auc")))
    return cols


def _intervals(ci: Mapping[str, Any]) -> dict[str, str]:
    """Headline label -> "[low, high]" of an evaluate report's ``intervals``."""
    out = {}
    for group, prefix in (("rank", "rank-"), ("tar_at_far", "TAR@FAR=")):
        for k, x in (ci.get(group) or {}).items():
            out[f"{prefix}{k}"] = "–" if x is None else f"[{x[0]:.3f}, {x[1]:.3f}]"
    return out


def _baseline_label(base: Mapping[str, Any]) -> str:
    name = str(base.get("backbone", "baseline"))
    return "the HOG baseline" if name == "hog" else f"the baseline ({name})"


def compare_sentence(rep: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[str, str]:
    """``(verdict, sentence)``: verdict is "beats", "does not beat" or "ties with";
    rank-1 decides, then AUC, then TAR at the smallest FAR both measured."""
    name, label = str(rep.get("backbone", "this backbone")), _baseline_label(base)
    keys = [("rank-1", rep["rank"].get("1"), base["rank"].get("1")), ("AUC", rep.get("auc"), base.get("auc"))]
    for far in sorted(rep.get("tar_at_far", {}), key=float):
        keys.append((f"TAR@FAR={far}", rep["tar_at_far"][far], base.get("tar_at_far", {}).get(far)))
    verdict = "ties with"
    for _, a, b in keys:
        if a is not None and b is not None and abs(a - b) > 1e-9:
            verdict = "beats" if a > b else "does not beat"
            break
    parts = [f"{k} {_fmt(a)} vs {_fmt(b)}" for k, a, b in keys if a is not None or b is not None]
    s = f"**{name} {verdict} {label}** on the same data: " + "; ".join(parts) + "."
    cp, cb = rep.get("counts", {}), base.get("counts", {})
    if cb and (cp.get("probes_used"), cp.get("gallery_identities")) != (cb.get("probes_used"), cb.get("gallery_identities")):
        s = s.replace("on the same data", "(measured on different data!)")
        s += (f" Careful: the baseline used {cb.get('probes_used')} probes against {cb.get('gallery_identities')} "
              f"gallery identities, this run {cp.get('probes_used')} against {cp.get('gallery_identities')}.")
    return verdict, s


def write_markdown(rep: Mapping[str, Any], path: Path) -> None:
    """``report.md``: headline table (with the baseline beside it), the
    comparison sentence, per-subset table, figures and worst failures."""
    from .data.io import atomic_write_bytes

    base = rep.get("baseline")
    name = str(rep.get("backbone"))
    c = rep["counts"]
    L = [f"# c4s evaluate: {name} / {rep.get('aligner')}", ""]
    if base:
        L += [base["sentence"], ""]
    L += [
        f"{c['probes_used']} probes with a mate in the gallery ({c['probes']} probes read, "
        f"{c['probes_without_mate']} without a mate), {c['gallery']} gallery images and {c['distractors']} "
        f"distractors ({c['gallery_identities']} identities); {c['genuine_pairs']:,} genuine and "
        f"{c['impostor_pairs']:,} impostor pairs; {c['no_face']} images without a face, "
        f"{c['skipped_files']} unreadable files skipped. {rep.get('seconds')} s.",
        "",
    ]
    ci = rep.get("intervals") or {}
    head = ["metric", name] + (["95 % interval"] if ci else []) + (
        [_baseline_label(base).removeprefix("the ")] if base else [])
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bcols = dict(_headline(base)) if base else {}
    cis = _intervals(ci)
    for k, v in _headline(rep):
        L.append(f"| {k} | {_fmt(v)} |" + (f" {cis.get(k, '–')} |" if ci else "")
                 + (f" {_fmt(bcols.get(k))} |" if base else ""))
    L.append("")
    if ci:
        L += [f"Intervals: {ci['level']:.0%} percentile bootstrap, {ci['resamples']} resamples (seed {ci['seed']}) "
              f"of the {ci['identities']} probe identities (a person's sketches move together); TAR's threshold "
              "is recomputed in every resample. Per-probe ranks and scores: probes.jsonl.", ""]
    subsets = rep.get("subsets") or {}
    if subsets:
        first = next(iter(subsets.values()))
        cols = [k for k, _ in _headline(first)]
        L += ["## Per subset", "", f"Subsets from {rep.get('subset_source')}.", "",
              "| subset | probes | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
        for s, m in subsets.items():
            L.append(f"| {s} | {m['probes_used']} | " + " | ".join(_fmt(v) for _, v in _headline(m)) + " |")
        L.append("")
    files = rep.get("files", {})
    figs = [(k, files[k]) for k in ("cmc", "roc", "scores") if k in files]
    if figs:
        L += ["## Figures", ""] + [f"![{k}]({f})" for k, f in figs] + [""]
    L += ["## Worst failures", ""]
    worst = rep.get("worst_failures") or []
    if not worst:
        L += ["No failures to show: every probe's mate is ranked first." if c["probes_used"]
              else "No probe has a mate in the gallery.", ""]
    else:
        L += ["Probes whose mate ranked lowest (ties: largest margin of the top wrong match over the mate). "
              "Columns: probe, the wrong gallery image ranked highest, the true mate.", ""]
        if "worst_failures" in files:
            L += [f"![worst failures]({files['worst_failures']})", ""]
        L += ["| # | probe | rank | mate score | top wrong match | its score |", "|---|---|---|---|---|---|"]
        for i, w in enumerate(worst, 1):
            L.append(f"| {i} | {w['probe']} | {w['rank']} | {_fmt(w['mate_score'])} | {w['top_identity']} | "
                     f"{_fmt(w['top_score'])} |")
        L.append("")
    atomic_write_bytes(Path(path), "\n".join(L).encode())
