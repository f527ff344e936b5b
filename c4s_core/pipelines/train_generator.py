"""Train a sketch generator (default: the CLIP4Sketch ``diffusion`` DDPM) on
photo/sketch pairs.

Data: any dataset whose photos and sketches share identities (``synthfaces``
by default, CUFS through ``paired_folder``). Each sketch is paired with a photo
of its identity (cycling through that identity's photos) and labelled with its
style (the sample's, else ``default_style``); ``procedural_styles`` add pairs
whose sketch is a procedural rendering of the photo. Photos and sketches go
through the ``aligner`` (falls back to a plain resize when no aligner is
registered). ``val_fraction`` of the identities are held out for the
validation loss and the sample grid.

Output (``OUT``): ``generator/`` (the trained generator: safetensors +
generator.json), ``checkpoints/step_N/`` (resumable), ``samples/step_N.png``
(grid: grid identities x styles), ``history.json``, ``summary.json``,
``config.yaml``, ``cache/`` (condition embeddings keyed by image hash and
encoder identity). ``--resume`` continues from the newest checkpoint with the
same data order and randomness, giving the same weights as an uninterrupted run.
It refuses, before anything is written, a checkpoint whose files do not match
the hashes its generator.json records, settings other than ``steps`` and
``stop_after`` that differ from the run's, and training data that changed; a
run without ``--resume`` refuses an out folder that already holds checkpoints
(the two runs' checkpoints would mix, and ``--resume`` would take the newest).

Under ``torchrun --nproc-per-node N`` (one or several nodes) the same command
trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs): ``batch_size``
is the global batch (it must divide by N), every rank follows the same batch
plan and takes its contiguous rows, the noise, timesteps and condition drops of
the whole global batch are drawn on every rank from the shared generator, and
gradients are averaged as the global mean: N processes give the weights of one
process (up to float rounding). The learning rate is not rescaled. Rank 0 logs,
validates, draws the grids and writes; every rank reads the dataset (rank 0
encodes the conditions first and fills the cache, the others read it when
``cache_dir`` is shared, else encode themselves). Checkpoints hold plain state
dicts, so ``--resume`` works with another number of processes. Generators
trained through ``fit_pairs`` (gan) run in one process only.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import C4SModel, ComponentSpec

# fields that may change between a run and its --resume (train-matcher: epochs, stop_after)
RESUMABLE_CHANGES = ("resume", "steps", "stop_after")
# per-invocation fields, left out of the settings recorded in the generator's JSON
_NOT_RECORDED = ("out", "resume", "stop_after")


class Config(C4SModel):
    dataset: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(
            name="synthfaces",
            options={"num_identities": 300, "images_per_identity": 1, "sketches_per_identity": 3,
                     "styles": ["line", "pencil", "charcoal"]},
        ),
        description="Paired dataset: photos and sketches sharing identities (any dataset plugin).",
    )
    default_style: str = Field("pencil", description="Style label of sketches whose sample has none.")
    procedural_styles: list[str] = Field(
        default_factory=list,
        description="Extra pairs: each photo rendered by these sketch styles (registry styles with renders=True).",
    )
    aligner: ComponentSpec | None = Field(
        default_factory=lambda: ComponentSpec(name="center", options={"box": [0.0, 0.0, 1.0, 1.0]}),
        description="Aligner for photos and sketches (its size is set by c4s); none: plain resize.",
    )
    condition_size: int = Field(112, ge=32, le=512, description="Side of the aligned photos given to the conditioners.")
    generator: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="diffusion", options={"preset": "small"}),
        description="Generator to train and its options (e.g. preset, conditioners).",
    )
    steps: int = Field(2000, ge=1, le=10_000_000, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=256, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, le=1.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up steps.")
    checkpoint_every: int = Field(500, ge=0, description="Save a resumable checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="Checkpoints kept (oldest deleted).")
    sample_every: int = Field(500, ge=0, description="Write a sample grid every N steps (0: only at the end; needs grid_identities > 0).")
    val_every: int = Field(250, ge=0, description="Held-out validation loss every N steps (0: only at the end).")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of identities held out for validation and grids.")
    grid_identities: int = Field(4, ge=0, le=64, description="Rows of the sample grid (held-out identities first).")
    grid_styles: list[str] | None = Field(None, description="Columns of the sample grid; none: the data's styles (at most 4).")
    grid_sampler: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="ddim", options={"steps": 25}), description="Sampler for the grids."
    )
    grid_guidance: dict[str, float] = Field(
        default_factory=lambda: {"identity": 2.0, "style": 2.0},
        description="Per-role guidance for the grids (roles the generator lacks are ignored).",
    )
    cache_dir: Path | None = Field(None, description="Condition embedding cache; none: OUT/cache.")
    seed: int = Field(0, ge=0, description="Seed of the data order, noise, drop masks and the split.")
    resume: bool = Field(False, description="Continue from the newest checkpoint in OUT/checkpoints.")
    stop_after: int | None = Field(None, ge=1, description="Stop (with a checkpoint) after this many steps; for tests of resume.")
    out: Path = Field(Path("c4s-out/generator"), description="Output folder.")


def build_pairs(config: Config, ds, progress: bool = True):
    """(photos, sketches, styles, identities) lists: each sketch with a photo of its identity."""
    from tqdm import tqdm

    from ..errors import DataError
    from ..plugins import get_registries

    photos: dict[str, list] = {}
    sketches: list[tuple[str, object, str]] = []
    for i in tqdm(range(len(ds)), desc="load", disable=not progress, unit="img"):
        s = ds[i]
        if s.modality == "photo":
            photos.setdefault(s.identity, []).append(s.image)
        else:
            sketches.append((s.identity, s.image, s.style or config.default_style))
    P, S, ST, ID = [], [], [], []
    used: dict[str, int] = {}
    for ident, sk, style in sketches:
        ph = photos.get(ident)
        if not ph:
            continue
        k = used.get(ident, 0)
        used[ident] = k + 1
        P.append(ph[k % len(ph)])
        S.append(sk)
        ST.append(style)
        ID.append(ident)
    if config.procedural_styles:
        reg = get_registries().sketch_style
        renderers = []
        for name in config.procedural_styles:
            entry = reg.get(name)
            if not getattr(entry.cls, "renders", False):
                raise DataError(f"procedural_styles: style {name!r} has no procedural renderer (renders=False)")
            renderers.append((entry.name, reg.build(name)))
        for ident in sorted(photos):
            ph = photos[ident][0]
            for name, st in renderers:
                P.append(ph)
                S.append(st.render(ph))
                ST.append(name)
                ID.append(ident)
    if not P:
        raise DataError(
            f"dataset {config.dataset.name!r} gave no photo/sketch pairs sharing an identity "
            f"({sum(len(v) for v in photos.values())} photos, {len(sketches)} sketches); "
            "train-generator needs paired data (or procedural_styles)"
        )
    return P, S, ST, ID


def align_all(config: Config, images, size: int):
    import numpy as np

    from ..data.io import resize
    from ..plugins import get_registries

    regs = get_registries()
    if config.aligner is None or config.aligner.name not in regs.aligner:
        return [resize(np.asarray(im), size) for im in images], 0
    opts = dict(config.aligner.options)
    opts["size"] = size
    aligner = regs.aligner.build(config.aligner.name, opts)
    res = aligner.align(images)
    out, skipped = [], 0
    for r in res:
        if r.image is None:
            skipped += 1
            out.append(None)
        else:
            out.append(r.image)
    return out, skipped


def run(config: Config, progress: bool = True) -> dict:
    """Train; under torchrun, every process calls this with the same config."""
    from .. import distributed as dist

    device_type = _device_type(config)
    with dist.init_from_env(device_type) as ctx:
        return _run(config, progress, ctx, device_type)


def _device_type(config: Config) -> str:
    """cuda or cpu, from the generator's ``device`` option (auto: cuda if available)."""
    import torch

    dev = str(config.generator.options.get("device", "auto"))
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return dev.split(":")[0]


_UNSET = object()


def _comparable(data: dict) -> dict:
    """Recorded settings with the generator's options completed by their defaults,
    so spelling out a default (or leaving one out) is no change."""
    import json

    from ..errors import C4SError
    from ..plugins import get_registries

    data = dict(data)
    gen = data.get("generator")
    if isinstance(gen, dict) and gen.get("name"):
        try:
            opts = get_registries().generator.config(gen["name"], gen.get("options") or {})
        except C4SError:  # an unknown or changed plugin: compare the options as written
            return data
        data["generator"] = {**gen, "options": json.loads(opts.model_dump_json())}
    return data


def _differences(now, saved, path: str = "") -> list[tuple[str, object, object]]:
    """``(dotted field, saved value, new value)`` for every setting that differs."""
    if isinstance(now, dict) and isinstance(saved, dict):
        found = []
        for k in list(now) + [k for k in saved if k not in now]:
            found += _differences(now.get(k, _UNSET), saved.get(k, _UNSET), f"{path}.{k}" if path else str(k))
        return found
    return [] if now == saved else [(path, saved, now)]


def _show(v) -> str:
    import json

    text = "(unset)" if v is _UNSET else json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_resume(config: Config, saved: dict, where: Path) -> None:
    import json

    from ..errors import ConfigError

    now = {k: v for k, v in json.loads(config.model_dump_json()).items() if k not in RESUMABLE_CHANGES and k != "out"}
    saved = {k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES and k != "out"}
    diff = _differences(_comparable(now), _comparable(saved))
    if diff:
        shown = ", ".join(f"{f} ({_show(a)} then, {_show(b)} now)" for f, a, b in diff[:8])
        more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
        raise ConfigError(
            f"--resume: the config differs from the run in {where} in {shown}{more}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change. Use the saved {where / 'config.yaml'} "
            "or another out folder."
        )


def _resume_point(config: Config, out: Path) -> dict | None:
    """The newest checkpoint's generator.json, its files verified and the run's
    settings checked against ``config``; None for a fresh run. Refuses a fresh run
    over an old run's checkpoints and a --resume without one."""
    import json

    from ..errors import DataError
    from ..training import latest_checkpoint, verify_folder

    ckdir = out / "checkpoints"
    if not config.resume:
        if any(ckdir.glob("step_*")):
            raise DataError(f"{out} already holds a training run ({ckdir}); pass --resume to continue it, "
                            "or pick another out")
        return None
    last = latest_checkpoint(ckdir)
    if last is None:
        raise DataError(f"--resume: no checkpoint in {ckdir} (step_*/trainer_state.pt); run without --resume first")
    meta = verify_folder(last, "generator.json") if (last / "generator.json").is_file() else {}
    saved = meta.get("train_config")
    if saved is None:  # checkpoints from before the settings were recorded: the run's last records
        try:
            run_info = json.loads((out / "run.json").read_text())
            saved = run_info["config"] if run_info.get("pipeline") == "train-generator" else None
        except (OSError, ValueError, KeyError, TypeError):
            saved = None
    if saved is None:
        import warnings

        warnings.warn(f"--resume: {last} records no settings; they are not checked against this run's", stacklevel=2)
    else:
        _check_resume(config, saved, out)
    return {"checkpoint": str(last), "dataset_hash": (meta.get("dataset") or {}).get("hash")}


def _run(config: Config, progress: bool, ctx, device_type: str) -> dict:
    import hashlib
    import json
    import time

    import numpy as np

    from .. import distributed as dist
    from ..data.io import array_hash, resize
    from ..errors import C4SError, ConfigError, DataError
    from ..plugins import get_registries
    from .common import prepare_out, remove_partial_files, save_run_config, write_json

    main, world = ctx.is_main, ctx.world
    per_rank = dist.per_rank_batch(config.batch_size, world)
    show = progress and main
    out = prepare_out(config.out) if main else Path(config.out)
    if main and config.resume:
        remove_partial_files(out)  # a killed run's half-written temp files
    # rank 0 checks (its out folder need not be shared) before anything is written
    point, err = None, None
    if main:
        try:
            point = _resume_point(config, out)
        except C4SError as e:
            err = e
    point, err = dist.broadcast_object((point, err))
    if err is not None:
        raise err
    regs = get_registries()
    ds = regs.dataset.build(config.dataset)
    gen_spec = config.generator
    device = ctx.device(device_type)
    if world > 1 and device_type == "cuda":  # each rank on its own GPU
        entry = regs.generator.get(gen_spec.name)
        if "device" in entry.config_cls.model_fields:
            gen_spec = gen_spec.model_copy(update={"options": {**gen_spec.options, "device": str(device)}})
    gen = regs.generator.build(gen_spec)
    pairs_mode = hasattr(gen, "fit_pairs")  # e.g. gan: trains on (photo, sketch, style) directly
    if not pairs_mode and (not hasattr(gen, "fit") or not hasattr(gen, "encode_conditions")):
        raise ConfigError(f"generator {config.generator.name!r} cannot be trained by train-generator "
                          "(no fit_pairs, nor fit/encode_conditions)")
    if pairs_mode and world > 1:
        raise ConfigError(f"generator {config.generator.name!r} trains through fit_pairs, which has no torchrun "
                          f"support; run train-generator in one process (without torchrun), not {world}")
    info = dist.DistributedInfo.current(device, per_rank_batch=per_rank, lr=config.lr, grad_accum=config.grad_accum)
    info.effective_batch = config.batch_size * config.grad_accum
    info = info.as_dict()
    if main:
        save_run_config(out, "train-generator", config, {"distributed": info})
    size = gen.size

    P, S, ST, ID = build_pairs(config, ds, show)
    csize = max(config.condition_size, size)
    Pa, sk1 = align_all(config, P, csize)
    Sa, sk2 = align_all(config, S, csize)
    keep = [i for i in range(len(P)) if Pa[i] is not None and Sa[i] is not None]
    photos = [Pa[i] for i in keep]
    sketches = np.stack([resize(Sa[i], size) for i in keep])
    styles = [ST[i] for i in keep]
    idents = [ID[i] for i in keep]

    # identity split (deterministic from the seed)
    uniq = sorted(set(idents))
    rng = np.random.default_rng([config.seed, 0x5A11])
    n_val = int(round(config.val_fraction * len(uniq))) if len(uniq) > 1 else 0
    n_val = min(n_val, len(uniq) - 1)
    val_ids = set(rng.permutation(uniq)[:n_val].tolist())
    tr = [i for i, d in enumerate(idents) if d not in val_ids]
    va = [i for i, d in enumerate(idents) if d in val_ids]

    h = hashlib.sha256()
    for i in range(len(photos)):
        h.update(f"{idents[i]}|{styles[i]}|{array_hash(photos[i])}|{array_hash(sketches[i])}\n".encode())
    data_hash = h.hexdigest()[:16]
    if point and point["dataset_hash"] not in (None, data_hash):
        raise DataError(f"--resume: the training data changed since {point['checkpoint']} was written (data hash "
                        f"{point['dataset_hash']} then, {data_hash} now); resume with the same data or pick another out")
    # the run's settings travel in every checkpoint, so --resume can check them
    gen.meta["train_config"] = {k: v for k, v in json.loads(config.model_dump_json()).items() if k not in _NOT_RECORDED}
    gen.meta["dataset"] = {
        "spec": config.dataset.model_dump(), "hash": data_hash, "pairs": len(photos),
        "train_pairs": len(tr), "val_pairs": len(va), "identities": len(uniq), "val_identities": len(val_ids),
        "styles": sorted(set(styles)), "skipped_by_aligner": sk1 + sk2,
    }

    cache_dir = config.cache_dir or (out / "cache")
    t0 = time.perf_counter()
    tokens = []
    if not pairs_mode:  # rank 0 fills the cache first; the others then read it (or encode, if not shared)
        if main:
            tokens = gen.encode_conditions(photos, styles, cache_dir)
        dist.barrier()
        if not main:
            tokens = gen.encode_conditions(photos, styles, cache_dir)
    t_enc = time.perf_counter() - t0

    grid = None
    if config.grid_identities:
        order = [d for d in sorted(val_ids)] + [d for d in uniq if d not in val_ids]
        rows = order[: config.grid_identities]
        first = {d: photos[idents.index(d)] for d in rows}
        gstyles = config.grid_styles or sorted(set(styles))[:4]
        grid = ([first[d] for d in rows], gstyles)
    roles = set(getattr(gen, "roles", []))
    guidance = {k: v for k, v in config.grid_guidance.items() if k in roles}

    sel = np.asarray(tr)
    vsel = np.asarray(va)
    fit_kw = dict(
        out=out, steps=config.steps, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
        val_every=config.val_every or config.steps, sample_every=config.sample_every or config.steps, grid=grid,
        resume=config.resume, stop_after=config.stop_after, progress=show,
    )
    if pairs_mode:
        res = gen.fit_pairs(
            [photos[i] for i in tr], sketches[sel], [styles[i] for i in tr],
            val=([photos[i] for i in va], sketches[vsel], [styles[i] for i in va]) if len(va) else None, **fit_kw,
        )
    else:
        res = gen.fit(
            sketches[sel], [t[sel] for t in tokens], out=out, steps=config.steps, batch_size=config.batch_size,
            lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
            grad_accum=config.grad_accum, seed=config.seed, checkpoint_every=config.checkpoint_every,
            keep_checkpoints=config.keep_checkpoints,
            val=(sketches[vsel], [t[vsel] for t in tokens]) if len(va) else None,
            val_every=config.val_every or config.steps, sample_every=config.sample_every or config.steps,
            grid=grid, grid_sampler=config.grid_sampler, grid_guidance=guidance,
            resume=config.resume, stop_after=config.stop_after, progress=show,
        )
    history = res.pop("history")
    if main:
        write_json(out / "history.json", history)
    summary = {
        "out": str(out), "step": res["step"], "steps_run": res["steps_run"], "steps_per_s": res["steps_per_s"],
        "stopped_early": res["stopped_early"], "final_loss": res["final_loss"],
        "first_loss": history[0]["loss"] if history else None,
        "val_loss": next((r["val_loss"] for r in reversed(history) if "val_loss" in r), None),
        "encode_seconds": t_enc, "dataset": gen.meta["dataset"],
        "conditioners": [{k: r[k] for k in ("name", "role", "num_tokens", "dim")} for r in gen.conditioner_records()],
        "images_per_s": res.get("images_per_s"), "world_size": world, "per_rank_batch_size": per_rank,
        "effective_batch_size": config.batch_size * config.grad_accum, "lr": config.lr, "distributed": info,
    }
    if not res["stopped_early"]:
        if main:
            gen.save_pretrained(out / "generator")
        summary["generator"] = str(out / "generator")
    if main:
        write_json(out / "summary.json", summary)
    dist.barrier()
    return summary
