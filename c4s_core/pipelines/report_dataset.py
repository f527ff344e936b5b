"""Report on a generated sketch set (the output of ``c4s generate``).

Reads ``PATH/manifest.jsonl`` and writes, into ``out`` (default: ``PATH``):

- ``similarity_hist.png``: histogram of ``identity_similarity`` (cosine between
  the ID embeddings of each sketch and its source photo), one series per style;
- ``contact_sheet.png``: rows = identities, columns = the source photo, then
  sketch ``k=0`` of each style;
- ``report.json`` and ``report.md``: counts per style and identity, the
  similarity distribution (mean, std, quantiles; overall and per style) and
  intra-identity diversity.

Diversity is measured in pixel space, with no learned model: each sketch is
converted to grey, resized to 32x32 and scaled to [0, 1]; the distance of two
sketches is the mean absolute difference of those pixels (0: identical, 1:
black vs white). ``diversity_within_style`` averages, over (identity, style)
groups, the mean pairwise distance of the K sketches drawn with different
seeds; ``diversity_identity`` does the same over all sketches of an identity
(styles mixed). With ``encoder`` set (a conditioner, e.g. ``adaface_id``),
``embedding_diversity`` gives the same two figures as ``1 - cosine`` of that
encoder's first token.

With ``judge`` set (a matcher folder: a recogniser fine-tuned on the real
training split only, never used to train or select the generator), the set's
identity fidelity is measured by :func:`c4s_core.judge.judge_set`: each sketch
ranked against the set's reference photos plus ``judge_distractors``, beside
the real held-out sketches of ``judge_real`` against a gallery of the same
number of identities (the ceiling): rank-1, rank-10, genuine - impostor gap,
the Fréchet distance to the real sketches in the judge's space, diversity in
that space and style accuracy. Written under ``judge`` in report.json, as a
table in report.md and as ``judge.png``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import C4SModel, ComponentSpec


class Config(C4SModel):
    path: Path | None = Field(None, description="Generated set (folder with manifest.jsonl); none: `out`.")
    out: Path | None = Field(None, description="Where to write the report; none: `path`.")
    sheet_identities: int = Field(12, ge=0, le=200, description="Rows of the contact sheet (0: none).")
    diversity_identities: int = Field(200, ge=1, le=100_000, description="Identities sampled for diversity figures.")
    encoder: ComponentSpec | None = Field(None, description="Conditioner for embedding-space diversity; none: pixels only.")
    bins: int = Field(30, ge=5, le=200, description="Histogram bins.")
    similarity_encoder: ComponentSpec | None = Field(
        None, description="Measure identity similarity here, for sets generated without it (e.g. dlib_id): "
        "genuine (sketch vs its own photo) and impostor (vs another identity's photo), on similarity_identities.")
    similarity_identities: int = Field(200, ge=2, le=100_000, description="Identities sampled (seeded) for similarity_encoder.")
    judge: Path | None = Field(
        None, description="Matcher folder (train-matcher output) that judges identity fidelity: a recogniser fine-tuned "
        "on the real training split only, never used to train or select the generator; none: no judge.")
    judge_real: ComponentSpec | None = Field(
        None, description="Real held-out photo/sketch pairs (people the generator and judge never saw): the ceiling. "
        "Needed with judge.")
    judge_distractors: ComponentSpec | None = Field(
        None, description="Photos of other people added to both judge galleries (their sketches never match).")
    judge_identities: int | None = Field(
        None, ge=2, le=1_000_000, description="Identities per judge gallery (seeded pick); none: as many as both sets have.")
    judge_grey: bool = Field(True, description="Turn every image grey before the judge (as the evaluation protocols do).")


def _stats(v):
    import numpy as np

    v = np.asarray([x for x in v if x is not None], np.float64)
    if not len(v):
        return None
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "q05": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "q95": float(q[4])}


def _pairwise_mean(x) -> float | None:
    """Mean over pairs i < j of the mean absolute difference of rows of x."""
    import numpy as np

    n = len(x)
    if n < 2:
        return None
    d = [float(np.abs(x[i] - x[j]).mean()) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(d))


def _cos_pairwise(e) -> float | None:
    import numpy as np

    n = len(e)
    if n < 2:
        return None
    s = e @ e.T
    return float(np.mean([1.0 - s[i, j] for i in range(n) for j in range(i + 1, n)]))


def _measure_similarity(config: Config, src: Path, sk: list[dict], photos: dict[str, dict], progress: bool):
    """Sketch records of sampled identities with ``identity_similarity`` (cosine to
    their own photo) filled in, and the impostor statistics (cosine to the photo of
    the next sampled identity): the gap is what a matcher can learn from the set."""
    import numpy as np
    from tqdm import tqdm

    from ..data.io import load_image
    from ..plugins import get_registries
    from .generate import _Similarity

    ids = sorted(i for i in {r["identity"] for r in sk} if i in photos)
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(ids), min(len(ids), config.similarity_identities), replace=False).tolist())
    ids = [ids[i] for i in pick]
    sim = _Similarity(get_registries().conditioner.build(config.similarity_encoder), config.similarity_encoder.name)
    nxt = {d: ids[(i + 1) % len(ids)] for i, d in enumerate(ids)}
    ph = {}
    out, imp = [], []
    keep = set(ids)
    for r in tqdm([r for r in sk if r["identity"] in keep], desc="similarity", disable=not progress, unit="img"):
        d = r["identity"]
        for key in (d, nxt[d]):
            if key not in ph:
                ph[key] = load_image(src / photos[key]["path"])
        e = sim.embed([load_image(src / r["path"])])[0]  # once, scored against both photos
        out.append({**r, "identity_similarity": round(float(e @ sim.photo(d, ph[d])), 6),
                    "similarity_encoder": sim.name})
        imp.append(float(e @ sim.photo(nxt[d], ph[nxt[d]])))
    return out, _stats(imp)


def run(config: Config, progress: bool = True) -> dict:
    from collections import Counter, defaultdict

    import numpy as np
    from tqdm import tqdm

    from ..data.io import atomic_write_bytes, grid, load_image, resize, save_image
    from ..data.manifest import read_manifest
    from ..errors import ConfigError, DataError
    from ..plugins import get_registries
    from .common import prepare_out, write_json

    src = config.path or config.out
    if src is None:
        raise ConfigError("report-dataset: give the generated set with --set path=DIR (or --out DIR)")
    src = Path(src)
    man = src / "manifest.jsonl"
    if not man.is_file():
        parts = sorted(src.glob("manifest.shard-*.jsonl"))
        hint = (" (only shard parts found: finish every shard, or rerun `c4s generate` once to merge)" if parts
                else " (run `c4s generate` first)")
        raise DataError(f"{man} not found{hint}")
    out = prepare_out(config.out or src)
    recs = read_manifest(man)
    sk = [r for r in recs if r.get("modality", "sketch") == "sketch"]
    photos = {r["identity"]: r for r in recs if r.get("modality") == "photo"}
    if not sk:
        raise DataError(f"{man}: no sketch records")
    styles = sorted({str(r.get("style")) for r in sk})
    by_style = Counter(str(r.get("style")) for r in sk)
    by_ident = Counter(r["identity"] for r in sk)
    impostor = None
    if config.similarity_encoder is not None and all(r.get("identity_similarity") is None for r in sk):
        measured, impostor = _measure_similarity(config, src, sk, photos, progress)
        got = {r["path"]: r for r in measured}
        sk = [got.get(r["path"], r) for r in sk]  # counts stay over the whole set
    sims = [r.get("identity_similarity") for r in sk]
    sim_by_style = {s: _stats([r.get("identity_similarity") for r in sk if str(r.get("style")) == s]) for s in styles}

    # -- similarity histogram --------------------------------------------------------
    hist_path = None
    if any(v is not None for v in sims):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        allv = [v for v in sims if v is not None]
        edges = np.linspace(min(allv), max(allv) + 1e-9, config.bins + 1)
        for s in styles:
            v = [r["identity_similarity"] for r in sk if str(r.get("style")) == s and r.get("identity_similarity") is not None]
            ax.hist(v, bins=edges, alpha=0.5, label=f"{s} (n={len(v)})")
        enc = next((r.get("similarity_encoder") for r in sk if r.get("similarity_encoder")), "?")
        ax.set_xlabel(f"identity similarity (cosine, {enc})")
        ax.set_ylabel("sketches")
        ax.legend(fontsize=7)
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        hist_path = out / "similarity_hist.png"
        atomic_write_bytes(hist_path, buf.getvalue())

    # -- diversity -------------------------------------------------------------------------
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in sk:
        groups[r["identity"]].append(r)
    chosen = sorted(groups)[: config.diversity_identities]
    encoder = get_registries().conditioner.build(config.encoder) if config.encoder else None
    within, across, ewithin, eacross = [], [], [], []
    for d in tqdm(chosen, desc="report", disable=not progress, unit="id"):
        rs = sorted(groups[d], key=lambda r: r["path"])
        ims = [load_image(src / r["path"]) for r in rs]
        px = np.stack([resize(im, 32).mean(axis=2) / 255.0 for im in ims])
        emb = None
        if encoder is not None:
            t = encoder.encode(ims, None)
            e = (t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t))
            e = e[:, 0] if e.ndim == 3 else e
            emb = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        a = _pairwise_mean(px)
        if a is not None:
            across.append(a)
        if emb is not None and (c := _cos_pairwise(emb)) is not None:
            eacross.append(c)
        for s in styles:
            idx = [i for i, r in enumerate(rs) if str(r.get("style")) == s]
            w = _pairwise_mean(px[idx]) if len(idx) > 1 else None
            if w is not None:
                within.append(w)
            if emb is not None and len(idx) > 1:
                ewithin.append(_cos_pairwise(emb[idx]))

    judged = _judge(config, src, groups, photos, progress) if config.judge is not None else None

    # -- contact sheet ---------------------------------------------------------------------
    sheet_path = None
    if config.sheet_identities:
        rows = []
        size = None
        for d in sorted(groups)[: config.sheet_identities]:
            cells = []
            for s in styles:
                r = next((x for x in sorted(groups[d], key=lambda x: (x.get("k") or 0)) if str(x.get("style")) == s), None)
                cells.append(load_image(src / r["path"]) if r else None)
            size = size or next(c.shape[0] for c in cells if c is not None)
            ph = photos.get(d)
            row = [resize(load_image(src / ph["path"]), size) if ph else np.full((size, size, 3), 255, np.uint8)]
            row += [c if c is not None else np.full((size, size, 3), 255, np.uint8) for c in cells]
            rows.append(row)
        if rows:
            sheet_path = out / "contact_sheet.png"
            save_image(sheet_path, grid(rows))

    report = {
        "path": str(src), "sketches": len(sk), "photos": len(photos), "identities": len(by_ident),
        "styles": dict(sorted(by_style.items())),
        "sketches_per_identity": _stats(list(by_ident.values())),
        "identity_similarity": _stats(sims), "identity_similarity_by_style": sim_by_style,
        "impostor_similarity": impostor,
        "similarity_encoder": next((r.get("similarity_encoder") for r in sk if r.get("similarity_encoder")), None),
        "diversity": {
            "space": "grey 32x32 pixels in [0, 1], mean absolute difference",
            "diversity_within_style": float(np.mean(within)) if within else None,
            "diversity_identity": float(np.mean(across)) if across else None,
            "identities_measured": len(chosen),
        },
        "embedding_diversity": None if encoder is None else {
            "encoder": config.encoder.name, "space": "1 - cosine of the first token",
            "diversity_within_style": float(np.mean(ewithin)) if ewithin else None,
            "diversity_identity": float(np.mean(eacross)) if eacross else None,
        },
        "generators": sorted({str(r.get("generator")) for r in sk}),
        "samplers": sorted({f"{r.get('sampler')}@{r.get('steps')}" for r in sk if r.get("sampler")}),
        "checkpoints": sorted({str(r.get("checkpoint_hash")) for r in sk}),
        "judge": judged,
        "figures": {"similarity_hist": hist_path and hist_path.name, "contact_sheet": sheet_path and sheet_path.name,
                    "judge": judged and judged.pop("_figure", None)},
    }
    write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", _markdown(report).encode())
    return {"out": str(out), **{k: report[k] for k in ("sketches", "identities", "styles")},
            "identity_similarity_mean": (report["identity_similarity"] or {}).get("mean"),
            "impostor_similarity_mean": (report["impostor_similarity"] or {}).get("mean"),
            "diversity_within_style": report["diversity"]["diversity_within_style"],
            **({"judge_rank1": judged["generated"]["rank1"], "judge_real_rank1": judged["real"]["rank1"],
                "judge_frechet": judged["frechet_distance"]} if judged else {})}


def _judge(config: Config, src: Path, groups: dict, photos: dict, progress: bool) -> dict:
    """The judge's fidelity figures for this set (see the module docstring), and judge.png."""
    import numpy as np

    from .. import judge as jd
    from ..data.io import atomic_write_bytes, load_image
    from ..errors import ConfigError, DataError
    from ..plugins import get_registries

    if config.judge_real is None:
        raise ConfigError("report-dataset: judge needs judge_real (real held-out photo/sketch pairs: the ceiling)")
    regs = get_registries()
    judge = regs.backbone.build("matcher", {"path": str(config.judge)})
    ids = sorted(d for d in groups if d in photos)
    if not ids:
        raise DataError(f"{src}/manifest.jsonl: no sketch identity has a reference photo record; the judge needs them")
    if config.judge_identities and len(ids) > config.judge_identities:
        pick = np.random.default_rng(0).choice(len(ids), config.judge_identities, replace=False)
        ids = [ids[i] for i in sorted(pick)]
    recs = [r for d in ids for r in sorted(groups[d], key=lambda r: r["path"])]
    gen = ([load_image(src / r["path"]) for r in recs], [r["identity"] for r in recs], [r.get("style") for r in recs])
    refs = {d: load_image(src / photos[d]["path"]) for d in ids}
    ds = regs.dataset.build(config.judge_real)
    real_sk, real_ids, real_st, real_ph = [], [], [], {}
    for i in range(len(ds)):
        smp = ds[i]
        if smp.modality == "photo":
            real_ph.setdefault(smp.identity, []).append(smp.image)
        else:
            real_sk.append(smp.image)
            real_ids.append(smp.identity)
            real_st.append(smp.style)
    distractors = []
    if config.judge_distractors is not None:
        dd = regs.dataset.build(config.judge_distractors)
        distractors = [dd[i].image for i in range(len(dd)) if dd[i].modality == "photo"]
    try:
        out = jd.judge_set(judge, gen, refs, (real_sk, real_ids, real_st), real_ph, distractors,
                           identities=config.judge_identities, grey=config.judge_grey, progress=progress)
    except ValueError as err:
        raise DataError(f"report-dataset: {err} (set {src}, judge_real {config.judge_real.name!r})") from None
    out["judge"] = str(config.judge)
    png = _judge_plot(out)
    atomic_write_bytes((config.out or src) / "judge.png", png)
    out["_figure"] = "judge.png"
    return out


def _judge_plot(j: dict) -> bytes:
    """Rank-1, rank-10 and the genuine - impostor gap: generated beside real held-out sketches."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("rank1", "rank-1"), ("rank10", "rank-10"), ("gap", "genuine - impostor")]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for k, (name, off) in enumerate((("generated", -0.2), ("real", 0.2))):
        v = [j[name][key] or 0.0 for key, _ in keys]
        ax.bar(x + off, v, 0.4, label=f"{name} sketches", color=("tab:orange", "tab:blue")[k])
    ax.set_xticks(x, [t for _, t in keys])
    ax.set_ylim(0, 1)
    ax.set_title(f"judge: {j['identities']} identities + {j['distractors']} distractors", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _markdown(r: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    s = r["identity_similarity"] or {}
    lines = [
        f"# Generated set report: {r['path']}", "",
        f"{r['sketches']} sketches of {r['identities']} identities ({r['photos']} source photos); "
        f"generator(s): {', '.join(r['generators'])}; sampler(s): {', '.join(r['samplers']) or 'none'}.", "",
        "| style | sketches | mean identity similarity |", "|---|---|---|",
    ]
    for st, n in r["styles"].items():
        lines.append(f"| {st} | {n} | {f((r['identity_similarity_by_style'].get(st) or {}).get('mean'))} |")
    imp = r.get("impostor_similarity") or {}
    lines += [
        "", f"Identity similarity ({r['similarity_encoder'] or 'not measured'}): mean {f(s.get('mean'))}, "
        f"std {f(s.get('std'))}, median {f(s.get('median'))}, 5-95% [{f(s.get('q05'))}, {f(s.get('q95'))}]"
        + (f"; against another identity's photo (impostor): mean {f(imp.get('mean'))} "
           f"(gap {f(s.get('mean', 0) - imp.get('mean', 0))}, over {s.get('n')} sketches)" if imp else "") + ".", "",
        f"Diversity ({r['diversity']['space']}): within style {f(r['diversity']['diversity_within_style'])}, "
        f"within identity {f(r['diversity']['diversity_identity'])}.",
    ]
    if r["embedding_diversity"]:
        e = r["embedding_diversity"]
        lines.append(f"Embedding diversity ({e['encoder']}, {e['space']}): within style "
                     f"{f(e['diversity_within_style'])}, within identity {f(e['diversity_identity'])}.")
    j = r.get("judge")
    if j:
        lines += ["", f"## Identity fidelity (judge {j['judge']})", "",
                  f"Each sketch ranked against {j['identities']} identities' photos + {j['distractors']} distractors "
                  f"({'grey' if j['grey'] else 'colour'}); real held-out sketches resized to {j['side']} px first.", "",
                  "| sketches | probes | rank-1 | rank-10 | genuine | impostor | gap |", "|---|---|---|---|---|---|---|"]
        for name in ("generated", "real"):
            x = j[name]
            lines.append(f"| {name} | {x['probes']} | {f(x['rank1'])} | {f(x['rank10'])} | {f(x['genuine'])} | "
                         f"{f(x['impostor'])} | {f(x['gap'])} |")
        if j.get("by_style"):
            lines += ["", "By style (each style's sketches against the same gallery):", "",
                      "| style | probes | rank-1 | real probes | real rank-1 | ratio |", "|---|---|---|---|---|---|"]
            for style, b in j["by_style"].items():
                g, rl = b["generated"] or {}, b["real"] or {}
                lines.append(f"| {style} | {g.get('probes', 0)} | {f(g.get('rank1'))} | {rl.get('probes', 0)} | "
                             f"{f(rl.get('rank1'))} | {f(b['rank1_ratio'])} |")
        st, dv = j.get("style") or {}, j["diversity"]
        lines += ["", f"Generated rank-1 / real rank-1: {f(j['rank1_ratio'])}. Fréchet distance to the real sketches "
                  f"in the judge's space: {f(j['frechet_distance'])} (rows {j['frechet_rows'][0]} / {j['frechet_rows'][1]}). "
                  f"Style accuracy: {f(st.get('accuracy'))} (classifier on real sketches: {f(st.get('real_accuracy'))}, "
                  f"chance {f(st.get('chance'))}). Diversity (1 - cosine, judge): generated within identity "
                  f"{f(dv['generated']['within_identity'])}, between {f(dv['generated']['between_identities'])}; "
                  f"real between identities {f(dv['real']['between_identities'])}."]
    for k, v in r["figures"].items():
        if v:
            lines += ["", f"![{k}]({v})"]
    return "\n".join(lines) + "\n"
