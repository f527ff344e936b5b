"""Pool finished experiments that differ only in the matchers' seed: each arm's
rank-1 per seed, the difference of seed means from real-only with a two-level
bootstrap interval (probe identities and seed pairs, metrics.seeded_rank_difference)
and Student's t interval over the per-seed differences.

One experiment's intervals cover which people were drawn, not the training's
own noise; on the real data that noise was as large as the synthetic arms'
gap (docs/clip4sketch-real.md). Make the runs with ``matcher.seed`` on copies
of one experiment (same split, same generated sets), then:

    c4s seeds --set 'runs=[c4s-out/claim, c4s-out/claim-seed1, c4s-out/claim-seed2]' --out c4s-out/claim-seeds

Writes OUT/results.json, OUT/report.md and OUT/seeds.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ..config import C4SModel


class Config(C4SModel):
    runs: list[Path] = Field(default_factory=list, description="Finished `c4s experiment` folders, one per matcher seed "
                             "(same split and generated sets), at least 2.")
    out: Path = Field(Path("c4s-out/seeds"), description="Where to write results.json, report.md and seeds.png.")
    baseline: str = Field("real", description="The arm every other arm is compared with.")
    arms: list[str] | None = Field(None, description="Arms to compare; none: every arm all runs share.")
    protocols: list[str] | None = Field(None, description="Protocols; none: every protocol all runs share.")
    resamples: int = Field(2000, ge=0, le=100_000, description="Bootstrap resamples (0: no intervals but t's).")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the bootstrap draws.")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="Interval level.")

    @field_validator("runs")
    @classmethod
    def _runs(cls, v):
        if len({Path(p).resolve() for p in v}) < len(v):
            raise ValueError("a folder is given twice")
        return v


def _seed(run: Path) -> int:
    """The matchers' seed of an experiment folder (matcher.seed, else the experiment's seed)."""
    import yaml

    from ..errors import DataError

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{run / 'config.yaml'}: cannot read the experiment's config ({err})") from None
    m = (cfg.get("matcher") or {}).get("seed")
    return int(cfg.get("seed") or 0) if m is None else int(m)


def _load(run: Path, arms: list[str], protocols: list[str]) -> dict[str, dict[str, dict]]:
    """``{arm: {protocol: {probe key: (identity, rank)}}}`` from the run's evaluations."""
    from ..errors import DataError
    from .evaluate import read_probes
    from .experiment_report import _probe_key

    out: dict[str, dict[str, dict]] = {}
    for arm in arms:
        for p in protocols:
            edir = run / f"05-evaluate-{arm}-{p}"
            recs = read_probes(edir)
            if not recs:
                raise DataError(f"{edir}: no probes.jsonl (evaluate it with this c4s: `c4s experiment --resume`)")
            # copies of one experiment hold the same images elsewhere: _probe_key ignores where
            out.setdefault(arm, {})[p] = {_probe_key(r): (r["probe"], int(r["rank"])) for r in recs}
    return out


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    import json

    import numpy as np

    from ..data.io import atomic_write_bytes
    from ..errors import ConfigError, DataError
    from ..metrics import seeded_rank_difference
    from .common import write_json

    runs = [Path(r) for r in config.runs]
    if len(runs) < 2:  # checked here, not in Config: `c4s config show seeds` shows the defaults
        raise ConfigError(f"seeds: runs needs at least 2 experiment folders to pool, got {len(runs)}")
    res = {}
    for r in runs:
        try:
            res[r] = json.loads((r / "results.json").read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{r / 'results.json'}: not a finished experiment ({err})") from None
    seeds = {r: _seed(r) for r in runs}
    by_seed: dict[int, Path] = {}
    for r, s in seeds.items():
        if s in by_seed:
            raise DataError(f"{by_seed[s]} and {r} trained their matchers at the same seed {s}: "
                            "pooling them would count one training twice")
        by_seed[s] = r
    shared = [a for a in res[runs[0]]["arms"] if all(a in res[r]["arms"] for r in runs)]
    arms = config.arms or [a for a in shared if a != config.baseline]
    protocols = config.protocols or [p for p in res[runs[0]]["probes"] if all(p in res[r]["probes"] for r in runs)]
    for a in [config.baseline, *arms]:
        missing = [str(r) for r in runs if a not in res[r]["arms"]]
        if missing:
            raise ConfigError(f"seeds: arm {a!r} is not in {', '.join(missing)} (arms there: {res[Path(missing[0])]['arms']})")
    if not arms or not protocols:
        raise ConfigError(f"seeds: nothing to compare (arms {arms}, protocols {protocols})")
    loaded = {r: _load(r, [config.baseline, *arms], protocols) for r in runs}

    table: dict[str, Any] = {}
    for arm in arms:
        for p in protocols:
            keys = set.intersection(*(set(loaded[r][a][p]) for r in runs for a in (arm, config.baseline)))
            if not keys:
                raise DataError(f"seeds: the runs share no probe in protocol {p!r}; were they made from one experiment?")
            sizes = {f"{r} ({a})": len(loaded[r][a][p]) for r in runs for a in (config.baseline, arm)}
            if max(sizes.values()) != len(keys):
                raise DataError(f"seeds: protocol {p!r} has other probes in some runs ({sizes}, {len(keys)} shared): "
                                "pool only copies of one experiment (same split)")
            keys = sorted(keys, key=str)
            ids = [loaded[runs[0]][arm][p][k][0] for k in keys]
            ra, rb = ([np.array([loaded[r][a][p][k][1] for k in keys]) for r in runs] for a in (arm, config.baseline))
            table.setdefault(arm, {})[p] = seeded_rank_difference(ra, rb, ids, 1, config.resamples,
                                                                  config.bootstrap_seed, config.level)
    results = {"runs": [str(r) for r in runs], "seeds": [seeds[r] for r in runs], "baseline": config.baseline,
               "arms": arms, "protocols": protocols, "differences": table,
               "verdicts": {a: {p: _verdict(d) for p, d in by.items()} for a, by in table.items()},
               "files": {"report": "report.md", "plot": "seeds.png"}}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "seeds.png", _plot(results))
    atomic_write_bytes(out / "report.md", _report(results, config).encode())
    write_json(out / "results.json", results)
    return {"out": str(out), "seeds": results["seeds"], "verdicts": results["verdicts"]}


def _verdict(d: dict[str, Any]) -> str:
    """"above" / "below" where the two-level interval excludes zero, else "not decided"."""
    if d.get("low") is None:
        return "not decided (no bootstrap)"
    return "above" if d["low"] > 0 else "below" if d["high"] < 0 else "not decided"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _report(results: dict[str, Any], config: Config) -> str:
    b = results["baseline"]
    pct = round(100 * config.level)
    L = [f"# Seeds pooled: {', '.join(results['arms'])} against {b}", "",
         f"Runs (matcher seed): {', '.join(f'`{r}` ({s})' for r, s in zip(results['runs'], results['seeds'], strict=True))}.", "",
         f"Rank-1 per seed, and the difference of seed means from {b}. Brackets: {pct} % intervals. "
         f"*both*: two-level bootstrap ({config.resamples} resamples of the probe identities, and of the seeds with "
         "replacement, " + ("seed s of both arms drawn together: a matcher seed fixes the real data's batch order and "
                            "augmentation in every arm" if _paired(results) else "each arm's seeds on their own")
         + "; the seed part is too narrow by about sqrt((S-1)/S) with S seeds). "
         "*probes*: the seeds held fixed (what one experiment's bootstrap covers). "
         "*t*: Student's t over the per-seed differences (seed s minus seed s). "
         "A verdict needs the *both* interval to exclude zero.", ""]
    for arm, by in results["differences"].items():
        L += [f"## {arm} - {b}", "",
              f"| protocol | {b} per seed | {arm} per seed | difference | both | probes | t | seed SD | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
        for p, d in by.items():
            per = lambda xs: " / ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            L.append(f"| {p} | {per(d['b_per_seed'])} | {per(d['a_per_seed'])} | {_f(d['difference'])} | "
                     f"[{_f(d['low'])}, {_f(d['high'])}] | [{_f(d['probe_low'])}, {_f(d['probe_high'])}] | "
                     f"[{_f(d['t_low'])}, {_f(d['t_high'])}] | "
                     f"{'n/a' if d['seed_sd'] is None else format(d['seed_sd'], '.3f')} | {results['verdicts'][arm][p]} |")
        L.append("")
    L += ["![per-seed and pooled differences](seeds.png)", ""]
    return "\n".join(L)


def _paired(results: dict[str, Any]) -> bool:
    return all(d.get("paired_seeds") for by in results["differences"].values() for d in by.values())


def _plot(results: dict[str, Any]) -> bytes:
    """Per protocol: each seed's difference (dots) and the pooled one with its two-level interval."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, protocols = results["arms"], results["protocols"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(protocols), 3.6))
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        for i, p in enumerate(protocols):
            d = results["differences"][arm][p]
            x = i + (j - (len(arms) - 1) / 2) * width
            if d["low"] is not None:
                ax.errorbar([x], [d["difference"]], yerr=[[d["difference"] - d["low"]], [d["high"] - d["difference"]]],
                            fmt="o", color=f"C{j}", capsize=4, label=arm if i == 0 else None)
            else:
                ax.plot([x], [d["difference"]], "o", color=f"C{j}", label=arm if i == 0 else None)
            per = d["per_seed"] or []
            ax.plot([x + width / 4] * len(per), per, "x", color=f"C{j}", alpha=0.6)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(protocols)), protocols)
    ax.set_ylabel(f"rank-1 minus {results['baseline']}")
    ax.set_title(f"{len(results['seeds'])} seeds: pooled (o, two-level interval), per seed (x)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
