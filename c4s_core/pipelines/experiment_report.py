"""The experiment's report: metrics per arm and protocol, verdicts against the
baselines and the real-only arm, the CMC panels (``cmc.png``) and ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .experiment_protocols import _PROTOCOL_TEXT

if TYPE_CHECKING:
    from .experiment import Config

METRICS = (("rank-1", ("rank", "1")), ("rank-10", ("rank", "10")),
           ("TAR@FAR=1e-2", ("tar_at_far", "1e-02")), ("AUC", ("auc",)))


def _metrics(rep: dict[str, Any]) -> dict[str, float | None]:
    m = {}
    for label, keys in METRICS:
        v: Any = rep
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        m[label] = v
    return m


def _cmp(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    """(verdict, figures) of report a against report b: rank-1 decides, then AUC, then
    TAR at the smallest FAR (report.compare_sentence)."""
    from ..report import compare_sentence

    verdict, _ = compare_sentence(a, b)
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    return verdict, f"rank-1 {f(a['rank'].get('1'))} vs {f(b['rank'].get('1'))}, AUC {f(a.get('auc'))} vs {f(b.get('auc'))}"


def _verdicts(arms: list[str], baselines: list[str], reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in arms:
        v: dict[str, Any] = {}
        for other in [*baselines, "real"]:
            if other not in reports or other == arm:
                continue
            v[other] = {p: dict(zip(("verdict", "figures"), _cmp(reports[arm][p], reports[other][p]), strict=True))
                        for p in reports[arm]}
        out[arm] = v
    return out


def _label(name: str) -> str:
    return {"hog": "HOG", "dlib_resnet": "dlib ResNet", "real": "real-only"}.get(name, name)


def _sentence(arm: str, v: dict[str, Any]) -> str:
    parts = ["; ".join(f"{d['verdict']} {_label(other)} on {p} probes ({d['figures']})" for p, d in by.items())
             for other, by in v.items()]
    if not parts:
        return f"- **{arm}**: nothing to compare with."
    return f"- **{arm}** " + "; it ".join(parts) + "."


COLOURS = {"real": "tab:blue", "diffusion": "tab:red", "gan": "tab:green", "procedural": "tab:orange",
           "hog": "black", "dlib_resnet": "tab:gray"}


def _plot(reports: dict[str, dict[str, Any]], path: Path, max_rank: int = 50) -> None:
    """One CMC panel per protocol, every arm and baseline on each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protocols = list(dict.fromkeys(p for by in reports.values() for p in by))
    fig = Figure(figsize=(4.2 * len(protocols), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(protocols), squeeze=False)[0]
    for ax, p in zip(axes, protocols, strict=True):
        for name, by in reports.items():
            curve = (by.get(p) or {}).get("cmc") or []
            n = min(len(curve), max_rank)
            if n:
                base = name in ("hog", "dlib_resnet") or name not in COLOURS
                ax.plot(range(1, n + 1), curve[:n], color=COLOURS.get(name), ls="--" if base else "-",
                        lw=1.2 if base else 1.8, label=_label(name))
        ax.set_title(p)
        ax.set_xlabel("rank")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("identification rate")
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("CMC: same matcher, same budget, same held-out identities")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def _report(cfg: Config, res: dict[str, Any]) -> str:
    probes, budget, data = res["probes"], res["budget"], res["data"]
    labels = [m for m, _ in METRICS]
    ev = cfg.evaluation
    L = ["# c4s experiment", "",
         "Same matcher, same budget, same test split; arms differ only in the training data.", "",
         f"Train: {data['identities']['train']} real identities ({data['train_images']} images); "
         f"test: {data['identities']['test']} identities"
         + (f" (held out from train, test_fraction={cfg.test_fraction})" if data["split"] else "")
         + (f", plus {data['identities'].get('distractors')} distractor identities" if cfg.distractors else "")
         + (f"; new identities drawn: {data['identities'].get('new_identities')}" if "new_identities" in data["identities"] else "")
         + f". Budget: {budget['images_per_epoch']} images per epoch x {cfg.matcher.epochs} epochs = "
         f"{budget['steps']} optimizer steps per arm (batch {cfg.matcher.batch_size})."
         + (" All images grey." if ev.grayscale else ""), ""]
    names = list(cfg.arms) + [b for b in ev.baselines if b in res["metrics"]]
    for p in probes:
        c = res["counts"].get(p, {})
        L += [f"## {p}", "", f"{_PROTOCOL_TEXT[p]}; {c.get('probes_used')} probes, "
              f"{c.get('gallery_identities')} gallery identities.", "",
              "| matcher | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for name in names:
            by = res["metrics"][name].get(p, {})
            cells = ["–" if by.get(m) is None else f"{by[m]:.3f}" for m in labels]
            shown = f"{_label(name)} (no training on sketches)" if name in ev.baselines else name
            L.append(f"| {shown} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["## Verdicts", ""]
    L += [_sentence(arm, res["verdicts"][arm]) for arm in cfg.arms]
    for b in ev.baselines:
        learnt = [a for a in cfg.arms if b in res["verdicts"][a]]
        losers = [a for a in learnt if any(d["verdict"] != "beats" for d in res["verdicts"][a][b].values())]
        if learnt and len(losers) == len(learnt):
            L += ["", f"**No learnt matcher beats {_label(b)} on every protocol.** A learnt matcher must be shown "
                  "against the training-free baselines."]
        elif losers:
            L += ["", f"**Not beating {_label(b)} on every protocol: {', '.join(losers)}.**"]
    if res.get("judges"):
        L += _judge_table(res["judges"])
    L += ["", "## CMC", "", "![CMC](cmc.png)", "",
          "Each stage's folder (`01-data`, `02-generator-*`, `03-generated-*`, `04-matcher-*`, `05-evaluate-*`) "
          "holds its `config.yaml` and `stage.json` (seconds, peak memory); each evaluation has its own report.md "
          "with ROC, score histograms and worst failures.", ""]
    return "\n".join(L)


def _judge_table(judges: dict[str, Any]) -> list[str]:
    """Identity fidelity of each generated set (report-dataset's judge figures)."""
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    any_j = next(iter(judges.values()))
    L = ["", "## Identity fidelity of the generated sets", "",
         f"Judge: the real-only matcher (trained on the real training split only, never on generated sketches). "
         f"Each generated sketch is ranked against its set's reference photos, each real test sketch (resized to "
         f"the generated side) against its own photos; both galleries hold {any_j['identities']} identities "
         f"+ {any_j['distractors']} distractors. Fréchet distance: judge embeddings of generated vs real test "
         "sketches (lower is closer).", "",
         "| set | rank-1 | real rank-1 | ratio | rank-10 | gap | real gap | Fréchet | style acc. | diversity within |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, j in judges.items():
        g, r = j["generated"], j["real"]
        L.append(f"| {arm} | {f(g['rank1'])} | {f(r['rank1'])} | {f(j['rank1_ratio'])} | {f(g['rank10'])} | "
                 f"{f(g['gap'])} | {f(r['gap'])} | {f(j['frechet_distance'])} | {f((j.get('style') or {}).get('accuracy'))} | "
                 f"{f(j['diversity']['generated']['within_identity'])} |")
    return L
