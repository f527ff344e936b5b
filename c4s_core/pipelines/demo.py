"""The main job on the embedded default data, every stage that exists so far.

1. ``synth``: render synthfaces identities (photos and pencil line sketches).
2. ``styles``: procedural sketch baselines of those photos, one per renderer.
3. ``evaluate``: match sketches against a gallery of photos plus distractor
   identities with each baseline matcher, on aligned sketches and on sketches
   shifted, scaled and rotated a little (real sketches are never pixel-aligned).
4. ``report.md``: the comparison table and the figures.

Each stage runs as the normal pipeline with its ``config.yaml`` saved beside
its output, so any stage can be rerun bigger on its own. Later stages of
CLIP4Sketch (train-generator, generate, train-matcher, export, match) join
this list as they land.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import C4SModel, ComponentSpec


class Config(C4SModel):
    out: Path = Field(Path("c4s-out/demo"), description="Report folder; one sub-folder per stage.")
    identities: int = Field(50, ge=2, le=100_000, description="Synthfaces identities used as probes and mates.")
    distractors: int = Field(300, ge=0, le=1_000_000, description="Extra gallery identities with no probe.")
    seed: int = Field(0, description="Seed of the synthetic identities and perturbations.")
    backbones: list[str] = Field(
        default_factory=lambda: ["hog", "dlib_resnet"],
        description="Matchers to compare (backbone names); ones whose extra is missing are reported and skipped.",
    )
    aligner: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="center"), description="Aligner applied before matching."
    )
    styles: list[str] = Field(
        default_factory=lambda: ["xdog", "pencil_dodge", "edges", "line_drawing", "charcoal"],
        description="Procedural sketch styles shown in the styles stage.",
    )


def run(config: Config, progress: bool = True) -> dict:
    import sys

    from ..data.io import save_image
    from ..errors import MissingDependencyError
    from ..plugins import get_registries
    from . import evaluate, synth
    from .common import prepare_out, save_run_config, write_json

    out = prepare_out(config.out)
    save_run_config(out, "demo", config)
    regs = get_registries()
    say = (lambda m: print(f"c4s demo: {m}", file=sys.stderr)) if progress else (lambda m: None)

    faces = ComponentSpec(name="synthfaces", options={"num_identities": config.identities, "seed": config.seed})
    others = ComponentSpec(
        name="synthfaces",
        options={"num_identities": max(config.distractors, 1), "seed": config.seed + 1, "prefix": "dx",
                 "images_per_identity": 1, "sketches_per_identity": 0},
    )

    say("1/3 synth: rendering synthfaces")
    s = synth.run(synth.Config(dataset=faces, out=out / "01-synth"), progress=progress)

    say("2/3 styles: procedural sketch baselines")
    ds = regs.dataset.build(faces)
    photos = [ds[i].image for i in range(len(ds)) if ds[i].modality == "photo"][:4]
    rows = []
    for name in config.styles:
        style = regs.sketch_style.build(name)
        rows.append([style.render(p) for p in photos])
    (out / "02-styles").mkdir(exist_ok=True)
    save_image(out / "02-styles" / "styles.png", synth.grid([photos] + rows))

    say("3/3 evaluate: sketches vs photos + distractors")
    results, skipped = [], []
    for bb in config.backbones:
        for perturbed in (False, True):
            tag = f"{bb}-{'perturbed' if perturbed else 'aligned'}"
            cfg = evaluate.Config(
                probes=faces, gallery=faces,
                distractors=others if config.distractors else None,
                backbone=ComponentSpec(name=bb), aligner=config.aligner,
                out=out / f"03-evaluate-{tag}",
                perturb=evaluate.Perturb(seed=config.seed) if perturbed else None,
            )
            try:
                r = evaluate.run(cfg, progress=progress)
            except MissingDependencyError as err:
                skipped.append({"backbone": bb, "why": str(err)})
                say(f"skipping {bb}: {err}")
                break
            results.append({"backbone": bb, "probes": "perturbed" if perturbed else "aligned",
                            "folder": cfg.out.name, **_metrics(r)})

    summary = {"out": str(out), "synth": s, "evaluations": results, "skipped": skipped}
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(_report(config, s, results, skipped))
    say(f"report: {out / 'report.md'}")
    return summary


def _metrics(r: dict) -> dict:
    """Flatten an evaluate report into the demo table's columns."""
    m = {f"rank-{k}": v for k, v in r["rank"].items()}
    m.update({f"TAR@FAR={k}": v for k, v in r["tar_at_far"].items()})
    m["AUC"] = r["auc"]
    return m


def _report(config: Config, s: dict, results: list[dict], skipped: list[dict]) -> str:
    cols = [k for k in (results[0] if results else {}) if k not in ("backbone", "probes", "folder")]
    lines = [
        "# c4s demo report",
        "",
        f"Embedded synthfaces data: {s['identities']} identities ({s['images']} images), "
        f"{config.distractors} distractor identities in the gallery, seed {config.seed}.",
        "",
        "## Data",
        "",
        "![synthfaces contact sheet](01-synth/contact_sheet.png)",
        "",
        "## Procedural sketch baselines",
        "",
        f"Top row: photos; then one row per style: {', '.join(config.styles)}.",
        "",
        "![styles](02-styles/styles.png)",
        "",
        "## Sketch-to-photo matching",
        "",
        "Probes are sketches; the gallery holds every identity's photos plus the distractors. "
        "'perturbed' shifts, scales and rotates each sketch a little before alignment.",
        "",
        "| backbone | probes | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in results:
        vals = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "n/a")) for c in cols]
        lines.append(f"| {r['backbone']} | {r['probes']} | " + " | ".join(vals) + " |")
    for sk in skipped:
        lines.append(f"\nSkipped {sk['backbone']}: {sk['why']}")
    lines += ["", "CMC curves:", ""]
    lines += [f"![{r['folder']}]({r['folder']}/cmc.png)" for r in results]
    lines += ["", "Each stage's folder holds its `config.yaml`; rerun one bigger with "
              "`c4s <stage> --config <folder>/config.yaml --set ...`.", ""]
    return "\n".join(lines)
