"""Train a sketch-to-mugshot matcher: a backbone with a margin head on a mix of
datasets (real and generated sketches, photos).

Every image is aligned by the ``aligner`` once and held in memory at the
backbone's input size. A share of the identities (``val_fraction``) is held
out, and so is every identity of the validation-only sources (``val_data``,
e.g. identities carved out of the training split by ``c4s experiment``): each
epoch ends with rank-1 of their sketches (probes) against their photos
(gallery), and ``best/`` keeps the epoch where it was highest (the first such
epoch on ties; without held-out identities best/ is the last epoch). Output, in ``out``:

- ``last/`` and ``best/``: matcher folders, ``model.safetensors`` (backbone
  weights in its official layout) + ``matcher.json`` (backbone name and
  options, input size, colour order, normalisation, embedding size, data hash,
  c4s version, epoch, validation rank-1). Use one as a backbone:
  ``backbone={name: matcher, options: {path: OUT/best}}``;
- ``last/state.safetensors`` + ``last/state.json``: head, optimizer, RNG
  states and counters, so ``--resume`` continues exactly where it stopped
  (same weights as an uninterrupted run);
- ``history.json`` (loss, rank-1, images/s per epoch), ``config.yaml``, ``run.json``.

Data order, augmentation and dropout of epoch ``e`` derive from ``(seed, e)``
alone, which is what makes a resumed run equal to an uninterrupted one.

Under ``torchrun --nproc-per-node N`` (one or several nodes) the same command
trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs). Every rank
follows the same global batch plan (``batch_size`` is the global batch) and
takes its contiguous slice of each batch (``batch_size / N`` rows; it must
divide). Augmentation and dropout draw the randomness of the whole global batch
and keep the rank's rows, BatchNorm and AdaFace's norm statistics are
synchronised over the global batch (SyncBatchNorm), and DDP averages the
gradients of losses weighted to the global mean: N processes give the weights of
one process with the same global batch, up to float rounding. Rank 0 validates,
logs and writes; checkpoints hold plain (unwrapped) state dicts, so a run may be
resumed with another number of processes. Datasets must be readable on every
node; ``out`` only on rank 0's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import C4SModel, ComponentSpec
from ..errors import ConfigError, DataError
from ..matcher_folder import MATCHER_FORMAT, MATCHER_FORMAT_VERSION, read_matcher, save_matcher  # noqa: F401

# fields that may change between a run and its --resume
RESUMABLE_CHANGES = ("resume", "epochs", "stop_after")
# fields added after runs were saved, and the value that means "as before"
ADDED_FIELDS: dict[str, Any] = {"val_data": [], "pair_negatives": 0, "negatives_pool": 1}


class DataSource(C4SModel):
    dataset: ComponentSpec = Field(description="Dataset (any dataset plugin; `manifest` for generated sets).")
    ratio: float = Field(
        1.0, gt=0.0, le=100.0,
        description="How many times each of its training images appears per epoch; "
        "fractions draw a random share each epoch (0.5: half), 2: twice.",
    )
    modality: Literal["photo", "sketch"] | None = Field(None, description="Keep only this modality (None: both).")


def _default_data() -> list[DataSource]:
    return [DataSource(dataset=ComponentSpec(
        name="synthfaces",
        options={"num_identities": 200, "images_per_identity": 2, "sketches_per_identity": 2,
                 "styles": ["line", "pencil", "charcoal"]},
    ))]


class Augment(C4SModel):
    scale: tuple[float, float] = Field((0.85, 1.0), description="Random resized crop: area share range (small for aligned faces).")
    shift: float = Field(0.04, ge=0.0, le=0.3, description="Largest shift, as a fraction of the side.")
    rotate: float = Field(8.0, ge=0.0, le=45.0, description="Largest rotation in degrees.")
    flip: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a horizontal flip.")
    jitter: float = Field(0.2, ge=0.0, le=1.0, description="Brightness/contrast/saturation jitter strength.")
    grayscale: float = Field(0.2, ge=0.0, le=1.0, description="Probability of turning a photo grey (sketches are grey already).")
    blur: float = Field(0.1, ge=0.0, le=1.0, description="Probability of a 3x3 Gaussian blur.")

    @model_validator(mode="after")
    def _scale(self):
        lo, hi = self.scale
        if not 0.2 <= lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0.2 <= low <= high <= 1, got {self.scale}")
        return self


class Config(C4SModel):
    data: list[DataSource] = Field(default_factory=_default_data, description="Training sources, pooled by identity name.")
    aligner: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="center", options={"box": [0.0, 0.0, 1.0, 1.0]}),
        description="Aligner applied once to every image (default: whole image, for template-aligned sets "
        "such as synthfaces; use center's default box for CUFS, or dlib).",
    )
    backbone: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="ir_18", options={"widths": [16, 32, 64, 128]}),
        description="Backbone to train (default: a narrow IR-18 that trains in minutes on a CPU).",
    )
    head: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="adaface", options={"s": 16.0}),
        description="Margin head. The default scale s=16 suits hundreds of identities; the papers' "
        "s=64 is for tens of thousands (with few classes it stalls near chance).",
    )
    loss: Literal["margin", "pairs", "margin+pairs"] = Field(
        "margin", description="margin: the head over class centres; pairs: symmetric sketch<->photo InfoNCE "
        "over batches of one photo and one sketch per identity (suits paired data and pretrained "
        "backbones; no class centres to learn); margin+pairs: their sum."
    )
    temperature: float = Field(0.05, gt=0.0, le=1.0, description="pairs loss: temperature of the cosine similarities.")
    pair_negatives: int = Field(
        0, ge=0, le=4096, description="pairs loss: photos of the photo-only sources (`modality: photo`, e.g. "
        "unlabelled faces of other people) added to every batch as extra negatives of each sketch; they have no "
        "sketch, so they are never positives. Teaches sketches to stay away from photos of strangers, as in a "
        "gallery with distractors. 0: none.")
    negatives_pool: int = Field(
        1, ge=1, le=64, description="Hard negatives: draw pair_negatives x this many strangers' photos per step, "
        "embed them and the step's sketches without gradients, and keep the pair_negatives photos nearest to any "
        "of those sketches (the strangers a gallery would rank first), never a photo of the step's own people. 1: a "
        "random draw, no mining.")
    backbone_lr_scale: float = Field(
        1.0, gt=0.0, le=10.0, description="Backbone learning rate as a share of lr (the head trains at lr); "
        "below 1 keeps a pretrained backbone near its start."
    )
    freeze: list[str] = Field(
        [], description="Backbone parameter-name prefixes kept fixed, e.g. the early stages of a pretrained "
        "network ([conv32_down, conv32_1] for dlib_r29)."
    )
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of identities held out for validation (0: none).")
    val_data: list[DataSource] = Field(
        [], description="Validation-only sources: their identities (each with a photo and a sketch) are never "
        "trained on, only ranked each epoch to pick best/; added to val_fraction's held-out identities. They "
        "may share no identity name with `data`.")
    val_seed: int = Field(0, ge=0, description="Seed of the identity split.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="SGD with momentum (AdaFace's choice) or AdamW.")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="Weight decay (not applied to BN/PReLU/biases).")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    milestones: list[float] = Field([0.6, 0.85], description="Step schedule: fractions of training where lr is multiplied by gamma.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="Step schedule factor.")
    warmup_epochs: float = Field(1.0, ge=0.0, le=100.0, description="Linear warm-up length in epochs.")
    epochs: int = Field(20, ge=1, le=10_000, description="Epochs in all.")
    stop_after: int | None = Field(
        None, ge=1, description="Stop after this many epochs in this invocation (time-limited jobs); continue with --resume."
    )
    batch_size: int = Field(64, ge=2, le=4096, description="Images per step.")
    augment: Augment = Field(default_factory=Augment, description="Training augmentations.")
    bf16: bool = Field(False, description="bfloat16 autocast for forward passes (helps on GPUs and recent CPUs).")
    channels_last: bool = Field(False, description="channels_last memory format.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if available.")
    threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads (None: torch's default).")
    out: Path = Field(Path("c4s-out/matcher"), description="Output folder.")
    resume: bool = Field(False, description="Continue the run in `out` from its last checkpoint.")
    seed: int = Field(0, ge=0, description="Seed of initialisation, data order, augmentation and dropout.")

    @model_validator(mode="after")
    def _pairs_batch(self):
        if self.loss != "margin" and self.batch_size % 2:
            raise ValueError(f"batch_size must be even with loss {self.loss!r} (photo, sketch pairs), got {self.batch_size}")
        if self.pair_negatives and self.loss == "margin":
            raise ValueError(f"pair_negatives={self.pair_negatives} needs loss 'pairs' or 'margin+pairs' (they are "
                             "negatives of the pairs loss), got loss 'margin'")
        if self.negatives_pool > 1 and not self.pair_negatives:
            raise ValueError(f"negatives_pool={self.negatives_pool} mines among pair_negatives' photos: set "
                             "pair_negatives too")
        if self.pair_negatives and not any(d.modality == "photo" for d in self.data):
            raise ValueError(f"pair_negatives={self.pair_negatives} draws from the data sources with `modality: "
                             "photo`, and `data` has none; add one (e.g. a folder of other people's photos)")
        return self


# -- data ---------------------------------------------------------------------------------


def _load_data(config: Config, regs, size: tuple[int, int], progress: bool):
    """Aligned uint8 images [N, H, W, 3], identities, modalities, source index, hash."""
    import hashlib

    import numpy as np
    from tqdm import tqdm

    from ..data.io import resize

    aligner = regs.aligner.build(config.aligner)
    images, ids, mods, src = [], [], [], []
    h = hashlib.sha256()
    for si, source in enumerate([*config.data, *config.val_data]):
        ds = regs.dataset.build(source.dataset)
        refs = getattr(ds, "refs", None)
        idx = [i for i in range(len(ds)) if source.modality is None or refs is None
               or refs[i].modality == source.modality]
        bs = 64
        for b in tqdm(range(0, len(idx), bs), desc=f"load {source.dataset.name}", disable=not progress, unit="batch"):
            samples = [ds[i] for i in idx[b:b + bs]]
            samples = [s for s in samples if source.modality is None or s.modality == source.modality]
            res = aligner.align([s.image for s in samples], [s.path or f"{source.dataset.name}[{k}]" for k, s in enumerate(samples)])
            for s, r in zip(samples, res, strict=True):
                if r.image is None:
                    continue
                im = resize(np.asarray(r.image, np.uint8), size)
                images.append(im)
                ids.append(s.identity)
                mods.append(s.modality)
                src.append(si)
                h.update(f"{s.identity}|{s.modality}|".encode())
                h.update(im.tobytes())
        if not any(x == si for x in src):
            raise DataError(f"data source {si} ({source.dataset.name}) gave no usable images")
    return np.stack(images), np.array(ids), np.array(mods), np.array(src), h.hexdigest()[:16]


def _split(ids, mods, fraction: float, seed: int):
    """Identity-disjoint split: held-out identities have both a photo and a sketch."""
    import numpy as np

    uniq = sorted(set(ids.tolist()))
    both = sorted(set(ids[mods == "photo"].tolist()) & set(ids[mods == "sketch"].tolist()))
    n_val = int(round(fraction * len(uniq)))
    if fraction > 0 and n_val < 2:
        n_val = 2
    if n_val > len(both):
        raise DataError(
            f"val_fraction={fraction} asks for {n_val} held-out identities but only {len(both)} have both "
            "a photo and a sketch; lower val_fraction or add paired data"
        )
    if n_val >= len(uniq):
        raise DataError(f"val_fraction={fraction} leaves no identity for training ({len(uniq)} in all)")
    rng = np.random.default_rng([0xA11, seed])
    val = set(rng.permutation(np.array(both, dtype=object))[:n_val].tolist()) if n_val else set()
    return np.array([i in val for i in ids.tolist()], dtype=bool)


def _val_mask(ids, mods, src, config: Config):
    """Held-out images: val_fraction of the training sources' identities plus every
    image of the validation-only sources (``val_data``, never trained on)."""
    import numpy as np

    is_val = src >= len(config.data)
    mask = np.zeros(len(ids), dtype=bool)
    mask[~is_val] = _split(ids[~is_val], mods[~is_val], config.val_fraction, config.val_seed)
    if is_val.any():
        shared = sorted(set(ids[is_val].tolist()) & set(ids[~is_val].tolist()))
        if shared:
            raise DataError(f"val_data and data share {len(shared)} identity name(s), e.g. {', '.join(shared[:3])}: "
                            "validation identities must never be trained on")
        both = set(ids[is_val & (mods == "photo")].tolist()) & set(ids[is_val & (mods == "sketch")].tolist())
        if len(both) < 2:
            raise DataError(f"val_data holds {len(both)} identities with both a photo and a sketch; validation "
                            "ranks sketches against photos and needs at least 2")
        mask |= is_val
    return mask


def _epoch_indices(train_idx, src, ratios, seed: int, epoch: int):
    import numpy as np

    rng = np.random.default_rng([0xE90C, seed, epoch])
    parts = []
    for si, r in enumerate(ratios):
        pool = train_idx[src[train_idx] == si]
        whole, frac = int(r), r - int(r)
        parts += [pool] * whole
        if frac > 0 and len(pool):
            parts.append(rng.choice(pool, int(round(frac * len(pool))), replace=False))
    idx = np.concatenate(parts) if parts else np.zeros(0, int)
    return rng.permutation(idx)


def _epoch_pairs(train_idx, ids, mods, src, ratios, seed: int, epoch: int):
    """Indices ``[photo, sketch, photo, sketch, ...]``: per source, each
    identity with both modalities gives one random photo and one random sketch
    (``ratio`` copies of it, or a random share of identities for fractions)."""
    import numpy as np

    rng = np.random.default_rng([0xA125, seed, epoch])
    pairs = []
    for si, r in enumerate(ratios):
        pool = train_idx[src[train_idx] == si]
        by_id: dict[str, tuple[list[int], list[int]]] = {}
        for i in pool.tolist():
            by_id.setdefault(str(ids[i]), ([], []))[0 if mods[i] == "photo" else 1].append(i)
        both = [v for _k, v in sorted(by_id.items()) if v[0] and v[1]]
        whole, frac = int(r), r - int(r)
        chosen = list(range(len(both))) * whole
        if frac > 0 and both:
            chosen += rng.choice(len(both), int(round(frac * len(both))), replace=False).tolist()
        for k in chosen:
            photos, sketches = both[k]
            pairs.append((photos[rng.integers(len(photos))], sketches[rng.integers(len(sketches))]))
    if not pairs:
        return np.zeros(0, int)
    return np.asarray(pairs, int)[rng.permutation(len(pairs))].reshape(-1)


def _epoch_negatives(pool, steps: int, k: int, seed: int, epoch: int):
    """``[steps, k]`` indices into ``pool`` (photos without a sketch): each step's extra negatives."""
    import numpy as np

    rng = np.random.default_rng([0x4E6A, seed, epoch])
    return np.stack([rng.choice(pool, k, replace=len(pool) < k) for _ in range(steps)]) if steps else np.zeros((0, k), int)


def _hardest(sketches, candidates, k: int, own=None):
    """Indices of the ``k`` rows of ``candidates`` (unit embeddings) most similar
    to any row of ``sketches``, most similar first. ``own`` (bool per candidate):
    photos of the sketches' own people, ranked last; the pairs loss would mask
    them, and being the nearest they would otherwise take the hardest slots."""
    import torch

    sim = (sketches @ candidates.T).amax(dim=0)
    if own is not None:
        sim = sim.masked_fill(own.to(sim.device), float("-inf"))
    return torch.topk(sim, min(k, len(candidates))).indices


def _pairs_loss(z, y, temperature: float, negatives: int = 0):
    """Symmetric InfoNCE over a batch of ``[photo, sketch]`` rows (then
    ``negatives`` rows of photos without a sketch): each sketch against every
    photo, the extra ones included, and each photo of a pair against every
    sketch; other rows of the same identity (an identity drawn twice) are not
    counted as negatives."""
    import torch
    import torch.nn.functional as F

    n = len(z) - negatives
    p, s = z[0:n:2], z[1:n:2]
    photos = torch.cat([p, z[n:]])
    y_photos = torch.cat([y[0:n:2], y[n:]])
    logits = s @ photos.T / temperature
    eye = torch.zeros(len(s), len(photos), dtype=torch.bool, device=z.device)
    eye[:, : len(p)] = torch.eye(len(p), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill((y[1:n:2, None] == y_photos[None, :]) & ~eye, float("-inf"))
    target = torch.arange(len(p), device=z.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(p)].T, target)) / 2


def _augment(x, is_photo, aug: Augment, gen, rows: slice | None = None, n: int | None = None):
    """Batch augmentation of float RGB [B, 3, H, W] in [0, 1], from generator ``gen``.

    With ``rows`` and ``n``, ``x`` holds rows ``rows`` of a global batch of ``n``:
    the random draws are made for all ``n`` rows (so ``gen`` advances the same on
    every rank) and the rows' own are used, so each sample's augmentation depends
    on (seed, epoch, its place in the epoch), not on the number of processes."""
    import math

    import torch
    import torch.nn.functional as F

    B = x.shape[0]
    rows = slice(0, B) if rows is None else rows
    total = B if n is None else n

    def u(lo, hi):
        return (torch.rand(total, generator=gen) * (hi - lo) + lo)[rows]

    area = u(*aug.scale)
    s = area.sqrt()  # zoom: the crop side relative to the image
    ang = u(-aug.rotate, aug.rotate) * math.pi / 180
    tx, ty = u(-aug.shift, aug.shift) * 2, u(-aug.shift, aug.shift) * 2
    flip = torch.where(torch.rand(total, generator=gen)[rows] < aug.flip, -1.0, 1.0)
    cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.jitter > 0:
        j = aug.jitter
        bright = u(1 - j, 1 + j).view(B, 1, 1, 1)
        contrast = u(1 - j, 1 + j).view(B, 1, 1, 1)
        sat = u(1 - j, 1 + j).view(B, 1, 1, 1)
        gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = gray + (x - gray) * sat
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
    to_gray = (torch.rand(total, generator=gen)[rows] < aug.grayscale) & is_photo
    if to_gray.any():
        g = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
        x = torch.where(to_gray.view(B, 1, 1, 1), g, x)
    blur = torch.rand(total, generator=gen)[rows] < aug.blur
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
        x = torch.where(blur.view(B, 1, 1, 1), xb, x)
    return x.clamp_(0, 1)


def _check_resume(config: Config, saved: dict[str, Any], where: Path) -> None:
    now = json.loads(config.model_dump_json())
    diff = [k for k in now if k not in RESUMABLE_CHANGES and k != "out" and now[k] != saved.get(k, ADDED_FIELDS.get(k))]
    if diff:
        raise ConfigError(
            f"--resume: the config differs from the run in {where} in {', '.join(diff)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change. Use the saved {where / 'config.yaml'} "
            "or another out folder."
        )


# -- the run --------------------------------------------------------------------------------


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    """Train; under torchrun, every process calls this with the same config."""
    from .. import distributed as dist

    device_type = _device_type(config)
    with dist.init_from_env(device_type) as ctx:
        return _run(config, progress, ctx, device_type)


def _device_type(config: Config) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use device=cpu or auto")
    return "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"


def _resume_state(config: Config, out: Path) -> dict[str, Any] | None:
    """The checkpoint to continue from (with the backbone weights under ``model``),
    or None for a fresh run; refuses a fresh run over an old one."""
    from ..data.io import recover_folder
    from ..training import load_state, load_weights

    last_dir = out / "last"
    recover_folder(out / ".last.tmp", last_dir)  # a kill in the middle of the last swap
    recover_folder(out / ".best.tmp", out / "best")
    if config.resume:
        if not (last_dir / "state.json").is_file():
            raise DataError(f"--resume: no checkpoint in {last_dir} (state.json); run without --resume first")
        state = load_state(last_dir, "state")  # checks state.safetensors against its hash
        _check_resume(config, state["config"], out)
        read_matcher(last_dir)  # checks model.safetensors against matcher.json, as any load does
        state["model"] = load_weights(last_dir / "model.safetensors")
        return state
    if (last_dir / "state.json").is_file():
        raise DataError(f"{out} already holds a training run ({last_dir}); pass --resume to continue it, or pick another out")
    return None


def _sync_norm_stats(head, norms) -> bool:
    """Distributed AdaFace-style heads keep an EMA of the batch's feature-norm
    mean and std; feed it the *global* batch's figures (so the head behaves as in
    one process) and return True, after which the head's own update must be
    skipped. False for heads without such statistics."""
    import torch

    from .. import distributed as dist

    if not (hasattr(head, "batch_mean") and hasattr(head, "batch_std") and hasattr(head, "t_alpha")):
        return False
    with torch.no_grad():
        safe = norms.detach().float().clamp(0.001, 100).view(-1)
        s = dist.all_reduce_sum(torch.stack([safe.sum(), torch.tensor(float(safe.numel()), device=safe.device)]))
        n, mean = s[1], s[0] / s[1]
        sq = dist.all_reduce_sum(((safe - mean) ** 2).sum())
        std = (sq / (n - 1)).sqrt() if n > 1 else torch.zeros((), device=safe.device)
        a = head.t_alpha
        head.batch_mean.mul_(1 - a).add_(a * mean)
        head.batch_std.mul_(1 - a).add_(a * std)
    return True


def _run(config: Config, progress: bool, ctx, device_type: str) -> dict[str, Any]:
    import shutil
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from .. import __version__, metrics
    from .. import distributed as dist
    from ..data.io import replace_folder
    from ..errors import C4SError
    from ..plugins import get_registries
    from ..training import lr_at, rng_state, save_state, seed_everything, set_rng_state
    from .common import prepare_out, remove_partial_files, save_run_config, write_json

    t_start = time.time()
    main, world = ctx.is_main, ctx.world
    per_rank = dist.per_rank_batch(config.batch_size, world)
    show = progress and main
    out = prepare_out(config.out) if main else Path(config.out)
    if main and config.resume:
        remove_partial_files(out)  # a killed run's half-written temp files (history.json mid-write)
    last_dir, best_dir = out / "last", out / "best"
    # rank 0 reads the checkpoint (its out folder need not be shared) and hands it round
    state, err = None, None
    if main:
        try:
            state = _resume_state(config, out)
        except C4SError as e:
            err = e
    state, err = dist.broadcast_object((state, err))
    if err is not None:
        raise err
    if config.threads:
        torch.set_num_threads(config.threads)

    regs = get_registries()
    seed_everything(config.seed)
    bb_spec = config.backbone
    bb_entry = regs.backbone.get(bb_spec.name)
    bb_opts = dict(bb_spec.options)
    if "device" in bb_entry.config_cls.model_fields:
        bb_opts["device"] = "cpu"  # moved below
    backbone = regs.backbone.build(bb_entry.name, bb_opts)
    for attr in ("model", "to_input", "architecture", "embed"):
        if not hasattr(backbone, attr):
            raise ConfigError(f"backbone {bb_spec.name!r} is not trainable (it has no {attr}); pick a torch backbone such as ir_18")
    # fine-tuning a trained matcher folder: the new folder names the architecture inside it
    bb_name = getattr(backbone, "inner_name", None) or bb_entry.name
    images, ids, mods, src, data_hash = _load_data(config, regs, tuple(backbone.input_size), show)
    val_mask = _val_mask(ids, mods, src, config)
    train_idx = np.flatnonzero(~val_mask)
    classes = sorted(set(ids[train_idx].tolist()))
    class_of = {c: k for k, c in enumerate(classes)}
    labels = np.array([class_of.get(i, -1) for i in ids.tolist()])
    val_probe = np.flatnonzero(val_mask & (mods == "sketch"))
    val_gallery = np.flatnonzero(val_mask & (mods == "photo"))

    device = ctx.device(device_type)
    model = backbone.model
    head = regs.head.build(config.head).build(int(backbone.embedding_dim), len(classes))
    model.to(device)
    head.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    backbone.device = str(device)
    # global-batch BatchNorm statistics under DDP; dropout masks drawn per global batch
    model = backbone.model = dist.sync_batchnorm(model, device.type)
    dropout = dist.shard_dropout(model)

    frozen = [n for n, p in model.named_parameters() if any(n.startswith(f) for f in config.freeze)]
    unknown = [f for f in config.freeze if not any(n.startswith(f) for n, _ in model.named_parameters())]
    if unknown:
        raise ConfigError(f"freeze: {', '.join(map(repr, unknown))} match no parameter of backbone {bb_name!r} "
                          f"(its first ones: {', '.join(n for n, _ in list(model.named_parameters())[:4])})")
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
        else:
            (decay if p.ndim > 1 else no_decay).append(p)
    # lr_scale: backbone groups train at backbone_lr_scale * lr, the head at lr
    groups = [{"params": decay, "weight_decay": config.weight_decay, "lr_scale": config.backbone_lr_scale},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": config.backbone_lr_scale},
              {"params": list(head.parameters()), "weight_decay": config.weight_decay, "lr_scale": 1.0}]
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr)

    pairs = config.loss != "margin"
    if pairs and world > 1:
        raise ConfigError(f"loss {config.loss!r} runs in one process for now (its negatives span the whole "
                          "batch, which would need a gather across ranks); use loss=margin under torchrun")

    def epoch_order(epoch: int):
        ratios = [d.ratio for d in config.data]
        if pairs:
            return _epoch_pairs(train_idx, ids, mods, src, ratios, config.seed, epoch)
        return _epoch_indices(train_idx, src, ratios, config.seed, epoch)

    if pairs and not len(epoch_order(0)):
        raise DataError("loss 'pairs' needs training identities with both a photo and a sketch; the data has none")
    steps_per_epoch = max(1, int(np.ceil(len(epoch_order(0)) / config.batch_size)))
    k_neg = config.pair_negatives
    neg_src = [i for i, d in enumerate(config.data) if d.modality == "photo"]
    neg_pool = train_idx[np.isin(src[train_idx], neg_src) & (mods[train_idx] == "photo")]
    if k_neg and not len(neg_pool):
        raise DataError(f"pair_negatives={k_neg}: the photo-only sources "
                        f"({', '.join(config.data[i].dataset.name for i in neg_src)}) gave no training photos")
    total_steps = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))

    start_epoch, step, history, best = 0, 0, [], {"epoch": None, "rank1": -1.0}
    if state is not None:
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        try:
            opt.load_state_dict(state["optimizer"])
        except ValueError as err:  # parameter groups changed (a checkpoint of an older c4s)
            raise DataError(f"--resume: the optimizer state in {last_dir} does not fit this run ({err}); "
                            "it was written by an older c4s: start a new run") from None
        set_rng_state(state["rng"])
        start_epoch, step, history, best = state["epoch"], state["step"], state["history"], state["best"]
        if state["data_hash"] != data_hash:
            raise DataError(
                f"--resume: the training data changed since {last_dir} was written "
                f"(hash {state['data_hash']} then, {data_hash} now)"
            )
    state = None
    info = dist.DistributedInfo.current(device, per_rank_batch=per_rank, lr=config.lr).as_dict()
    if main:
        save_run_config(out, "train_matcher", config, {"data_hash": data_hash, "classes": len(classes),
                                                       "distributed": info})

    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    distributed = world > 1

    class Net(torch.nn.Module):
        """Backbone + head in one module, so DDP sees (and averages) all parameters."""

        def __init__(self):
            super().__init__()
            self.model, self.head = model, head

        def forward(self, x, y):
            """(unit embeddings, the head's logits or None when the loss has no margin part)."""
            with amp:
                feat = self.model(x)
            feat = feat.float()
            norms = feat.norm(dim=1, keepdim=True).clamp_min(1e-6)
            z = feat / norms
            if config.loss == "pairs":
                return z, None
            if distributed and self.training and _sync_norm_stats(self.head, norms):
                keep, self.head.t_alpha = self.head.t_alpha, 0.0  # stats already updated, globally
                try:
                    return z, self.head(z, norms, y)
                finally:
                    self.head.t_alpha = keep
            return z, self.head(z, norms, y)

    net = dist.wrap_ddp(Net(), device)
    images_t = torch.from_numpy(images)  # N, H, W, 3 uint8

    def mine_negatives(sketch_idx, cand_idx):
        """Positions in ``cand_idx`` of the k_neg strangers nearest to the step's
        sketches, embedded as they are (no augmentation), in eval mode so that
        the mining moves no BatchNorm statistics. A synthetic set's people are
        also in the stranger pool: their own photos are not strangers."""
        own = torch.from_numpy(np.isin(labels[cand_idx], labels[sketch_idx]))
        def embed(rows):
            x = backbone.to_input(images_t[torch.from_numpy(rows)].permute(0, 3, 1, 2).float().div_(255.0))
            with amp:
                feat = model(x.to(device))
            return F.normalize(feat.float(), dim=1)

        model.eval()
        try:
            with torch.no_grad():
                keep = _hardest(embed(sketch_idx), embed(cand_idx), k_neg, own)
        finally:
            model.train()
        return keep.cpu().numpy()
    ran = 0
    summary_epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        if config.stop_after is not None and ran >= config.stop_after:
            break
        t0 = time.time()
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout of this epoch
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = epoch_order(epoch)
        net.train()
        losses = []
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not show, unit="step")
        negs = (_epoch_negatives(neg_pool, len(bar), k_neg * config.negatives_pool, config.seed, epoch)
                if k_neg else None)
        for j, b in enumerate(bar):
            idx = order[b:b + config.batch_size]
            if len(idx) < max(2, world):  # BatchNorm needs two samples; each rank one
                continue
            if negs is not None:  # single process (pairs): the extra photos go after the pairs
                cand = negs[j]
                if config.negatives_pool > 1:
                    cand = cand[mine_negatives(idx[1::2], cand)]
                idx = np.concatenate([idx, cand])
            part = dist.batch_part(len(idx), ctx.rank, world)
            mine = idx[part.rows]
            x = images_t[torch.from_numpy(mine)].permute(0, 3, 1, 2).float().div_(255.0)
            x = _augment(x, torch.from_numpy(mods[mine] == "photo"), config.augment, gen, part.rows, part.n)
            x = backbone.to_input(x).to(device)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(labels[mine]).to(device)
            lr = lr_at(step, total_steps, config.lr, config.schedule, warmup, config.milestones, config.gamma)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            dropout.part = part
            z, logits = net(x, y)
            loss = _pairs_loss(z, y, config.temperature, k_neg) if pairs else 0.0
            if logits is not None:
                # this rank's mean, weighted so that DDP's mean over ranks is the global batch mean
                loss = loss + (F.cross_entropy(logits, y) * part.weight if distributed else F.cross_entropy(logits, y))
            seen = loss.detach().clone()
            if distributed:
                seen = dist.all_reduce_sum(seen) / world
            if not torch.isfinite(seen):
                raise DataError(f"loss became {seen.item()} at epoch {epoch + 1}, step {step}; lower lr (now {lr:.3g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(seen.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.3g}")
        dropout.part = None
        seconds = time.time() - t0
        rec = None
        if main:
            rank1 = None
            if len(val_probe) and len(val_gallery):
                pe = backbone.embed(list(images[val_probe]))
                ge = backbone.embed(list(images[val_gallery]))
                curve, used = metrics.cmc(metrics.cosine_similarity(pe, ge), ids[val_probe], ids[val_gallery], max_rank=1)
                rank1 = float(curve[0]) if used else None
            rec = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)) if losses else None, "val_rank1": rank1,
                   "lr": lr_at(max(step - 1, 0), total_steps, config.lr, config.schedule, warmup, config.milestones, config.gamma),
                   "images_per_s": round(len(order) / max(seconds, 1e-9), 1), "seconds": round(seconds, 2)}
            if distributed:
                rec["world_size"] = world
        rec = dist.broadcast_object(rec)  # every rank returns the same summary
        history.append(rec)
        rank1 = rec["val_rank1"]
        if show:
            tqdm.write(f"epoch {epoch + 1}: loss {rec['loss']:.4f}" + (f", val rank-1 {rank1:.3f}" if rank1 is not None else ""))
        extra = {"epoch": epoch + 1, "val_rank1": rank1, "data_hash": data_hash, "head": config.head.name,
                 "classes": len(classes), "train_images": int(len(train_idx))}
        score = rank1 if rank1 is not None else float(epoch)
        new_best = score > best["rank1"] or best["epoch"] is None
        if new_best:
            best = {"epoch": epoch + 1, "rank1": score}
        if main:  # plain (unwrapped) state dicts: resumable with any number of processes
            # weights and state of one epoch go into a temp folder swapped in whole, so a
            # kill never leaves last/ holding one epoch's weights and another's state
            tmp = out / ".last.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_matcher(tmp, backbone, bb_name, extra)
            save_state(tmp, "state", {
                "config": json.loads(config.model_dump_json()), "epoch": epoch + 1, "step": step,
                "history": history, "best": best, "data_hash": data_hash, "c4s_version": __version__,
                "world_size": world, "head": head.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
            })
            if new_best:
                shutil.rmtree(out / ".best.tmp", ignore_errors=True)
                shutil.copytree(tmp, out / ".best.tmp", ignore=shutil.ignore_patterns("state.*"))
                replace_folder(out / ".best.tmp", best_dir)
            replace_folder(tmp, last_dir)
            write_json(out / "history.json", history)
        dist.barrier()
        ran += 1
        summary_epoch = epoch + 1

    return {
        "out": str(out), "backbone": bb_name, "head": config.head.name, "epochs_done": summary_epoch,
        "epochs": config.epochs, "finished": summary_epoch >= config.epochs,
        "best_epoch": best["epoch"], "best_val_rank1": history[best["epoch"] - 1]["val_rank1"] if best["epoch"] else None,
        "last_val_rank1": history[-1]["val_rank1"] if history else None,
        "chance_rank1": round(1.0 / max(1, len(set(ids[val_gallery].tolist()))), 4) if len(val_gallery) else None,
        "classes": len(classes), "train_images": int(len(train_idx)), "val_probes": int(len(val_probe)),
        "val_gallery": int(len(val_gallery)), "data_hash": data_hash,
        "world_size": world, "effective_batch_size": config.batch_size, "per_rank_batch_size": per_rank,
        "lr": config.lr, "distributed": info,
        "seconds": round(time.time() - t_start, 1), "history": history,
    }
