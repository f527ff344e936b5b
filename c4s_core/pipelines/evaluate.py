"""Evaluate a matcher: probes (sketches) against a gallery (photos + distractors).

Each image is aligned by the ``aligner``, resized to the backbone's
``input_size`` and embedded; probes are ranked against gallery identities by
cosine similarity. Writes ``OUT/report.json`` (rank-1/5/10/20, TAR at FAR
1e-1/1e-2/1e-3, ROC AUC, counts including images without a face and
unreadable files), ``OUT/cmc.png`` and ``OUT/config.yaml``.

``perturb`` applies a small random similarity (shift, scale, rotation; seeded)
to every probe before alignment: a robustness check for aligners and backbones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config import C4SModel, ComponentSpec

RANKS = (1, 5, 10, 20)


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
    batch_size: int = Field(32, ge=1, le=4096, description="Images per align/embed batch.")


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


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    import time

    import numpy as np
    from tqdm import tqdm

    from .. import metrics
    from ..align import perturb_image, summarize
    from ..data.io import resize
    from ..errors import DataError
    from ..plugins import get_registries
    from .common import prepare_out, save_run_config, write_json

    t0 = time.time()
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

    size = tuple(backbone.input_size)
    backbone_no_face = 0

    def embed(images, names, desc):
        nonlocal backbone_no_face
        results, embs = [], []
        bs = config.batch_size
        for i in tqdm(range(0, len(images), bs), desc=desc, disable=not progress, unit="batch"):
            res = aligner.align(images[i : i + bs], names[i : i + bs])
            results += res
            crops = [resize(r.image, size) for r in res if r.image is not None]
            if crops:
                embs.append(np.asarray(backbone.embed(crops), np.float32))
                backbone_no_face += int(getattr(backbone, "last_no_face", 0) or 0)
        keep = [k for k, r in enumerate(results) if r.image is not None]
        dim = int(backbone.embedding_dim)
        return (np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)), keep, results

    def names_of(samples, prefix):
        return [s.path or f"{prefix} #{k} ({s.identity})" for k, s in enumerate(samples)]

    pe, pkeep, pres = embed(probe_images, names_of(probes, "probe"), "probes")
    ge, gkeep, gres = embed([s.image for s in gallery], names_of(gallery, "gallery"), "gallery")
    de, dkeep, dres = embed([s.image for s in distractors], names_of(distractors, "distractor"), "distractors")

    probe_ids = [probes[k].identity for k in pkeep]
    gallery_ids = [gallery[k].identity for k in gkeep] + [f"distractor/{distractors[k].identity}" for k in dkeep]
    gal = np.concatenate([ge, de]) if len(de) else ge
    sim = metrics.cosine_similarity(pe, gal) if len(pe) and len(gal) else np.zeros((len(pe), len(gal)))
    curve, used = metrics.cmc(sim, probe_ids, gallery_ids)
    gen, imp = metrics.pair_scores(sim, probe_ids, gallery_ids)
    tar = metrics.tar_at_far(gen, imp)
    auc = metrics.roc_auc(gen, imp)

    def at(k):
        return float(curve[min(k, len(curve)) - 1]) if used else None

    report = {
        "backbone": config.backbone.name,
        "aligner": config.aligner.name,
        "rank": {str(k): at(k) for k in RANKS},
        "tar_at_far": {f"{f:.0e}": v for f, v in tar.items()},
        "auc": auc,
        "counts": {
            "probes": len(probes),
            "probes_used": used,
            "probes_without_mate": len(pkeep) - used,
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
        "seconds": round(time.time() - t0, 2),
        "out": str(out),
    }
    write_json(out / "report.json", report)
    if used:
        _plot_cmc(curve, out / "cmc.png", f"{config.backbone.name} / {config.aligner.name}")
    return report


def _plot_cmc(curve, path: Path, label: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(len(curve), 50)
    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, n + 1), curve[:n], marker="o", markersize=3, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("CMC")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
