"""The main job on the embedded default data: the whole CLIP4Sketch loop.

1. ``experiment`` (arms ``real`` and ``diffusion`` by default): split the data,
   train a small diffusion generator on the real pairs, generate sketches of
   new identities with a fast sampler, train the same matcher on real only and
   on real + generated sketches, evaluate both (and HOG) on unseen people
   against a gallery with 200 distractors, with sketches as drawn and slightly
   shifted/scaled/rotated (protocols ``distractors`` and ``forensic``).
2. ``export``: the better matcher (rank-1 on the forensic protocol) to checked ONNX.
3. ``match``: enroll the test gallery (photos + distractors) with the ONNX
   model and search a few probe sketches, as a deployment would.
4. ``report.md``: the comparison table, plots, sample grids and search results.

Every stage runs as its normal pipeline with its ``config.yaml`` saved in its
folder, so a user can rerun any stage bigger. The defaults are sized for about
ten minutes on two CPU cores; they show the loop working, not the paper's
figures (see README). Real data is one config change: ``experiment.train``
(see ``examples/configs/demo-cufs.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import C4SModel, ComponentSpec
from .experiment import Config as ExperimentConfig
from .experiment import Evaluation, MatcherSettings, _synth


def _demo_experiment() -> ExperimentConfig:
    return ExperimentConfig(
        arms=["real", "diffusion"],
        train=_synth(0, "tr", 60, 2, styles=("pencil", "charcoal")),
        test=_synth(1, "te", 60, 1),
        distractors=_synth(3, "dx", 200, 0),
        new_identities=_synth(2, "nw", 80, 0),
        # v-prediction learns the mean image at high noise quickly, so a few
        # hundred CPU steps already draw sketch-like images (epsilon: noise)
        diffusion=ComponentSpec(name="diffusion", options={"preset": "tiny", "sample_size": 48,
                                                           "prediction_type": "v_prediction"}),
        diffusion_steps=400,
        generator_options={"batch_size": 16, "checkpoint_every": 100, "sample_every": 0, "val_every": 0,
                           "grid_identities": 4, "condition_size": 64, "val_fraction": 0.0, "lr": 1e-3,
                           "warmup_steps": 20},
        styles=["pencil", "charcoal"],
        num_per_style=1,
        sampler=ComponentSpec(name="dpmsolver++", options={"steps": 15}),
        # a fixed thread count: the split of each float sum, hence the chaotic trainings' figures,
        # then depends on the CPU kernels only, not on the core count (README: demo figures)
        matcher=MatcherSettings(epochs=12, batch_size=32, threads=2),
        # sketches as drawn and perturbed, each against the gallery + 200 distractors
        evaluation=Evaluation(protocols=["distractors", "forensic"]),
    )


# weights-free conditioner that still shows the generator the person (their photo's layout),
# used in place of an identity conditioner whose extra is not installed
FALLBACK_CONDITIONER = "photo_patches"


def _missing(reg, name: str) -> str | None:
    """What ``name`` of registry ``reg`` needs that is not installed (None: nothing, or unknown:
    an unknown name keeps failing where the stage builds it, with its own error)."""
    if name not in reg:
        return None
    check = getattr(reg.get(name).cls, "missing_extra", None)
    return check() if callable(check) else None


def without_missing_extras(config: Config) -> tuple[Config, list[dict]]:
    """``config`` without the components whose optional extra is not installed, and a record
    per component left out (``component``, ``reason`` naming the pip install, ``instead``).

    A generator's conditioners lose such a conditioner (an identity one is replaced by
    ``photo_patches``), baselines lose such a backbone, ``report_similarity`` becomes none.
    Components set by name that are not registered are left for their stage to refuse."""
    from ..plugins import get_registries

    regs = get_registries()
    exp = config.experiment
    left: list[dict] = []
    upd: dict = {}
    for arm in ("diffusion", "gan"):
        spec = getattr(exp, arm, None)
        if arm not in exp.arms or spec is None or spec.name not in regs.generator:
            continue
        gcfg = regs.generator.config(spec.name, spec.options)
        conds = getattr(gcfg, "conditioners", None)
        if not conds:
            continue
        roles = dict(getattr(gcfg, "roles", None) or {})
        keep, dropped_identity = [], False
        for c in conds:
            why = _missing(regs.conditioner, c.name)
            if why is None:
                keep.append(c)
                continue
            role = roles.pop(c.name, None) or getattr(regs.conditioner.get(c.name).cls, "role", "identity")
            dropped_identity |= role == "identity"
            left.append({"component": f"conditioner {c.name} of the {arm} generator", "reason": why})
        if len(keep) == len(conds):
            continue
        names = {c.name for c in keep}
        if dropped_identity and FALLBACK_CONDITIONER in regs.conditioner and FALLBACK_CONDITIONER not in names:
            keep.append(ComponentSpec(name=FALLBACK_CONDITIONER))
            left[-1]["instead"] = f"the generator sees the photo through {FALLBACK_CONDITIONER} instead"
        opts = {**spec.options, "conditioners": [c.model_dump() for c in keep]}
        if "roles" in spec.options:
            opts["roles"] = roles
        upd[arm] = ComponentSpec(name=spec.name, options=opts)
    baselines = []
    for b in exp.evaluation.baselines:
        why = _missing(regs.backbone, b)
        if why is None:
            baselines.append(b)
        else:
            left.append({"component": f"baseline {b}", "reason": why})
    if baselines != exp.evaluation.baselines:
        upd["evaluation"] = exp.evaluation.model_copy(update={"baselines": baselines})
    rs = exp.report_similarity
    if rs is not None and (why := _missing(regs.conditioner, rs.name)) is not None:
        left.append({"component": f"report_similarity {rs.name}", "reason": why,
                     "instead": "generated-set reports have no identity similarity"})
        upd["report_similarity"] = None
    if not upd:
        return config, left
    return config.model_copy(update={"experiment": exp.model_copy(update=upd)}), left


class Config(C4SModel):
    out: Path = Field(Path("c4s-out/demo"), description="Report folder; one sub-folder per stage.")
    experiment: ExperimentConfig = Field(
        default_factory=_demo_experiment,
        description="The comparison run first (its `out` is set to OUT/experiment).")
    search_probes: int = Field(5, ge=0, le=1000, description="Probe sketches searched with the deployed model.")
    top_k: int = Field(5, ge=1, le=100, description="Candidates listed per searched sketch.")
    resume: bool = Field(False, description="Skip the stages that finished; continue unfinished trainings.")


def run(config: Config, progress: bool = True) -> dict:
    import json
    import sys
    import time

    from click.testing import CliRunner

    from ..data.io import save_image
    from ..errors import C4SError
    from ..match_cli import match
    from ..plugins import get_registries
    from . import experiment, export
    from .common import prepare_out, save_run_config, write_json

    t0 = time.time()
    # what needs an extra that is not installed is left out (said below and in the report),
    # so the demo runs on the base install; the saved config is the one that ran
    config, left_out = without_missing_extras(config)
    out = prepare_out(config.out)
    save_run_config(out, "demo", config, {"left_out": left_out} if left_out else None)
    say = (lambda m: print(f"c4s demo: {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    for lo in left_out:
        print(f"c4s demo: warning: left out {lo['component']}: {lo['reason']}"
              + (f"; {lo['instead']}" if lo.get("instead") else ""), file=sys.stderr, flush=True)
    times: dict[str, float] = {}

    say("1/3 experiment: generator, generated set, matchers, evaluation")
    t = time.time()
    exp_cfg = config.experiment.model_copy(update={"out": out / "experiment", "resume": config.resume})
    res = experiment.run(exp_cfg, progress=progress)
    times["experiment"] = round(time.time() - t, 1)

    # the better learnt arm on the protocol that looks most like real use (the last one: forensic)
    probe_kind = res["probes"][-1]
    best = max(res["arms"], key=lambda a: (res["metrics"][a][probe_kind].get("rank-1") or 0.0))
    say(f"2/3 export: matcher of arm '{best}' (best rank-1 on {probe_kind} probes) to ONNX")
    t = time.time()
    exp_out = out / "export"
    ex = export.run(export.Config(
        backbone=ComponentSpec(name="matcher", options={"path": str((out / "experiment" / f"04-matcher-{best}" / "last").resolve())}),
        out=exp_out, check_batches=[1, 7, 64]), progress=progress)
    times["export"] = round(time.time() - t, 1)

    say("3/3 match: enroll the test gallery with the ONNX model and search probe sketches")
    t = time.time()
    regs = get_registries()
    dep = out / "deploy"
    gallery, probes = dep / "gallery", dep / "probes"
    test_spec = ComponentSpec.model_validate(res["data"]["test"])
    seen: set[str] = set()
    probe_files: list[Path] = []
    specs = [test_spec] + ([exp_cfg.distractors] if exp_cfg.distractors else [])
    for spec in specs:
        ds = regs.dataset.build(spec)
        for i in range(len(ds)):
            ref = ds.refs[i]
            if ref.modality == "photo" and ref.identity not in seen:
                seen.add(ref.identity)
                p = gallery / f"{ref.identity}.png"
                if not p.exists():
                    save_image(p, ds[i].image)
            elif spec is test_spec and ref.modality == "sketch" and len(probe_files) < config.search_probes:
                p = probes / f"{ref.identity}.png"
                if not p.exists():
                    save_image(p, ds[i].image)
                probe_files.append(p)
    aligner = exp_cfg.aligner
    al = ["--aligner", aligner.name] + [x for k, v in aligner.options.items() for x in ("--aligner-option", f"{k}={json.dumps(v)}")]
    runner = CliRunner()
    index = dep / "index"
    r = runner.invoke(match, ["enroll", "--model", str(ex["model"]), "--photos", str(gallery), "--index", str(index),
                              "--overwrite", "--no-progress", *al, "--json"], catch_exceptions=False)
    if r.exit_code != 0:
        raise C4SError(f"demo: match enroll failed: {r.output}")
    hits = []
    if probe_files:
        r = runner.invoke(match, ["search", "--index", str(index), "--model", str(ex["model"]), "--top-k",
                                  str(config.top_k), "--json", *map(str, probe_files)], catch_exceptions=False)
        if r.exit_code != 0:
            raise C4SError(f"demo: match search failed: {r.output}")
        hits = json.loads(r.output)["results"]
    write_json(dep / "search.json", hits)
    times["match"] = round(time.time() - t, 1)
    times["total"] = round(time.time() - t0, 1)

    summary = {"out": str(out), "report": str(out / "report.md"), "best_arm": best, "onnx": str(ex["model"]),
               "metrics": res["metrics"], "verdicts": res["verdicts"], "gallery_size": len(seen),
               "searched": len(probe_files), "left_out": left_out, "machine": _machine(), "seconds": times}
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(_report(config, res, ex, best, hits, len(seen), times, left_out))
    say(f"done in {times['total']:.0f} s; report: {out / 'report.md'}")
    return summary


def _machine() -> dict:
    """What the figures depend on beyond the config: trained matchers follow float rounding,
    which the CPU kernel set and thread count change (README: demo figures across machines)."""
    import platform

    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine()}


def _report(config: Config, res: dict, ex: dict, best: str, hits, gallery: int, times: dict,
            left_out: list[dict] | None = None) -> str:
    exp_md = (Path(res["out"]) / "report.md").read_text()
    body = exp_md.split("\n", 1)[1] if exp_md.startswith("#") else exp_md
    body = body.replace("](", "](experiment/").replace("](experiment/http", "](http")
    lines = [
        "# c4s demo report",
        "",
        "The whole CLIP4Sketch loop on the embedded synthfaces data, sized for a few minutes on two CPU cores:",
        "a small generator, few steps, small matchers. It shows every stage working end to end; the",
        "paper-scale comparison needs real data, more steps and a GPU (see README).",
        "",
        "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in times.items()),
        "",
        "Machine: torch {torch} on {machine}, CPU kernels {cpu_capability}, {torch_threads} thread(s); trained "
        "matchers' figures differ between machines by float rounding (README).".format(**_machine()),
        "",
    ]
    if left_out:
        lines += ["## Left out", "", "This install lacks what these need; the demo ran without them:", ""]
        lines += [f"- {lo['component']}: {lo['reason']}" + (f" ({lo['instead']})" if lo.get("instead") else "")
                  for lo in left_out]
        lines.append("")
    lines += [
        "## Comparison (from `experiment/`)",
        body.strip(),
        "",
    ]
    grids = sorted((Path(res["out"]) / "02-generator-diffusion" / "samples").glob("*.png"))
    if grids:
        lines += ["## Generator samples", "", f"![samples](experiment/02-generator-diffusion/samples/{grids[-1].name})", ""]
    sheet = Path(res["out"]) / "03-generated-diffusion" / "contact_sheet.png"
    if sheet.is_file():
        lines += ["## Generated set", "", "![generated](experiment/03-generated-diffusion/contact_sheet.png)", ""]
    lines += [
        "## Deployment",
        "",
        f"Exported the `{best}` matcher to `export/{Path(ex['model']).name}`"
        f" (parity max abs diff {ex.get('max_abs_diff', float('nan')):.2e}, min cosine {ex.get('min_cosine', float('nan')):.6f});"
        f" enrolled {gallery} gallery identities; searched {len(hits)} sketches:",
        "",
        "| probe | top candidates (score) | mate found at |",
        "|---|---|---|",
    ]
    for h in hits:
        probe = Path(h["query"]).stem
        cands = h["hits"]
        ids = [c.get("identity") for c in cands]
        rank = ids.index(probe) + 1 if probe in ids else f">{len(ids)}"
        shown = ", ".join(f"{c.get('identity')} ({c.get('score', 0):.2f})" for c in cands[:3])
        lines.append(f"| {probe} | {shown} | {rank} |")
    lines += ["", "Rerun any stage bigger from its folder: `c4s <stage> --config <folder>/config.yaml --set ...`.", ""]
    return "\n".join(lines)
