"""Evaluate a matcher: probes (sketches) against a gallery (photos + distractors).

Each image is read, aligned by the ``aligner`` and embedded once by the
``backbone`` (any registered backbone: built-ins, a trained matcher, an ONNX
file through its plugin; only ``embed(list of uint8 RGB arrays)``,
``input_size`` and ``embedding_dim`` are used). Probes are ranked against
gallery identities by cosine similarity, computed block by block so that
thousands x tens of thousands stay within memory (``block_mb``).

Writes to ``OUT``:

- ``report.json``: rank-1/5/10/20, TAR at FAR 1e-1/1e-2/1e-3, ROC AUC, the CMC
  and ROC points, counts (including images without a face and unreadable
  files), per-subset metrics, the worst failures and the baseline comparison;
- ``probes.jsonl``: one line per probe kept (position ``i``, identity, path,
  subset, rank of its mate identity (0: no mate in the gallery), mate score,
  best wrong score), so two evaluations of the same probes can be compared
  probe by probe (``c4s experiment`` does: a paired bootstrap of rank-1);
- ``report.md``: the same as a readable page with the figures below and, when
  ``baseline`` or ``compare_with_hog`` is set, a plain sentence saying whether
  the backbone beats the baseline;
- ``cmc.png``, ``roc.png`` (log FAR), ``scores.png`` (genuine/impostor
  histograms), ``worst_failures.png`` (probe, top wrong match, true mate);
- ``config.yaml`` / ``run.json`` (rerun with ``--config``).

Subsets: a probe's subset is its sample's ``meta["subset"]`` when the dataset
provides one, else the named group ``subset`` of ``subset_pattern`` searched in
its identity (probes it does not match fall in ``other``). For CUFS names
(``AR_100``, ``CUHK_student_1``, ``XM2VTS_103``) use
``subset_pattern: "^(?P<subset>[^_]+)_"`` to get AR, CUHK and XM2VTS. Each
subset's metrics rank its probes against the whole gallery.

Ties (see :mod:`c4s_core.metrics`) count against the matcher: a mate tied with
another identity is ranked behind it; a genuine score equal to a FAR threshold
is rejected.

**Intervals.** With ``bootstrap: N`` (default 1,000; 0: off) every rank-k and
TAR at FAR in report.json and report.md gets a 95 % percentile bootstrap
interval (``intervals``, per subset too), resampling **probe identities** with
replacement (all sketches of a drawn person come along: they are not
independent), seeded by ``bootstrap_seed``. TAR's threshold is recomputed in
every resample from that resample's impostor pairs (the same at-most-FAR rule),
so the interval includes the threshold's own uncertainty; see
:mod:`c4s_core.metrics`.

``perturb`` applies a small random similarity (shift, scale, rotation; seeded)
to every probe before alignment: a robustness check for aligners and backbones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import C4SModel, ComponentSpec

RANKS = (1, 5, 10, 20)
CURVE_POINTS = 100  # CMC points kept in report.json


class Perturb(C4SModel):
    shift: float = Field(0.05, ge=0.0, le=0.5, description="Largest shift, as a fraction of width and height.")
    scale: float = Field(0.05, ge=0.0, le=0.5, description="Largest relative scale change (1 +- scale).")
    rotate: float = Field(5.0, ge=0.0, le=45.0, description="Largest rotation in degrees.")
    seed: int = Field(0, description="Seed of the random perturbations.")


def _synthfaces() -> ComponentSpec:
    return ComponentSpec(name="synthfaces", options={})


class Config(C4SModel):
    probes: ComponentSpec = Field(default_factory=_synthfaces, description="Dataset of probes (its sketches).")
    gallery: ComponentSpec = Field(default_factory=_synthfaces, description="Dataset of the gallery (its photos).")
    distractors: ComponentSpec | None = Field(
        None, description="Optional dataset of extra gallery identities (none of them matches a probe)."
    )
    probe_modality: Literal["sketch", "photo"] = Field("sketch", description="Modality of the probes.")
    gallery_modality: Literal["photo", "sketch"] = Field(
        "photo", description="Modality of gallery and distractor images."
    )
    backbone: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="hog"), description="Backbone that embeds faces."
    )
    aligner: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="center"), description="Aligner applied to every image first."
    )
    out: Path = Field(Path("c4s-out/evaluate"), description="Output folder.")
    limit: int | None = Field(
        None, ge=1, description="Use only the first N probe identities (sorted) and their gallery images."
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="An unreadable image: stop, or leave it out and list it in the report."
    )
    perturb: Perturb | None = Field(None, description="Random shift/scale/rotation applied to the probes.")
    grayscale: bool = Field(False, description="Turn every aligned probe and gallery image grey (luminance) before embedding.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per align/embed batch.")
    subset_pattern: str | None = Field(
        None,
        description="Regex searched in each probe identity without meta['subset']; its named group 'subset' "
        "is the probe's subset (unmatched: 'other'). CUFS: '^(?P<subset>[^_]+)_' gives AR, CUHK, XM2VTS.",
    )
    baseline: Path | None = Field(
        None, description="report.json of an earlier evaluate run (e.g. HOG) to compare with in report.md; with "
        "its probes.jsonl beside it and bootstrap on, also the paired rank-1 difference on the probes both ranked."
    )
    compare_with_hog: bool = Field(
        False, description="Also embed the same aligned images with HOG and say in report.md whether the backbone beats it."
    )
    bootstrap: int = Field(
        1000, ge=0, le=100_000, description="Bootstrap resamples (over probe identities) for the 95 % interval of "
        "every rank-k and TAR@FAR; 0: no intervals.")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the bootstrap resamples.")
    worst: int = Field(12, ge=0, le=200, description="Rows of the worst-failures contact sheet (0: none).")
    block_mb: int = Field(
        256, ge=8, le=16384, description="Memory for one block of the similarity matrix, in MiB (pair scores come on top: 4 bytes each)."
    )

    @field_validator("subset_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            rx = re.compile(v)
        except re.error as err:
            raise ValueError(f"subset_pattern {v!r} is not a valid regular expression: {err}") from None
        if "subset" not in rx.groupindex:
            raise ValueError(f"subset_pattern {v!r} needs a named group 'subset', e.g. '^(?P<subset>[^_]+)_'")
        return v

    @model_validator(mode="after")
    def _one_baseline(self):
        if self.baseline is not None and self.compare_with_hog:
            raise ValueError("set either baseline (a report.json) or compare_with_hog: true, not both")
        return self


def _select(ds, modality: str, ids: set[str] | None, on_error: str):
    """Samples of ``modality`` (and of ``ids`` if given) plus the LoadReport."""
    from ..data.datasets import load_samples

    refs = getattr(ds, "refs", None)
    if refs is not None:
        idx = [i for i, r in enumerate(refs) if r.modality == modality and (ids is None or r.identity in ids)]
        return load_samples(ds, on_error, idx)
    samples, rep = load_samples(ds, on_error)
    return [s for s in samples if s.modality == modality and (ids is None or s.identity in ids)], rep


def _ids(ds, modality: str) -> list[str]:
    refs = getattr(ds, "refs", None)
    if refs is not None:
        return sorted({r.identity for r in refs if r.modality == modality})
    return sorted({ds[i].identity for i in range(len(ds)) if ds[i].modality == modality})


def _load_baseline(path: Path) -> dict[str, Any]:
    import json

    from ..errors import DataError

    try:
        rep = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"baseline {path}: file not found (give the report.json of an earlier `c4s evaluate`)") from None
    except (OSError, ValueError) as err:
        raise DataError(f"baseline {path}: cannot read it as JSON ({err})") from None
    missing = [k for k in ("rank", "tar_at_far", "auc") if not isinstance(rep, dict) or k not in rep]
    if missing:
        raise DataError(f"baseline {path}: not an evaluate report.json (lacks {', '.join(missing)})")
    return rep


def _subsets(samples, pattern: str | None) -> tuple[list[str | None], str | None]:
    """Each probe's subset label and a sentence on where the labels came from."""
    rx = re.compile(pattern) if pattern else None
    labels, from_meta, from_rx = [], 0, 0
    for s in samples:
        lab = (s.meta or {}).get("subset")
        if lab is not None:
            from_meta += 1
        elif rx is not None:
            m = rx.search(str(s.identity))
            lab = m.group("subset") if m and m.group("subset") else "other"
            from_rx += 1
        labels.append(None if lab is None else str(lab))
    if not from_meta and not from_rx:
        return labels, None
    if from_meta and any(lab is None for lab in labels):
        labels = [lab if lab is not None else "other" for lab in labels]
    src = []
    if from_meta:
        src.append(f"the dataset's meta['subset'] ({from_meta} probes)")
    if from_rx:
        src.append(f"subset_pattern {pattern!r} on probe identities ({from_rx} probes)")
    return labels, " and ".join(src)


def read_probes(folder: Path) -> list[dict[str, Any]] | None:
    """The per-probe records (``probes.jsonl``) of an evaluate output folder; None
    when it has none (written by a c4s before per-probe results)."""
    import json

    p = Path(folder) / "probes.jsonl"
    if not p.is_file():
        return None
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    import json
    import time

    import numpy as np
    from tqdm import tqdm

    from .. import metrics
    from .. import report as rp
    from ..align import perturb_image, summarize
    from ..data.io import grey3, resize
    from ..errors import DataError
    from ..plugins import get_registries
    from .common import prepare_out, save_run_config, write_json

    t0 = time.time()
    base_file = _load_baseline(config.baseline) if config.baseline is not None else None
    out = prepare_out(config.out)
    regs = get_registries()
    save_run_config(out, "evaluate", config)
    probe_ds = regs.dataset.build(config.probes)
    gallery_ds = probe_ds if config.gallery == config.probes else regs.dataset.build(config.gallery)
    aligner = regs.aligner.build(config.aligner)
    backbone = regs.backbone.build(config.backbone)

    ids = None
    if config.limit:
        ids = set(_ids(probe_ds, config.probe_modality)[: config.limit])
    probes, prep = _select(probe_ds, config.probe_modality, ids, config.on_error)
    gallery, grep = _select(gallery_ds, config.gallery_modality, ids, config.on_error)
    skipped_files = prep.skipped + grep.skipped
    distractors = []
    if config.distractors is not None:
        dist_ds = regs.dataset.build(config.distractors)
        distractors, drep = _select(dist_ds, config.gallery_modality, None, config.on_error)
        skipped_files += drep.skipped
    if not probes:
        raise DataError(f"no {config.probe_modality} probes in dataset {config.probes.name!r}")
    if not gallery and not distractors:
        raise DataError(f"no {config.gallery_modality} gallery images in dataset {config.gallery.name!r}")

    probe_images = [s.image for s in probes]
    if config.perturb is not None:
        p = config.perturb
        rng = np.random.default_rng(p.seed)
        probe_images = [perturb_image(im, rng, p.shift, p.scale, p.rotate) for im in probe_images]

    bs = config.batch_size

    def align(images, names, desc):
        results = []
        for i in tqdm(range(0, len(images), bs), desc=f"align {desc}", disable=not progress, unit="batch"):
            results += aligner.align(images[i : i + bs], names[i : i + bs])
        return results, [k for k, r in enumerate(results) if r.image is not None]

    def names_of(samples, prefix):
        return [s.path or f"{prefix} #{k} ({s.identity})" for k, s in enumerate(samples)]

    pres, pkeep = align(probe_images, names_of(probes, "probe"), "probes")
    gres, gkeep = align([s.image for s in gallery], names_of(gallery, "gallery"), "gallery")
    dres, dkeep = align([s.image for s in distractors], names_of(distractors, "distractor"), "distractors")
    del probe_images

    # one list of aligned crops: kept probes, then kept gallery, then kept distractors
    crops = [pres[k].image for k in pkeep] + [gres[k].image for k in gkeep] + [dres[k].image for k in dkeep]
    if config.grayscale:
        crops = [grey3(c) for c in crops]
    n_p = len(pkeep)
    probe_ids = [probes[k].identity for k in pkeep]
    gallery_ids = [gallery[k].identity for k in gkeep] + [f"distractor/{distractors[k].identity}" for k in dkeep]
    gal_paths = [gallery[k].path for k in gkeep] + [distractors[k].path for k in dkeep]
    block = config.block_mb << 20

    def embed_and_match(bb, label):
        """Embed every kept crop once with ``bb``, then match probes to the gallery."""
        size = tuple(bb.input_size)
        no_face, embs = 0, []
        for i in tqdm(range(0, len(crops), bs), desc=f"embed ({label})", disable=not progress, unit="batch"):
            batch = [resize(c, size) for c in crops[i : i + bs]]
            embs.append(np.asarray(bb.embed(batch), np.float32))
            no_face += int(getattr(bb, "last_no_face", 0) or 0)
        e = np.concatenate(embs) if embs else np.zeros((0, int(bb.embedding_dim)), np.float32)
        if len(e) != len(crops):
            raise DataError(f"backbone {label!r} returned {len(e)} embeddings for {len(crops)} images")
        return metrics.match(e[:n_p], e[n_p:], probe_ids, gallery_ids, block_bytes=block), no_face

    res, backbone_no_face = embed_and_match(backbone, config.backbone.name)

    def summary(r, rows=None, intervals=False) -> dict[str, Any]:
        curve, used = r.cmc(rows)
        gen, imp = r.pairs(rows)
        v = metrics.verification(gen, imp)

        def at(k):
            return float(curve[min(k, len(curve)) - 1]) if used else None

        out = {
            "probes_used": used,
            "rank": {str(k): at(k) for k in RANKS},
            "tar_at_far": {f"{f:.0e}": t for f, t in v["tar_at_far"].items()},
            "auc": v["auc"],
            "_curve": curve if used else np.zeros(0),
            "_v": v,
            "_pairs": (gen, imp),
        }
        if intervals and config.bootstrap:
            ci = metrics.bootstrap_intervals(r, probe_ids, config.bootstrap, config.bootstrap_seed,
                                             RANKS, metrics.FARS, rows)
            out["intervals"] = {**{k: ci[k] for k in ("level", "resamples", "seed", "unit", "identities")},
                                "rank": {str(k): x for k, x in ci["rank"].items()},
                                "tar_at_far": {f"{f:.0e}": x for f, x in ci["tar_at_far"].items()},
                                "tar_threshold": "recomputed in every resample from its impostor pairs"}
        return out

    main = summary(res, intervals=True)
    v = main["_v"]
    gen, imp = main["_pairs"]
    report: dict[str, Any] = {
        "backbone": config.backbone.name,
        "aligner": config.aligner.name,
        "rank": main["rank"],
        "tar_at_far": main["tar_at_far"],
        "auc": main["auc"],
        "intervals": main.get("intervals"),
        "thresholds": {f"{f:.0e}": t for f, t in v["threshold"].items()},
        "cmc": [round(float(x), 6) for x in main["_curve"][:CURVE_POINTS]],
        "roc": {"far": [float(x) for x in v["roc"][0]], "tar": [float(x) for x in v["roc"][1]]},
        "counts": {
            "probes": len(probes),
            "probes_used": main["probes_used"],
            "probes_without_mate": n_p - main["probes_used"],
            "gallery": len(gallery),
            "distractors": len(distractors),
            "gallery_identities": len(set(gallery_ids)),
            "genuine_pairs": int(len(gen)),
            "impostor_pairs": int(len(imp)),
            "align": {"probes": summarize(pres), "gallery": summarize(gres), "distractors": summarize(dres)},
            "no_face": sum(summarize(r)["no_face"] for r in (pres, gres, dres)),
            "backbone_no_face": backbone_no_face,
            "skipped_files": len(skipped_files),
        },
        "skipped_files": [{"path": p, "reason": r} for p, r in skipped_files],
        "perturb": config.perturb.model_dump() if config.perturb else None,
        "grayscale": config.grayscale,
    }

    # per subset
    labels, source = _subsets([probes[k] for k in pkeep], config.subset_pattern)
    report["subset_source"] = source
    report["subsets"] = {}
    if source is not None:
        lab = np.array([x or "other" for x in labels], dtype=object)
        for name in sorted(set(lab)):
            rows = np.flatnonzero(lab == name)
            s = summary(res, rows, intervals=True)
            report["subsets"][name] = {"probes": int(len(rows)),
                                       **{k: x for k, x in s.items() if not k.startswith("_")}}

    # per probe, so that two evaluations of the same probes can be compared probe by probe
    from ..data.io import atomic_write_bytes

    def num(x):
        return None if not np.isfinite(x) else round(float(x), 6)

    probe_records = [{"i": i, "probe": probe_ids[i], "path": probes[pkeep[i]].path,
                      "subset": labels[i] if source else None, "rank": int(res.ranks[i]),
                      "mate_score": num(res.mate_score[i]), "top_score": num(res.top_score[i])} for i in range(n_p)]
    lines = [json.dumps(r) for r in probe_records]
    atomic_write_bytes(out / "probes.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())

    # worst failures: lowest mate rank first, then largest (top wrong - mate) margin
    failed = np.flatnonzero(res.ranks > 1)
    margin = (res.top_score - res.mate_score).astype(np.float64)
    order = failed[np.lexsort((-margin[failed], -res.ranks[failed]))][: config.worst]
    worst = []
    for i in order:
        t, m = int(res.top_index[i]), int(res.mate_index[i])
        worst.append({
            "probe": probe_ids[i], "probe_path": probes[pkeep[i]].path,
            "subset": labels[i] if source else None, "rank": int(res.ranks[i]),
            "mate_score": float(res.mate_score[i]), "mate_path": gal_paths[m],
            "top_identity": gallery_ids[t], "top_score": float(res.top_score[i]), "top_path": gal_paths[t],
            "margin": float(margin[i]),
        })
    report["worst_failures"] = worst

    # baseline: an earlier report, or HOG on the same aligned crops
    base_curves, base_label = None, None
    if config.compare_with_hog:
        if getattr(backbone, "name", None) == "hog":
            report["baseline_note"] = "compare_with_hog: the backbone is HOG itself; nothing to compare."
        else:
            hres, _ = embed_and_match(regs.backbone.build("hog"), "hog")
            h = summary(hres)
            base_file = {"backbone": "hog", "source": "compare_with_hog (same aligned images)",
                         "rank": h["rank"], "tar_at_far": h["tar_at_far"], "auc": h["auc"],
                         "cmc": [round(float(x), 6) for x in h["_curve"][:CURVE_POINTS]],
                         "roc": {"far": [float(x) for x in h["_v"]["roc"][0]],
                                 "tar": [float(x) for x in h["_v"]["roc"][1]]},
                         "counts": {"probes_used": h["probes_used"], "gallery_identities": len(set(gallery_ids))}}
    paired = None
    if config.baseline is not None and config.bootstrap:
        # an earlier evaluation of the same probes: the difference probe by probe, with its interval
        from .experiment_report import _paired_difference

        paired = _paired_difference(probe_records, read_probes(config.baseline.parent),
                                    f"{config.backbone.name} - baseline", config.bootstrap, config.bootstrap_seed)
    if base_file is not None:
        verdict, sentence = rp.compare_sentence(report, base_file)
        if paired is not None and paired["difference"] is not None:
            sentence += (f" Paired over the {paired['matched_probes']} probes both ranked: rank-1 difference "
                         f"{paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] (95 % bootstrap "
                         "over probe identities).")
        report["baseline"] = {
            "backbone": base_file.get("backbone"),
            "source": base_file.get("source", str(config.baseline)),
            "rank": base_file["rank"], "tar_at_far": base_file["tar_at_far"], "auc": base_file["auc"],
            "counts": {k: base_file.get("counts", {}).get(k) for k in ("probes_used", "gallery_identities")},
            "verdict": verdict, "sentence": sentence, "paired_rank1": paired,
        }
        base_label = f"{base_file.get('backbone', 'baseline')} (baseline)"
        base_curves = (base_file.get("cmc"), base_file.get("roc"))

    # figures
    files: dict[str, str] = {}
    label = f"{config.backbone.name} / {config.aligner.name}"
    if main["probes_used"]:
        curves = {label: main["_curve"]}
        if base_curves and base_curves[0]:
            curves[base_label] = base_curves[0]
        rp.plot_cmc(curves, out / "cmc.png")
        files["cmc"] = "cmc.png"
    if len(gen) and len(imp):
        rocs = {label: v["roc"]}
        if base_curves and base_curves[1] and base_curves[1].get("far"):
            rocs[base_label] = (np.asarray(base_curves[1]["far"]), np.asarray(base_curves[1]["tar"]))
        rp.plot_roc(rocs, out / "roc.png")
        files["roc"] = "roc.png"
        thr = {f"FAR={k}": t for k, t in report["thresholds"].items() if t is not None}
        rp.plot_scores(gen, imp, out / "scores.png", f"pair scores: {label}", thr)
        files["scores"] = "scores.png"
    if worst:
        g0 = n_p  # gallery crops start here in `crops`
        rows = []
        for i, w in zip(order, worst, strict=True):
            rows.append([
                (crops[i], [w["probe"], f"mate rank {w['rank']}"]),
                (crops[g0 + int(res.top_index[i])], [w["top_identity"], f"score {w['top_score']:.3f}"]),
                (crops[g0 + int(res.mate_index[i])], [w["probe"], f"score {w['mate_score']:.3f}"]),
            ])
        rp.failure_sheet(rows, out / "worst_failures.png")
        files["worst_failures"] = "worst_failures.png"
    files["probes"] = "probes.jsonl"
    files["report_md"] = "report.md"
    report["files"] = files
    report["seconds"] = round(time.time() - t0, 2)
    report["out"] = str(out)
    write_json(out / "report.json", report)
    rp.write_markdown(report, out / "report.md")
    return report
