"""The experiment's data stage: prealignment, the identity-disjoint test split
(manifests in ``01-data/``), identity checks and image counts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ComponentSpec

SYNTHETIC = ("diffusion", "gan", "procedural")  # the experiment's arms with a generated set

if TYPE_CHECKING:
    from .experiment import Config


def _identities(ds, modality: str | None = None) -> set[str]:
    refs = getattr(ds, "refs", None)
    if refs is None:
        return {ds[i].identity for i in range(len(ds)) if modality is None or ds[i].modality == modality}
    if modality is None and hasattr(ds, "identities"):
        return set(ds.identities())
    return {r.identity for r in refs if modality is None or r.modality == modality}


def _hold_out_identities(ds, fraction: float, seed: int, salt: int, what: str, option: str,
                         remedy: str) -> tuple[set[str], set[str], int]:
    """Draw ``fraction`` of the identities of ``ds`` that have both a photo and a
    sketch (at least 2, seeded by ``(seed, salt)``) to hold out; returns the held
    identities, the rest of ``ds``'s identities and how many had both. A DataError
    (``what`` has too few to hold out ``option`` and still train; ``remedy``)
    when fewer than 2 would remain."""

    from ..errors import DataError

    both = sorted(_identities(ds, "photo") & _identities(ds, "sketch"))
    n = max(2, int(round(fraction * len(both))))
    if n > len(both) - 2:
        raise DataError(f"{what} has {len(both)} identities with a photo and a sketch: too few to hold out "
                        f"{option} and still train; {remedy}")
    held = _draw(both, n, seed, salt)
    return held, _identities(ds) - held, len(both)


def _draw(names: list[str], n: int, seed: int, salt: int) -> set[str]:
    """``n`` of the sorted ``names``, a seeded pick (the same seed and salt give the same people)."""
    import numpy as np

    rng = np.random.default_rng([seed, salt])
    return set(rng.permutation(np.array(names, dtype=object))[:n].tolist())


def _materialize(ds, keep: set[str], folder: Path, manifest: Path) -> int:
    """Write a manifest of the samples of ``keep`` (files by absolute path; samples
    without a file, such as synthfaces, rendered into ``folder``)."""
    from ..data.io import save_image
    from ..data.manifest import write_manifest

    recs, shots = [], {}
    refs = getattr(ds, "refs", None)
    for i in range(len(ds)):
        r = refs[i] if refs is not None else ds[i]
        if r.identity not in keep:
            continue
        path = getattr(r, "path", None)
        if path and Path(path).is_file():
            p = str(Path(path).resolve())
        else:
            s = ds[i]
            k = shots[(s.identity, s.modality)] = shots.get((s.identity, s.modality), -1) + 1
            rel = Path(folder.name) / s.identity / f"{s.modality}_{k}.png"
            save_image(manifest.parent / rel, s.image)
            p = str(rel)
        recs.append({"path": p, "identity": r.identity, "modality": r.modality, "style": r.style})
    write_manifest(manifest, recs)
    return len(recs)


def _uses_new_identities(cfg: Config) -> bool:
    """A synthetic arm draws them, or the matchers take their photos as negatives."""
    return any(a in SYNTHETIC for a in cfg.arms) or cfg.matcher.negatives > 0


def _prealign(cfg: Config, folder: Path, stage) -> Config:
    """Align each dataset once (resumable stages); the config with manifest specs in their place."""
    from . import align

    update = {}
    for key in ("train", "test", "new_identities", "distractors"):
        spec = getattr(cfg, key)
        if spec is None or (key == "new_identities" and not _uses_new_identities(cfg)):
            continue
        adir = folder / f"aligned-{key.replace('_', '-')}"
        ac = align.Config(input=spec, aligner=cfg.prealign, out=adir, batch_size=cfg.evaluation.batch_size)
        stage(f"align ({key})", adir, ac, align.run)
        update[key] = ComponentSpec(name="manifest", options={"path": str((adir / "manifest.jsonl").resolve())})
    return cfg.model_copy(update=update)


def _prepare_data(cfg: Config, folder: Path, say) -> dict[str, Any]:
    """Split (if asked), check identity disjointness, count images; returns specs and counts."""
    from ..errors import ConfigError, DataError
    from ..plugins import get_registries

    regs = get_registries()
    train_ds = regs.dataset.build(cfg.train)
    train_spec, test_spec = cfg.train, cfg.test
    split = None
    if cfg.test is None:
        test_ids, train_ids, n_both = _hold_out_identities(
            train_ds, cfg.test_fraction, cfg.seed, 0x7E57, f"train {cfg.train.name!r}",
            f"test_fraction={cfg.test_fraction}", "give a test dataset")
        folder.mkdir(parents=True, exist_ok=True)
        n_tr = _materialize(train_ds, train_ids, folder / "train", folder / "train.jsonl")
        n_te = _materialize(train_ds, test_ids, folder / "test", folder / "test.jsonl")
        train_spec = ComponentSpec(name="manifest", options={"path": str((folder / "train.jsonl").resolve())})
        test_spec = ComponentSpec(name="manifest", options={"path": str((folder / "test.jsonl").resolve())})
        split = {"from": cfg.train.model_dump(), "test_fraction": cfg.test_fraction, "train_identities": len(train_ids),
                 "test_identities": len(test_ids), "train_images": n_tr, "test_images": n_te}
        say(f"held out {len(test_ids)} of {n_both} train identities as the test split")
        train_ds = regs.dataset.build(train_spec)
    test_ds = regs.dataset.build(test_spec)
    sets = {"train": _identities(train_ds), "test": _identities(test_ds)}
    if _uses_new_identities(cfg):
        new_ids = sorted(_identities(regs.dataset.build(cfg.new_identities), "photo"))
        if any(a in SYNTHETIC for a in cfg.arms):
            sets["new_identities"] = set(new_ids[: cfg.new_limit] if cfg.new_limit else new_ids)
        if cfg.matcher.negatives:
            sets["negatives"] = set(new_ids)
    if cfg.distractors is not None:
        sets["distractors"] = _identities(regs.dataset.build(cfg.distractors))
    for a, b in (("train", "test"), ("new_identities", "test"), ("distractors", "test"), ("train", "new_identities"),
                 ("negatives", "test"), ("train", "negatives")):
        if a in sets and b in sets and sets[a] & sets[b]:
            both = sorted(sets[a] & sets[b])
            raise ConfigError(
                f"{a} and {b} share {len(both)} identity name(s), e.g. {', '.join(both[:3])}: the experiment needs "
                f"disjoint people. Give {b} other people (synthfaces: another seed and prefix), or set test: null to "
                "carve a disjoint test split out of train (test_fraction)")
    if not _identities(test_ds, "sketch") or not _identities(test_ds, "photo"):
        raise DataError(f"test dataset {test_spec.name!r} needs sketches (probes) and photos (gallery)")
    n_real = len(train_ds)
    return {"train": train_spec.model_dump(), "test": test_spec.model_dump(), "split": split,
            "identities": {k: len(v) for k, v in sets.items()}, "train_images": n_real}
