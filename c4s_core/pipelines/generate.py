"""Generate a synthetic sketch set with a trained generator (or a procedural one).

Inputs: a generator ``checkpoint`` (a folder written by ``save_pretrained``;
its ``generator.json`` names the generator kind, so ``diffusion``, ``gan`` and
``procedural`` all load through the generator registry), or, without one, the
``generator`` spec (``procedural`` needs no training); the identities of any
dataset (default: synthfaces; a photo folder through ``identity_folder`` or
``image_folder``), each represented by its first photo after the ``aligner``;
``styles`` x ``num_per_style`` sketches per identity.

Output (``OUT``):

- ``IDENTITY/STYLE_K.png`` sketches and ``IDENTITY/photo.png`` (the aligned
  reference photo), listed in ``manifest.jsonl`` (paths relative to ``OUT``,
  sorted by path; readable by the ``manifest`` dataset for train-matcher).
  Per sketch: identity, modality, style, k, source photo hash, image hash, seed,
  generator, checkpoint hash, sampler (+steps), guidance, conditioner names and
  ``identity_similarity``: the cosine between the embeddings of the sketch and
  of its source photo by the generator's identity conditioner (else
  ``id_conditioner``, else ``dlib_id`` when installed, else null).
- ``generate.json`` (the settings that fix the images, with their hash),
  ``config.yaml``, ``run.json``.

Determinism: image ``(identity, style, k)`` is seeded from ``(seed, identity,
style, k)``, never from its position. Jobs are cut into global batches of
``batch_size``; ``--shard i/n`` (and each ``torchrun`` rank) takes whole batches
(contiguous blocks), so the union of shards is byte-identical to one run at the
same ``batch_size``; another batch size changes pixels by at most float rounding.
Resume: images are written atomically and existing ones are kept; a batch with
missing images is regenerated whole and only the missing files are written.
Each shard appends its records per batch to ``manifest.shard-i-of-n.jsonl``;
every finished shard merges all parts (and an existing ``manifest.jsonl``) into
``manifest.jsonl``; once that lists every job the parts are deleted.

Under ``torchrun --nproc-per-node N`` (gloo on CPUs, NCCL on GPUs; each rank
samples on ``cuda:LOCAL_RANK``) rank ``r`` of ``N`` with ``--shard i/n`` does
shard ``i*N + r`` of ``n*N``. Rank 0 alone prepares ``OUT`` (generate.json,
config, removal of partial files); after the last batch every rank waits and
rank 0 merges the parts into ``manifest.jsonl``. ``OUT`` must be a folder all
ranks share. With the same seed, batch size and threads per process the set is
byte-identical to a one-process run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import C4SModel, ComponentSpec

FORMAT = "c4s-generated-set"


class Config(C4SModel):
    checkpoint: Path | None = Field(
        None, description="Generator folder (save_pretrained: generator.json + weights); none: build `generator`."
    )
    generator: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="procedural"),
        description="Generator built from scratch when no checkpoint is given (one that needs no training).",
    )
    device: str | None = Field(None, description="Device for the loaded generator (cpu, cuda...); none: its own.")
    dataset: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(
            name="synthfaces", options={"num_identities": 20, "images_per_identity": 1, "sketches_per_identity": 0}),
        description="Identities: the first photo of each identity of this dataset (any dataset plugin).",
    )
    num_identities: int | None = Field(None, ge=1, description="Use only the first N identities (sorted); none: all.")
    styles: list[str] = Field(
        default_factory=lambda: ["pencil", "charcoal", "line_drawing"], description="Sketch styles to generate."
    )
    num_per_style: int = Field(2, ge=1, le=10_000, description="Sketches per identity and style (K).")
    styles_per_identity: int | None = Field(
        None, ge=1, description="Draw each identity in only this many of `styles`, picked at random from (seed, "
        "identity), so many styles cost no more images; none: every style.")
    sampler: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="dpmsolver++", options={"steps": 20}),
        description="Sampler and its options (steps...) for diffusion generators.",
    )
    guidance: dict[str, float] = Field(
        default_factory=lambda: {"identity": 2.0, "style": 2.0},
        description="Per-role guidance scales (roles the generator lacks are ignored); {}: plain conditional.",
    )
    guidance_mode: Literal["compositional", "nested"] = Field(
        "compositional", description="How guided roles combine (plugins/diffusion.py): compositional, each role "
        "against none; nested, each role given the ones before it in `guidance`'s order (InstructPix2Pix).")
    strength: float = Field(
        1.0, gt=0.0, le=1.0, description="Diffusion generators: start this far up the sampler's schedule from the "
        "noised grey reference photo (SDEdit); 1: pure noise. Lower keeps more of the photo's layout.")
    start_style: str | None = Field(
        None, description="With strength < 1, start from the `procedural` generator's rendering of the photo in this "
        "style (pencil, charcoal, line_drawing, xdog...) instead of the grey photo; none: the photo.")
    seed: int = Field(0, ge=0, description="Seed; each image is seeded from (seed, identity, style, k).")
    batch_size: int = Field(16, ge=1, le=4096, description="Images per sampling batch (also the shard unit).")
    aligner: ComponentSpec | None = Field(
        default_factory=lambda: ComponentSpec(name="center", options={"box": [0.0, 0.0, 1.0, 1.0]}),
        description="Aligner for the reference photos (as in train-generator); none: plain resize.",
    )
    condition_size: int = Field(112, ge=32, le=512, description="Side of the aligned photos (use train-generator's).")
    similarity: bool = Field(True, description="Measure each sketch's identity similarity to its photo.")
    id_conditioner: ComponentSpec | None = Field(
        None, description="Encoder for identity_similarity; none: the generator's identity conditioner, else dlib_id.",
    )
    write_photos: bool = Field(True, description="Write IDENTITY/photo.png (modality photo) into the set.")
    shard: str | None = Field(None, description="Do shard I of N (1-based), e.g. 2/4; none: all the work.")
    stop_after: int | None = Field(None, ge=0, description="Stop after generating this many images (tests of resume).")
    out: Path = Field(Path("c4s-out/generated"), description="Output folder.")

    @field_validator("shard")
    @classmethod
    def _shard(cls, v):
        if v is None:
            return v
        parse_shard(v)
        return v

    @field_validator("styles")
    @classmethod
    def _styles(cls, v):
        if not v:
            raise ValueError("give at least one style")
        if len(set(v)) != len(v):
            raise ValueError(f"styles has duplicates: {v}")
        return v


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based) -> ``(i - 1, n)``; none -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"shard must be I/N with 1 <= I <= N, e.g. 2/4; got {text!r}")
    return int(m.group(1)) - 1, int(m.group(2))


def shard_batches(num_batches: int, shard: tuple[int, int], rank: int = 0, world: int = 1) -> range:
    """Batches this process does: ``--shard`` and the torchrun rank combine into
    one index of ``n * world`` contiguous blocks (the one function to swap for
    another split)."""
    from ..distributed import shard_indices

    i, n = shard
    return shard_indices(num_batches, i * world + rank, n * world)


def job_seed(seed: int, identity: str, style: str, k: int) -> int:
    """A 63-bit seed from ``(seed, identity, style, k)``: independent of batch and shard."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps([int(seed), str(identity), str(style), int(k)]).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def safe_name(identity: str) -> str:
    """A folder name for an identity (anything but letters, digits, ``._-`` becomes ``_``)."""
    s = re.sub(r"[^A-Za-z0-9._-]", "_", str(identity)).strip(".")
    return s or "_"


def load_generator(path: str | Path, device: str | None = None):
    """Load any generator folder: ``generator.json`` names the registered
    generator whose ``from_pretrained(path)`` reads it."""
    import inspect
    import json

    from ..errors import DataError
    from ..plugins import get_registries

    path = Path(path)
    meta_p = path / "generator.json"
    if not meta_p.is_file():
        raise DataError(f"{path}: not a generator checkpoint (no generator.json); give the folder written by "
                        "train-generator (OUT/generator) or save_pretrained")
    try:
        name = json.loads(meta_p.read_text()).get("generator")
    except ValueError as err:
        raise DataError(f"{meta_p}: not valid JSON ({err})") from None
    if not name:
        raise DataError(f"{meta_p}: has no 'generator' field naming the generator kind")
    cls = get_registries().generator.get(name).cls
    if not hasattr(cls, "from_pretrained"):
        raise DataError(f"generator {name!r} (from {meta_p}) cannot load checkpoints (no from_pretrained)")
    kw = {"device": device} if device is not None and "device" in inspect.signature(cls.from_pretrained).parameters else {}
    return cls.from_pretrained(path, **kw)


def checkpoint_hash(path: Path) -> str:
    """Hash of a checkpoint's weights and JSON (file names + contents)."""
    import hashlib

    from ..data.io import file_hash

    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors") and f.name != "history.json":
            h.update(f"{f.name}:{file_hash(f, 64)}\n".encode())
    return h.hexdigest()[:16]


class _Similarity:
    """Cosine between an encoder's first token for a sketch and for its photo."""

    def __init__(self, encoder, name: str):
        self.encoder, self.name = encoder, name
        self._photos: dict[str, Any] = {}

    def embed(self, images):
        """Unit-length first-token embeddings of ``images``."""
        import numpy as np

        t = self.encoder.encode(list(images), None)
        t = t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)
        e = t[:, 0] if t.ndim == 3 else t
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def photo(self, key: str, image):
        if key not in self._photos:  # one at a time: the value never depends on the shard
            self._photos[key] = self.embed([image])[0]
        return self._photos[key]

    def scores(self, sketches, photo_keys, photos) -> list[float]:
        e = self.embed(sketches)
        return [round(float(e[i] @ self.photo(k, p)), 6) for i, (k, p) in enumerate(zip(photo_keys, photos, strict=True))]


def _similarity(config: Config, gen) -> _Similarity | None:
    from ..errors import C4SError
    from ..plugins import get_registries

    if not config.similarity:
        return None
    if config.id_conditioner is not None:
        return _Similarity(get_registries().conditioner.build(config.id_conditioner), config.id_conditioner.name)
    for name, role, c in zip(getattr(gen, "cond_names", []), getattr(gen, "roles", []),
                             getattr(gen, "conditioners", []), strict=False):
        if role == "identity":
            return _Similarity(c, name)
    reg = get_registries().conditioner
    if "dlib_id" in reg:
        try:
            return _Similarity(reg.build("dlib_id"), "dlib_id")
        except (C4SError, ImportError):
            return None
    return None


def _run_key(config: Config, ck_hash: str) -> dict[str, Any]:
    import json

    keep = ("generator", "dataset", "num_identities", "styles", "num_per_style", "styles_per_identity", "sampler",
            "guidance", "seed", "aligner", "condition_size", "similarity", "id_conditioner", "write_photos",
            "strength", "start_style", "guidance_mode")
    data = json.loads(config.model_dump_json(include=set(keep)))
    if config.checkpoint is not None:
        data.pop("generator")
    for k, plain in (("strength", 1.0), ("start_style", None), ("guidance_mode", "compositional")):
        if data[k] == plain:
            data.pop(k)  # sets written before the option existed keep their key
    data["checkpoint_hash"] = ck_hash
    return data


def _styles_of(config: Config, identity: str) -> list[str]:
    """The styles ``identity`` is drawn in: all, or a seeded subset (order kept)."""
    n = config.styles_per_identity
    if n is None or n >= len(config.styles):
        return list(config.styles)
    import hashlib

    import numpy as np

    seed = int.from_bytes(hashlib.sha256(f"{config.seed}/{identity}".encode()).digest()[:8], "little")
    pick = set(np.random.default_rng(seed).choice(len(config.styles), n, replace=False).tolist())
    return [st for i, st in enumerate(config.styles) if i in pick]


def run(config: Config, progress: bool = True) -> dict:
    """Generate; under torchrun, every process calls this with the same config
    and takes its share of the batches (combined with ``--shard``)."""
    import os

    from .. import distributed as dist

    device = config.device
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and device in (None, "cuda"):
        import torch  # under torchrun each rank samples on its own GPU

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    # the process group exists before any file is touched: rank 0 alone prepares OUT
    with dist.init_from_env(None if device is None else device.split(":")[0]) as ctx:
        return _run(config, progress, ctx, device)


def _run(config: Config, progress: bool, ctx, device: str | None) -> dict:
    import hashlib
    import inspect
    import json
    import time

    import numpy as np
    from tqdm import tqdm

    from .. import distributed as dist
    from ..data.io import array_hash, load_image, save_image
    from ..data.manifest import append_manifest, iter_manifest
    from ..errors import ConfigError, DataError
    from ..plugins import get_registries
    from .common import prepare_out, remove_partial_files, save_run_config, write_json
    from .train_generator import align_all

    out = prepare_out(config.out) if ctx.is_main else Path(config.out)
    dist.barrier()
    regs = get_registries()
    t_start = time.perf_counter()
    # -- generator -------------------------------------------------------------------
    if config.checkpoint is not None:
        gen = load_generator(config.checkpoint, device)
        ck_hash = checkpoint_hash(config.checkpoint)
    else:
        entry = regs.generator.get(config.generator.name)
        if getattr(entry.cls, "needs_checkpoint", True):
            raise ConfigError(f"generator {entry.name!r} must be trained first: give its folder with "
                              "--set checkpoint=RUN/generator (or use generator=procedural)")
        opts = dict(config.generator.options)
        gen = regs.generator.build(config.generator.name, opts)
        ck_hash = "config-" + hashlib.sha256(json.dumps(
            {"generator": entry.name, "options": opts}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    gen_name = getattr(gen, "name", type(gen).__name__)
    params = set(inspect.signature(gen.sample).parameters)
    if "seeds" not in params:
        raise ConfigError(f"generator {gen_name!r}: sample() takes no `seeds`, so its images cannot be seeded per "
                          "(identity, style, k); add a seeds parameter")
    roles = set(getattr(gen, "roles", []))
    guidance = {k: v for k, v in config.guidance.items() if k in roles}
    uses_sampler = "sampler" in params
    if config.guidance_mode != "compositional" and "guidance_mode" not in params:
        raise ConfigError(f"guidance_mode={config.guidance_mode!r}: generator {gen_name!r} has no guidance modes "
                          "(its sample() takes no `guidance_mode`); use guidance_mode=compositional")
    if config.strength < 1.0 and "strength" not in params:
        raise ConfigError(f"strength={config.strength}: generator {gen_name!r} cannot start from the photo "
                          "(its sample() takes no `strength`); use strength=1")
    if config.start_style is not None and config.strength >= 1.0:
        raise ConfigError(f"start_style={config.start_style!r} needs strength < 1 (at 1 sampling starts from pure noise)")
    starter = None
    if config.start_style is not None:  # strength < 1, checked above
        # jitter 0: the start is the plain rendering; the diffusion's own seeded noise varies it
        starter = regs.generator.build("procedural", {"size": int(getattr(gen, "size", 112)), "jitter": 0.0})
        starter.style(config.start_style)  # an unknown or prompt-only style fails here, before any work
    sampler_rec = config.sampler.model_dump() if uses_sampler else None
    cond_names = [r["name"] for r in gen.conditioner_records()] if hasattr(gen, "conditioner_records") else []

    # -- settings that fix the images: a changed setting must not mix into an old set --
    key = _run_key(config, ck_hash)
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    gj = out / "generate.json"
    if gj.is_file():
        old = json.loads(gj.read_text())
        if old.get("settings_hash") != key_hash:
            changed = sorted(k for k in set(key) | set(old.get("settings", {}))
                             if key.get(k) != old.get("settings", {}).get(k))
            raise DataError(f"{out} holds a set generated with other settings (changed: {', '.join(changed)}); "
                            "use another --out or delete that folder")
    dist.barrier()  # every rank has checked generate.json before rank 0 rewrites it
    removed = 0
    if ctx.is_main:  # one writer; no rank deletes another's temp files mid-write
        write_json(gj, {"format": FORMAT, "settings": key, "settings_hash": key_hash, "generator": gen_name,
                        "checkpoint": str(config.checkpoint) if config.checkpoint else None})
        removed = remove_partial_files(out)
        save_run_config(out, "generate", config, {"distributed": dist.DistributedInfo.current(
            device or getattr(gen, "device", "cpu"), shard=config.shard, unit="whole batches of batch_size").as_dict()})
    dist.barrier()

    # -- identities ----------------------------------------------------------------------
    ds = regs.dataset.build(config.dataset)
    first: dict[str, np.ndarray] = {}
    refs = getattr(ds, "refs", None)
    for i in range(len(ds)):
        if refs is not None and (refs[i].modality != "photo" or refs[i].identity in first):
            continue
        s = ds[i]
        if s.modality == "photo" and s.identity not in first:
            first[s.identity] = s.image
    idents = sorted(first)[: config.num_identities] if config.num_identities else sorted(first)
    if not idents:
        raise DataError(f"dataset {config.dataset.name!r} has no photos to generate sketches from")
    folders: dict[str, str] = {}
    for d in idents:
        f = safe_name(d)
        if f in folders.values():
            raise DataError(f"identities map to the same folder {f!r}; rename them")
        folders[d] = f
    src_hash = {d: array_hash(first[d]) for d in idents}
    aligned, _ = align_all(config, [first[d] for d in idents], config.condition_size)
    dropped = [d for d, a in zip(idents, aligned, strict=True) if a is None]
    photo = {d: a for d, a in zip(idents, aligned, strict=True) if a is not None}
    idents = [d for d in idents if d in photo]
    if not idents:
        raise DataError(f"the aligner {config.aligner.name if config.aligner else None!r} found no face in any photo")

    jobs = [(d, st, k) for d in idents for st in _styles_of(config, d) for k in range(config.num_per_style)]
    nb = (len(jobs) + config.batch_size - 1) // config.batch_size
    shard = parse_shard(config.shard)

    def rel(job) -> str:
        d, st, k = job
        return f"{folders[d]}/{safe_name(st)}_{k}.png"

    sim = _similarity(config, gen)
    all_parts = lambda: sorted(out.glob("manifest.shard-*.jsonl"))  # noqa: E731
    mine = shard_batches(nb, shard, ctx.rank, ctx.world)
    gi, gn = shard[0] * ctx.world + ctx.rank + 1, shard[1] * ctx.world
    part = out / f"manifest.shard-{gi}-of-{gn}.jsonl"
    known: dict[str, dict] = {}
    for p in all_parts() + ([out / "manifest.jsonl"] if (out / "manifest.jsonl").is_file() else []):
        for r in iter_manifest(p):
            known.setdefault(r["path"], r)
    dist.barrier()  # read before any rank appends to its part
    written = kept = 0
    budget = config.stop_after
    stopped = False
    t_loop = time.perf_counter()
    bar = tqdm(total=len(mine) and sum(min(config.batch_size, len(jobs) - b * config.batch_size) for b in mine),
               desc="generate", unit="img", disable=not dist.rank0_progress(progress))
    for b in mine:
        chunk = jobs[b * config.batch_size:(b + 1) * config.batch_size]
        paths = [rel(j) for j in chunk]
        missing = [i for i, p in enumerate(paths) if not (out / p).is_file()]
        new_recs = []
        if config.write_photos:
            for d in dict.fromkeys(j[0] for j in chunk):
                pp = f"{folders[d]}/photo.png"
                if not (out / pp).is_file():
                    save_image(out / pp, photo[d])
                if pp not in known:
                    new_recs.append({"path": pp, "identity": d, "modality": "photo", "style": None,
                                     "source_sha": src_hash[d], "sha": array_hash(photo[d])})
        if missing:
            if budget is not None and written + len(missing) > budget:
                missing = missing[: budget - written]  # like a kill mid-batch: some files, no records
                stopped = True
            seeds = [job_seed(config.seed, *j) for j in chunk]
            kw: dict[str, Any] = {"seeds": seeds, "num_per_input": 1}
            if uses_sampler:
                kw["sampler"] = config.sampler
            if "guidance" in params:
                kw["guidance"] = guidance
            if config.guidance_mode != "compositional":
                kw["guidance_mode"] = config.guidance_mode
            if config.strength < 1.0:
                kw["strength"] = config.strength
                if starter is not None:
                    kw["starts"] = starter.sample([photo[j[0]] for j in chunk], [config.start_style] * len(chunk))
            if "batch_size" in params:
                kw["batch_size"] = len(chunk)
            imgs = gen.sample([photo[j[0]] for j in chunk], [j[1] for j in chunk], **kw)
            for i in missing:
                save_image(out / paths[i], imgs[i])
            written += len(missing)
            if stopped:
                break
            kept += len(chunk) - len(missing)
        else:
            kept += len(chunk)
            imgs = None
        todo = [i for i, p in enumerate(paths) if p not in known]
        if todo:
            if imgs is None:
                imgs = np.stack([load_image(out / p) for p in paths])
            scores = (sim.scores(imgs, [chunk[i][0] for i in range(len(chunk))],
                                 [photo[j[0]] for j in chunk]) if sim else [None] * len(chunk))
            for i in todo:
                d, st, k = chunk[i]
                new_recs.append({
                    "path": paths[i], "identity": d, "modality": "sketch", "style": st, "k": k,
                    "source_sha": src_hash[d], "sha": array_hash(imgs[i]), "seed": job_seed(config.seed, d, st, k),
                    "run_seed": config.seed, "generator": gen_name, "checkpoint_hash": ck_hash,
                    "sampler": config.sampler.name if uses_sampler else None,
                    "steps": config.sampler.options.get("steps") if uses_sampler else None,
                    "sampler_options": sampler_rec["options"] if sampler_rec else None,
                    "guidance": guidance if uses_sampler else None, "conditioners": cond_names,
                    "guidance_mode": config.guidance_mode if uses_sampler and guidance else None,
                    "strength": config.strength if config.strength < 1.0 else None,
                    "start_style": config.start_style if config.strength < 1.0 else None,
                    "identity_similarity": scores[i], "similarity_encoder": sim.name if sim else None,
                })
        if new_recs:
            append_manifest(part, new_recs)
            for r in new_recs:
                known[r["path"]] = r
        bar.update(len(chunk))
    bar.close()
    dist.barrier()
    loop_s = time.perf_counter() - t_loop  # the slowest rank's, after the barrier
    total = len(jobs) + (len(idents) if config.write_photos else 0)
    merged, complete = None, False
    if ctx.is_main and not stopped:
        merged, complete = merge_set(out, total)
    merged, complete = dist.broadcast_object((merged, complete))
    counts = dist.all_gather_object((written, kept, stopped))
    return {
        "out": str(out), "generator": gen_name, "checkpoint_hash": ck_hash, "identities": len(idents),
        "dropped_by_aligner": dropped, "styles": config.styles, "jobs": len(jobs),
        "shard": f"{gi}/{gn}", "batches": len(mine), "written": written, "kept": kept,
        "partial_files_removed": removed, "stopped_early": stopped, "manifest_records": merged,
        "complete": complete, "similarity_encoder": sim.name if sim else None,
        "seconds": time.perf_counter() - t_start, "world_size": ctx.world,
        "written_all_ranks": sum(c[0] for c in counts), "kept_all_ranks": sum(c[1] for c in counts),
        "stopped_any_rank": any(c[2] for c in counts), "generate_seconds": round(loop_s, 3),
        "images_per_s": round(sum(c[0] for c in counts) / loop_s, 2) if loop_s > 0 else None,
    }


def merge_set(out: Path, total: int) -> tuple[int, bool]:
    """Merge every manifest part (and an existing manifest.jsonl) into
    ``manifest.jsonl`` sorted by path; delete the parts once it lists ``total``
    records. Returns (records, complete)."""
    from ..distributed import merge_manifests

    out = Path(out)
    parts = sorted(out.glob("manifest.shard-*.jsonl"))
    main = out / "manifest.jsonl"
    srcs = parts + ([main] if main.is_file() else [])
    if not srcs:
        return 0, False
    n = merge_manifests(srcs, main, key="path")
    complete = n >= total
    if complete:
        for p in parts:
            p.unlink(missing_ok=True)
    return n, complete
