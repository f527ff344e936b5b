"""Keep the generated sketches a face recogniser still sees as their person.

DCFace and IDiff-Face filter their synthetic sets this way: every sketch of a
set written by ``c4s generate`` is embedded by ``encoder`` (a conditioner with
an identity token, by default the pretrained dlib ResNet-29), compared with the
reference photo it was drawn from, and kept when the cosine reaches the
threshold. The threshold is either given (``min_similarity``) or set at an
operating point of the same recogniser on the same set (``far``): the
similarity that only that share of impostor pairs (a sketch against another
person's reference photo) reaches, so that a kept sketch is one the recogniser
would verify at that false accept rate. Use a recogniser other than the one
that will judge the set.

Writes into ``out``: ``manifest.jsonl`` (the kept sketches with their
``identity_similarity``, and the photos of the people who kept one; paths point
into the source set, nothing is copied), ``filter.json`` (threshold, kept
counts overall and per style, the genuine and impostor distributions) and
``similarity.png`` (both histograms and the threshold). The set itself is not
changed; point the ``manifest`` dataset or ``report-dataset`` at ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from ..config import C4SModel, ComponentSpec


class Settings(C4SModel):
    """What decides a sketch's fate (also ``c4s experiment``'s ``identity_filter``)."""

    encoder: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="r29_id", options={"tokens": "global", "input_template": "dlib_chip"}),
        description="Conditioner whose first token embeds sketches and photos (the recogniser that filters; by "
        "default the pretrained dlib ResNet-29, not fine-tuned).")
    far: float = Field(
        0.01, gt=0.0, lt=1.0, description="The threshold is the cosine only this share of impostor pairs (a "
        "sketch vs another person's photo) reaches.")
    min_similarity: float | None = Field(
        None, ge=-1.0, le=1.0, description="Instead of far: keep sketches whose cosine to their photo is at least this.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per encoder pass.")


class Config(Settings):
    path: Path = Field(Path("c4s-out/generated"), description="Generated set (folder with manifest.jsonl and photos).")
    out: Path = Field(Path("c4s-out/filtered"), description="Output folder (must not be `path`).")


def threshold_at_far(impostor, far: float) -> float:
    """The smallest similarity that at most ``far`` of the impostor scores reach
    (strictly above it: ties at the threshold count as accepted)."""
    import numpy as np

    v = np.sort(np.asarray(impostor, np.float64))[::-1]
    if not len(v):
        raise ValueError("no impostor scores")
    k = int(np.floor(far * len(v)))  # impostors allowed at or above the threshold
    return float(np.nextafter(v[k], np.inf)) if k < len(v) else float(v[-1])


MAX_IMPOSTORS = 2_000_000  # beyond this many pairs, a seeded uniform sample sets the FAR threshold


def _impostors(e_sk, e_ph, own):
    """Cosines of sketches against other people's photos: every pair, or a seeded
    uniform sample of MAX_IMPOSTORS of them (a set of 4,000 people x 8 sketches
    has 128 M), computed a block of sketches at a time."""
    import numpy as np

    n, m = len(e_sk), len(e_ph)
    total = n * (m - 1)
    p = min(1.0, MAX_IMPOSTORS / max(total, 1))
    rng = np.random.default_rng(0)
    out = []
    for i in range(0, n, 4096):
        s = (e_sk[i:i + 4096] @ e_ph.T).astype(np.float64)
        mask = np.ones_like(s, bool)
        mask[np.arange(len(s)), own[i:i + 4096]] = False
        if p < 1.0:
            mask &= rng.random(s.shape) < p
        out.append(s[mask])
    return np.concatenate(out) if out else np.zeros(0)


def run(config: Config, progress: bool = True) -> dict:
    from collections import Counter

    import numpy as np
    from tqdm import tqdm

    from ..data.io import load_image
    from ..data.manifest import read_manifest, write_manifest
    from ..errors import ConfigError, DataError
    from ..plugins import get_registries
    from .common import prepare_out, save_run_config, write_json
    from .generate import _Similarity
    from .report_dataset import _stats

    src, out = Path(config.path), Path(config.out)
    if src.resolve() == out.resolve():
        raise ConfigError("filter-set: `out` must differ from `path` (the set itself is never changed)")
    man = src / "manifest.jsonl"
    recs = read_manifest(man)
    photos = {str(r["identity"]): r for r in recs if r.get("modality") == "photo"}
    sk = [r for r in recs if r.get("modality", "sketch") == "sketch"]
    if not sk:
        raise DataError(f"{man}: no sketch records")
    lacking = sorted({str(r["identity"]) for r in sk} - set(photos))
    if lacking:
        raise DataError(f"{man}: {len(lacking)} identities have sketches but no photo record (e.g. "
                        f"{', '.join(lacking[:3])}); the filter compares each sketch with its reference photo "
                        "(generate with write_photos: true)")
    out = prepare_out(out)
    save_run_config(out, "filter-set", config)
    sim = _Similarity(get_registries().conditioner.build(config.encoder), config.encoder.name)

    def embed(items, desc):
        e = []
        bs = config.batch_size
        for i in tqdm(range(0, len(items), bs), desc=desc, disable=not progress, unit="batch"):
            e.append(sim.embed([load_image(src / r["path"]) for r in items[i:i + bs]]))
        return np.concatenate(e)

    ids = sorted(photos)
    e_ph = embed([photos[d] for d in ids], "filter photos")
    e_sk = embed(sk, "filter sketches")
    col = {d: j for j, d in enumerate(ids)}
    own = np.array([col[str(r["identity"])] for r in sk])
    genuine = np.einsum("ij,ij->i", e_sk, e_ph[own]).astype(np.float64)  # float64: exact threshold tests
    impostor = _impostors(e_sk, e_ph, own)
    if config.min_similarity is None:
        if not len(impostor):
            raise DataError(f"{man}: one identity only, so no impostor pairs to set `far` from; give min_similarity")
        t = threshold_at_far(impostor, config.far)
    else:
        t = float(config.min_similarity)
    kept = [{**r, "identity_similarity": round(float(g), 6), "similarity_encoder": sim.name}
            for r, g in zip(sk, genuine, strict=True) if g >= t]
    keep_ids = sorted({str(r["identity"]) for r in kept})
    # paths relative to out, so the manifest dataset resolves them from there
    rel = Path(os.path.relpath(src.resolve(), out.resolve()))
    moved = [{**photos[d], "path": (rel / photos[d]["path"]).as_posix()} for d in keep_ids]
    moved += [{**r, "path": (rel / r["path"]).as_posix()} for r in kept]
    write_manifest(out / "manifest.jsonl", moved)

    styles = sorted({str(r.get("style")) for r in sk})
    n_style = Counter(str(r.get("style")) for r in sk)
    k_style = Counter(str(r.get("style")) for r in kept)

    summary = {
        "out": str(out), "source": str(src), "encoder": sim.name, "threshold": t,
        "far": config.far if config.min_similarity is None else None,
        "min_similarity": config.min_similarity,
        "sketches": len(sk), "kept_sketches": len(kept), "kept_share": len(kept) / len(sk),
        "identities": len(ids), "kept_identities": len(keep_ids),
        "impostor_share_accepted": float(np.mean(impostor >= t)) if len(impostor) else None,
        "impostor_pairs_sampled": len(sk) * (len(ids) - 1) > MAX_IMPOSTORS,
        "kept_by_style": {st: {"kept": k_style[st], "of": n_style[st], "share": k_style[st] / n_style[st]}
                          for st in styles},
        "genuine": _stats(genuine), "impostor": _stats(impostor),
    }
    write_json(out / "filter.json", summary)
    _plot(out / "similarity.png", genuine, impostor, t, sim.name)
    if not kept:
        raise DataError(f"filter-set: no sketch of {man} reaches the threshold {t:.3f}; nothing to train on "
                        f"(genuine median {np.median(genuine):.3f}); see {out / 'filter.json'}")
    return summary


def _plot(path: Path, genuine, impostor, t: float, name: str) -> None:
    import io

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.5))
    lo = float(min(np.min(genuine), np.min(impostor) if len(impostor) else 1.0, t))
    hi = float(max(np.max(genuine), t))
    bins = np.linspace(lo, hi, 40)
    if len(impostor):
        ax.hist(impostor, bins=bins, density=True, alpha=0.5, label=f"impostor ({len(impostor)})")
    ax.hist(genuine, bins=bins, density=True, alpha=0.6, label=f"genuine ({len(genuine)})")
    ax.axvline(t, color="k", ls="--", label=f"threshold {t:.3f}")
    ax.set_xlabel(f"cosine, sketch vs reference photo ({name})")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

