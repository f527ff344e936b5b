"""The experiment's report: metrics per arm and protocol with their bootstrap
intervals, paired bootstrap differences of rank-1, verdicts against the
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


def _intervals(rep: dict[str, Any]) -> dict[str, list[float] | None]:
    """The 95 % interval of each of METRICS in an evaluate report (none for AUC, or without bootstrap)."""
    ci = rep.get("intervals") or {}
    out = {}
    for label, keys in METRICS:
        if keys[0] in ("rank", "tar_at_far"):
            out[label] = (ci.get(keys[0]) or {}).get(keys[1])
    return out


def _paired(a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None) -> tuple[list, list, list] | None:
    """(ranks a, ranks b, probe identities) of the probes both per-probe lists hold, in a's order.

    A probe is its index, identity and the last two parts of its path (identity
    folder, file): an experiment copied to another folder and resumed (the
    documented way to rerun some arms) evaluates its new arms on the same
    images under another absolute path."""
    if not a or not b:
        return None
    rb = {_probe_key(r): r["rank"] for r in b}
    both = [r for r in a if _probe_key(r) in rb]
    if not both:
        return None
    return [r["rank"] for r in both], [rb[_probe_key(r)] for r in both], [r["probe"] for r in both]


def _probe_key(r: dict[str, Any]) -> tuple:
    """A probe record's identity across copies of one experiment: index, identity, identity folder and file."""
    return r.get("i"), r.get("probe"), Path(r.get("path") or "").parts[-2:]


def _differences(arms: list[str], baselines: list[str], per_probe: dict[str, dict[str, Any]],
                 resamples: int, seed: int) -> dict[str, Any]:
    """Rank-1 of each arm (and baseline) minus rank-1 of real-only and of each
    baseline, per protocol, with a paired bootstrap interval over probe
    identities (metrics.paired_rank_difference: the same resampled identities
    for both). ``{name: {other: {protocol: {difference, low, high, ...} | None}}}``;
    None where an evaluation has no probes.jsonl (run by an older c4s)."""
    out: dict[str, Any] = {}
    for name in [*arms, *baselines]:
        for other in [*baselines, "real"]:
            if other == name or other not in per_probe or name not in per_probe or (name in baselines and other in baselines):
                continue
            out.setdefault(name, {})[other] = {
                p: _paired_difference(recs, per_probe[other].get(p), f"{name} - {other}", resamples, seed)
                for p, recs in per_probe[name].items()}
    return out


def _paired_difference(a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None, compared: str,
                       resamples: int, seed: int) -> dict[str, Any] | None:
    """Rank-1 of probes ``a`` minus rank-1 of probes ``b`` on the probes both hold, with a paired
    bootstrap interval over probe identities; None without shared probes."""
    import numpy as np

    from ..metrics import paired_rank_difference

    pair = _paired(a, b)
    if pair is None:
        return None
    ra, rb, ids = pair
    d = paired_rank_difference(np.array(ra), np.array(rb), ids, 1, resamples, seed)
    return {**d, "compared": compared, "matched_probes": len(ids), "probes_a": len(a), "probes_b": len(b)}


def _alone(reports: dict[str, dict[str, Any]], probes: dict[str, dict[str, Any]], per_probe: dict[str, dict[str, Any]],
           compare: list[str], resamples: int, seed: int) -> dict[str, Any]:
    """Each synthetic arm's pretrain-only evaluations (evaluation.synthetic_only): metrics, intervals and the
    paired rank-1 difference from each of ``compare`` (real-only, the baselines) on the same probes.
    ``{arm: {protocol: {metrics, intervals, minus: {other: difference | None}}}}``."""
    out: dict[str, Any] = {}
    for arm, by in reports.items():
        for p, rep in by.items():
            minus = {other: _paired_difference(probes.get(arm, {}).get(p), per_probe.get(other, {}).get(p),
                                               f"{arm} pretrain only - {other}", resamples, seed) if resamples else None
                     for other in compare}
            out.setdefault(arm, {})[p] = {"metrics": _metrics(rep), "intervals": _intervals(rep), "minus": minus}
    return out


def _alone_table(alone: dict[str, Any]) -> list[str]:
    """The section on what each generated set teaches before any real sketch."""
    others = list(dict.fromkeys(o for by in alone.values() for row in by.values() for o in row["minus"]))
    L = ["", "## What each generated set teaches alone", "",
         "Each synthetic arm's matcher after its pretraining on the generated set alone, before the real fine-tune "
         "(04-matcher-ARM-pretrain; evaluation.synthetic_only): a figure of the set itself, free of the real data. "
         "Differences are paired, as above.", "",
         "| set, protocol | rank-1 | rank-10 | AUC | " + " | ".join(f"rank-1 - {_label(o)}" for o in others) + " |",
         "|---|---|---|---|" + "---|" * len(others)]
    for arm, by in alone.items():
        for p, row in by.items():
            m, ci = row["metrics"], row["intervals"]
            r1 = _num(m.get("rank-1"), 3) + (f" [{ci['rank-1'][0]:.3f}, {ci['rank-1'][1]:.3f}]" if ci.get("rank-1") else "")
            L.append(f"| {arm}, {p} | {r1} | {_num(m.get('rank-10'), 3)} | {_num(m.get('AUC'), 3)} | "
                     + " | ".join(_diff_text(row["minus"].get(o)) for o in others) + " |")
    return L


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _diff_text(d: dict[str, Any] | None) -> str:
    """"+0.031 [+0.004, +0.058]" (the interval only when bootstrapped)."""
    if not d or d.get("difference") is None:
        return "–"
    if d.get("low") is None:
        return _signed(d["difference"])
    return f"{_signed(d['difference'])} [{_signed(d['low'])}, {_signed(d['high'])}]"


def _interval_verdict(d: dict[str, Any]) -> str:
    """beats: the difference's interval is above zero; loses to: below zero;
    ties with: exactly [0, 0] (the same ranks); does not beat: it holds zero."""
    lo, hi = d["low"], d["high"]
    if lo > 0:
        return "beats"
    if hi < 0:
        return "loses to"
    if lo == hi == 0:
        return "ties with"
    return "does not beat"


def _cmp(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    """(verdict, figures) of report a against report b: rank-1 decides, then AUC, then
    TAR at the smallest FAR (report.compare_sentence)."""
    from ..report import compare_sentence

    verdict, _ = compare_sentence(a, b)
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    return verdict, f"rank-1 {f(a['rank'].get('1'))} vs {f(b['rank'].get('1'))}, AUC {f(a.get('auc'))} vs {f(b.get('auc'))}"


def _verdicts(arms: list[str], baselines: list[str], reports: dict[str, dict[str, Any]],
              differences: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per arm, against each baseline and real-only, per protocol: ``verdict``,
    ``figures`` and ``decided_by``. Where ``differences`` holds a bootstrapped
    rank-1 difference, its 95 % interval decides (:func:`_interval_verdict`);
    otherwise (``bootstrap: 0``, or evaluations without probes.jsonl) point
    values do: rank-1, then AUC, then TAR (report.compare_sentence)."""
    out: dict[str, Any] = {}
    for arm in arms:
        v: dict[str, Any] = {}
        for other in [*baselines, "real"]:
            if other not in reports or other == arm:
                continue
            by = {}
            for p in reports[arm]:
                verdict, figures = _cmp(reports[arm][p], reports[other][p])
                d = ((differences or {}).get(arm) or {}).get(other, {}).get(p)
                if d and d.get("low") is not None:
                    by[p] = {"verdict": _interval_verdict(d),
                             "figures": f"{figures}, rank-1 difference {_diff_text(d)}",
                             "decided_by": "rank-1 difference, 95 % paired bootstrap interval over probe identities"}
                else:
                    by[p] = {"verdict": verdict, "figures": figures,
                             "decided_by": "point values (rank-1, then AUC, then TAR)"}
            v[other] = by
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


COLOURS = {"real": "tab:blue", "detour": "tab:purple", "diffusion": "tab:red", "gan": "tab:green", "procedural": "tab:orange",
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
         + (f". The matchers train on only {data['real_subset']['identities']} of the {data['real_subset']['of']} real "
            f"training people ({data['real_subset']['images']} images; matcher.real_identities)" if data.get("real_subset") else "")
         + f". Budget: {budget['images_per_epoch']} images per epoch x {cfg.matcher.epochs} epochs = "
         f"{budget['steps']} optimizer steps per arm (batch {cfg.matcher.batch_size})."
         + (" All images grey." if ev.grayscale else "")
         + (" Every image is embedded together with its mirror image, the two summed, by every arm's matcher"
            + (f" and by {', '.join(ev.flip_baselines)}" if ev.flip_baselines else "; the baselines embed plainly")
            + " (evaluation.flip_fusion)." if ev.flip_fusion else "")
         + (f" Every batch also holds {cfg.matcher.negatives} photos of the new identities' "
            f"{data['identities'].get('negatives')} people as extra negatives (matcher.negatives)."
            if cfg.matcher.negatives else "")
         + (" Synthetic arms: a matcher trained on the generated set alone, then fine-tuned on the real data alone "
            "with real-only's budget (matcher.synthetic_use: pretrain)." if cfg.matcher.synthetic_use == "pretrain"
            else "")
         + _filter_text(cfg, res), ""]
    names = list(cfg.arms) + [b for b in ev.baselines if b in res["metrics"]]
    diffs = res.get("differences") or {}
    vs_real = "real" in cfg.arms and bool(diffs)
    if res.get("matchers"):
        L += _matcher_table(res, cfg)
    if ev.bootstrap:
        L += [f"Brackets: 95 % bootstrap intervals, {ev.bootstrap} resamples of the test's probe identities (seed "
              f"{ev.bootstrap_seed}; a person's sketches move together; TAR's threshold recomputed per resample)."
              + (" The last column is rank-1 minus real-only's on the same resampled identities (paired)."
                 if vs_real else ""), ""]
    for p in probes:
        c = res["counts"].get(p, {})
        extra = ["rank-1 - real-only"] if vs_real else []
        L += [f"## {p}", "", f"{_PROTOCOL_TEXT[p]}; {c.get('probes_used')} probes, "
              f"{c.get('gallery_identities')} gallery identities.", "",
              "| matcher | " + " | ".join(labels + extra) + " |", "|---|" + "---|" * len(labels + extra)]
        for name in names:
            by = res["metrics"][name].get(p, {})
            ci = (res.get("intervals") or {}).get(name, {}).get(p, {})
            cells = ["–" if by.get(m) is None else f"{by[m]:.3f}" + (f" [{ci[m][0]:.3f}, {ci[m][1]:.3f}]" if ci.get(m) else "")
                     for m in labels]
            if vs_real:
                cells.append("–" if name == "real" else _diff_text((diffs.get(name) or {}).get("real", {}).get(p)))
            shown = f"{_label(name)} (no training on sketches)" if name in ev.baselines else name
            L.append(f"| {shown} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["## Verdicts", ""]
    if diffs:
        L += ["A verdict \"beats\" needs the 95 % paired bootstrap interval of the rank-1 difference above zero "
              "(\"loses to\": below zero; \"does not beat\": it holds zero, so the data cannot tell).", ""]
    else:
        L += ["Verdicts compare point values (rank-1, then AUC, then TAR); no bootstrap intervals "
              "(evaluation.bootstrap: 0).", ""]
    L += [_sentence(arm, res["verdicts"][arm]) for arm in cfg.arms]
    if vs_real:
        L += ["", "Rank-1 differences from real-only (paired bootstrap, 95 %):", ""]
        for arm in cfg.arms:
            if arm == "real":
                continue
            by = (diffs.get(arm) or {}).get("real", {})
            shown = "detour (real-only trained again)" if arm == "detour" else f"real + {arm}"
            L.append("- " + "; ".join(f"{p}: {shown} - real-only: {_diff_text(by.get(p))}" for p in probes))
    for b in ev.baselines:
        learnt = [a for a in cfg.arms if b in res["verdicts"][a]]
        losers = [a for a in learnt if any(d["verdict"] != "beats" for d in res["verdicts"][a][b].values())]
        if learnt and len(losers) == len(learnt):
            L += ["", f"**No learnt matcher beats {_label(b)} on every protocol.** A learnt matcher must be shown "
                  "against the training-free baselines."]
        elif losers:
            L += ["", f"**Not beating {_label(b)} on every protocol: {', '.join(losers)}.**"]
    if res.get("synthetic_only"):
        L += _alone_table(res["synthetic_only"])
    if res.get("judges"):
        L += _judge_table(res["judges"])
        L += _readings(cfg, res)
    L += ["", "## CMC", "", "![CMC](cmc.png)", "",
          "Each stage's folder (`01-data`, `02-generator-*`, `03-generated-*`, `04-matcher-*`, `05-evaluate-*`) "
          "holds its `config.yaml` and `stage.json` (seconds, peak memory); each evaluation has its own report.md "
          "with ROC, score histograms and worst failures.", ""]
    return "\n".join(L)


def _filter_text(cfg: Config, res: dict[str, Any]) -> str:
    """What identity_filter kept of each generated set."""
    f = cfg.identity_filter
    if f is None:
        return ""
    rule = f"FAR {f.far:g} of its impostor pairs" if f.min_similarity is None else f"cosine >= {f.min_similarity:g}"
    kept = [(a, (res["generators"].get(f"generated-{a}") or {}).get("filter")) for a in cfg.arms]
    parts = [f"{a} {k['kept_sketches']} of {k['sketches']} sketches ({k['kept_identities']} of {k['identities']} "
             f"people, threshold {k['threshold']:.3f})" for a, k in kept if k]
    return (f" Synthetic arms train on the generated sketches {f.encoder.name} still matches to their photo at "
            f"{rule} (identity_filter): " + "; ".join(parts) + ".")


def _matcher_table(res: dict[str, Any], cfg: Config) -> list[str]:
    """Per arm: the steps it took, the checkpoint evaluated (epoch, steps by then, validation rank-1)."""
    data = res["data"]
    val = data.get("validation")
    L = ["## Matchers", "",
         (f"Checkpoint: the best epoch by rank-1 on {val['identities']} validation identities carved out of the "
          f"training split (matcher.val_fraction={val['val_fraction']}; never trained on, never in the test split); "
          f"every matcher trains on the other {val['matcher_train_identities']}."
          if val else "Checkpoint: the last epoch (no validation identities; matcher.val_fraction: 0)."), "",
         "| arm | epochs | optimizer steps | evaluated epoch | its steps | its validation rank-1 |",
         "|---|---|---|---|---|---|"]
    f = lambda x: "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)  # noqa: E731
    for arm, m in res["matchers"].items():
        shown = arm + ("" if not m.get("pretrain_steps") else f" (after real-only's {m['pretrain_steps']} steps)"
                       if arm == "detour" else f" (after {m['pretrain_steps']} steps on its synthetic set alone)")
        L.append(f"| {shown} | {f(m.get('epochs_done'))} | {f(m.get('optimizer_steps'))} | {f(m.get('selected_epoch'))} | "
                 f"{f(m.get('selected_steps'))} | {f(m.get('selected_val_rank1'))} |")
    return [*L, ""]


# the fidelity bar: a generated set whose judge rank-1 is below this share of the
# real sketches' carries too little identity for its pairs to teach a matcher
FIDELITY_BAR = 0.8


def _num(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _readings(cfg: Config, res: dict[str, Any]) -> list[str]:
    """One plain sentence per synthetic arm that does not beat real-only on some protocol,
    with the judge's figures saying whether its sketches carry identity."""
    L = []
    for arm in cfg.arms:
        j = (res.get("judges") or {}).get(arm)
        by = (res["verdicts"].get(arm) or {}).get("real") or {}
        short = [p for p, d in by.items() if d["verdict"] != "beats"]
        if arm == "real" or j is None or not short:
            continue
        g, r, ratio = j["generated"].get("rank1"), j["real"].get("rank1"), j.get("rank1_ratio")
        figs = (f"judge rank-1 {_num(g, 3)} vs {_num(r, 3)} for real sketches, ratio {_num(ratio, 2)}")
        if ratio is None:  # no ceiling to compare with (real sketches' rank-1 is 0, or none were judged)
            L.append(f"- **Real + {arm} does not beat real-only** ({', '.join(short)}); the judge cannot say whether "
                     f"its sketches carry identity ({figs}).")
        elif ratio < FIDELITY_BAR:
            L.append(f"- **Why real + {arm} does not beat real-only** ({', '.join(short)}): its sketches are not "
                     f"recognisable as their reference person often enough ({figs}; the bar is "
                     f"{FIDELITY_BAR:.1f}). Sketches paired with the wrong face teach the matcher wrong pairs, so at "
                     "this size the generator, not the matcher, is what to improve (docs/identity-generator.md).")
        else:
            L.append(f"- **Real + {arm} does not beat real-only** ({', '.join(short)}) although its sketches carry "
                     f"identity ({figs}): what they add is not what the test sketches need (style, realism: "
                     f"Fréchet {_num(j.get('frechet_distance'), 3)}), or the real pairs already teach it.")
    return ["", "Reading:", "", *L] if L else []


def _judge_table(judges: dict[str, Any]) -> list[str]:
    """Identity fidelity of each generated set (report-dataset's judge figures)."""
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    any_j = next(iter(judges.values()))
    L = ["", "## Identity fidelity of the generated sets", "",
         "Judge: a real-only matcher (trained on real sketches only, never on generated ones): "
         + ", ".join(sorted({f"`{j['judge']}`" for j in judges.values() if j.get("judge")}) or ["this run's"])
         + ". A copied experiment reuses the judge stage it was copied with (its config names the same folder "
         "inside the run), so where the copy retrains real-only (another matcher seed, matcher.real_identities) "
         "the judge is still the first one and the figures stay comparable. "
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
    styled = {arm: j["by_style"] for arm, j in judges.items() if j.get("by_style")}
    if styled:
        L += ["", "By style (each style's sketches against the same gallery; real: the test sketches of that style):",
              "", "| set | style | rank-1 | real rank-1 | ratio |", "|---|---|---|---|---|"]
        for arm, by in styled.items():
            for style, b in by.items():
                L.append(f"| {arm} | {style} | {f((b['generated'] or {}).get('rank1'))} | "
                         f"{f((b['real'] or {}).get('rank1'))} | {f(b['rank1_ratio'])} |")
    return L
