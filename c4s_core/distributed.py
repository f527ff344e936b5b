"""Scale-out helpers on PyTorch's own distributed engine (``torchrun``,
``torch.distributed``, ``DistributedDataParallel``; gloo on CPU, NCCL on GPU).

Nothing here names a model. A pipeline that wants to run unchanged under
``torchrun --nproc-per-node N`` follows one pattern::

    from c4s_core import distributed as dist

    with dist.init_from_env(device_type) as ctx:        # no-op without torchrun
        device = ctx.device(device_type)                # cuda:LOCAL_RANK or cpu
        per_rank = dist.per_rank_batch(config.batch_size, ctx.world)
        net = dist.wrap_ddp(dist.sync_batchnorm(net), device)
        for b in range(0, len(order), config.batch_size):   # the *global* batch plan
            idx = order[b:b + config.batch_size]
            part = dist.batch_part(len(idx))                # this rank's rows lo:hi
            ...draw the randomness of all len(idx) rows, keep rows lo:hi...
            loss = local_mean_loss * part.weight            # DDP's mean -> global mean
        if dist.is_main(): save...                          # rank-0-only writes
        dist.barrier()

Under ``torchrun`` each process reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
(and ``MASTER_ADDR``/``MASTER_PORT``) from the environment. Without them, or
with ``WORLD_SIZE=1``, every helper degrades to the single-process answer, so
pipelines and tests call them unconditionally.

Import cost: the standard library only; torch is imported inside functions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, DataError

__all__ = [
    "DistContext",
    "DistributedInfo",
    "BatchPart",
    "init_from_env",
    "is_distributed",
    "is_main",
    "rank",
    "local_rank",
    "world",
    "barrier",
    "shard_indices",
    "batch_part",
    "per_rank_batch",
    "all_gather_object",
    "broadcast_object",
    "all_reduce_sum",
    "wrap_ddp",
    "unwrap",
    "sync_batchnorm",
    "shard_dropout",
    "rank0_progress",
    "merge_manifests",
    "part_manifest_name",
]


# -- state of this process ------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    try:
        import torch.distributed as td
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    if is_distributed():
        import torch.distributed as td

        return td.get_rank()
    return 0


def world() -> int:
    """Number of processes (1 without a process group)."""
    if is_distributed():
        import torch.distributed as td

        return td.get_world_size()
    return 1


def local_rank() -> int:
    """Rank on this node (``LOCAL_RANK``; 0 without torchrun)."""
    return _env_int("LOCAL_RANK", 0) if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0 (and always in a single process): the one that logs and writes."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        import torch.distributed as td

        td.barrier()


@dataclass
class DistContext:
    """What :func:`init_from_env` set up; ``created`` says whether it owns the group."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    backend: str | None = None
    created: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device_type: str):
        """``cuda:LOCAL_RANK`` (made current) for cuda, else ``cpu``."""
        import torch

        if device_type == "cuda":
            dev = torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
            torch.cuda.set_device(dev)
            return dev
        return torch.device(device_type)


@contextlib.contextmanager
def init_from_env(device_type: str | None = None, timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """Join the process group that ``torchrun`` describes in the environment.

    ``device_type`` picks the backend: ``"cuda"`` -> NCCL, anything else ->
    gloo (None: cuda if torch sees a GPU). Without ``WORLD_SIZE`` (or with 1)
    nothing is initialised and the context describes a single process. A group
    already initialised by the caller is reused and left running; a group
    created here is destroyed on exit.
    """
    import torch

    world_env = _env_int("WORLD_SIZE", 1)
    if world_env <= 1:
        yield DistContext()
        return
    import datetime

    import torch.distributed as td

    if not td.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run without torchrun")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    created = False
    if not td.is_initialized():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigError(
                    f"WORLD_SIZE={world_env} is set but {var} is not: start distributed runs with "
                    "`torchrun --nproc-per-node N -m c4s_core ...` (it sets RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
                )
        backend = "nccl" if device_type == "cuda" else "gloo"
        lr_ = _env_int("LOCAL_RANK", 0)
        if backend == "nccl":
            if not torch.cuda.is_available() or lr_ >= torch.cuda.device_count():
                raise ConfigError(
                    f"LOCAL_RANK={lr_} needs GPU {lr_} but torch sees {torch.cuda.device_count()} GPU(s); "
                    "lower --nproc-per-node to the GPUs per node, or use device=cpu (gloo)"
                )
            torch.cuda.set_device(lr_)
        kw: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kw["device_id"] = torch.device("cuda", lr_)
        td.init_process_group(**kw)
        created = True
    ctx = DistContext(rank=td.get_rank(), local_rank=_env_int("LOCAL_RANK", 0), world=td.get_world_size(),
                      backend=str(td.get_backend()), created=created)
    try:
        yield ctx
        if created and td.is_initialized() and ctx.world > 1:
            # every rank reaches teardown before any destroys its group: a gloo rank whose peer
            # closed first was seen to abort at exit ("terminate called without an active exception")
            td.barrier()
    finally:
        if created and td.is_initialized():
            td.destroy_process_group()


# -- splitting work -------------------------------------------------------------------


def shard_indices(n: int, rank: int, world: int, mode: Literal["contiguous", "strided"] = "contiguous") -> range:
    """Indices ``0..n-1`` that ``rank`` of ``world`` takes; the shards of all ranks
    partition ``range(n)`` exactly, in a way that depends only on ``(n, rank, world)``.

    ``contiguous``: a block; the first ``n % world`` ranks get one more item.
    ``strided``: ``rank, rank + world, ...`` (balances work whose cost grows along the list).
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must satisfy 0 <= rank < world (world >= 1); got rank={rank}, world={world}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if mode == "strided":
        return range(rank, n, world)
    if mode != "contiguous":
        raise ValueError(f"mode must be 'contiguous' or 'strided', got {mode!r}")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (1 if rank < extra else 0))


def per_rank_batch(global_batch: int, world_size: int | None = None, field_name: str = "batch_size") -> int:
    """``global_batch / world``; a ConfigError when it does not divide."""
    w = world() if world_size is None else world_size
    if global_batch % w:
        ok = [b for b in (global_batch - global_batch % w, global_batch - global_batch % w + w) if b > 0]
        raise ConfigError(
            f"{field_name}={global_batch} is the global batch and must divide evenly among {w} processes; "
            f"use {' or '.join(map(str, ok))}, or change --nproc-per-node"
        )
    return global_batch // w


@dataclass(frozen=True)
class BatchPart:
    """This rank's rows ``lo:hi`` of a global batch of ``n`` rows.

    ``weight = (hi - lo) * world / n`` turns a loss averaged over this rank's
    rows into one whose DDP average (mean over ranks) is the mean over all
    ``n`` rows, also for a last batch that does not split evenly.
    """

    lo: int
    hi: int
    n: int
    world: int

    @property
    def size(self) -> int:
        return self.hi - self.lo

    @property
    def weight(self) -> float:
        return self.size * self.world / self.n if self.n else 0.0

    @property
    def rows(self) -> slice:
        return slice(self.lo, self.hi)


def batch_part(n: int, rank_: int | None = None, world_size: int | None = None) -> BatchPart:
    """This rank's contiguous share of a global batch of ``n`` rows."""
    w = world() if world_size is None else world_size
    r = rank() if rank_ is None else rank_
    s = shard_indices(n, r, w)
    return BatchPart(s.start, s.stop, n, w)


# -- collectives ----------------------------------------------------------------------


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process).
    Objects travel pickled between the processes of one job; keep them plain data."""
    if not is_distributed():
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor):
    """Sum ``tensor`` over ranks in place (no gradient) and return it."""
    if is_distributed():
        import torch.distributed as td

        td.all_reduce(tensor, op=td.ReduceOp.SUM)
    return tensor


# -- models ---------------------------------------------------------------------------


def wrap_ddp(module, device=None, **kwargs):
    """``DistributedDataParallel(module)`` when distributed (``device_ids`` set for
    a cuda device), else ``module`` unchanged. Extra keyword arguments go to DDP."""
    if not is_distributed():
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device) if device is not None else next(module.parameters()).device
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index if device.index is not None else torch.cuda.current_device()])
        kwargs.setdefault("output_device", kwargs["device_ids"][0])
    return DistributedDataParallel(module, **kwargs)


def unwrap(module):
    """The module inside a DDP wrapper (itself otherwise): save *this* state dict,
    whose keys do not depend on the number of processes."""
    return getattr(module, "module", module)


_CPU_SYNC_BN: dict[type, type] = {}


def _cpu_sync_class(base: type) -> type:
    """A subclass of the BatchNorm class ``base`` whose training-mode statistics are
    synchronised over the process group on CPU (gloo), where torch's SyncBatchNorm
    kernel (and DDP's acceptance of SyncBatchNorm) is GPU-only: mean and biased
    variance of the whole global batch through autograd-aware all-reduces, so the
    gradients are those of one BatchNorm over all ranks' rows. Same state dict."""
    if base in _CPU_SYNC_BN:
        return _CPU_SYNC_BN[base]
    import warnings

    import torch
    import torch.distributed as td
    import torch.distributed.nn.functional as dnn

    def all_reduce(t):
        with warnings.catch_warnings():  # deprecated in favour of a private module; still public and autograd-aware
            warnings.simplefilter("ignore", FutureWarning)
            return dnn.all_reduce(t)

    def forward(self, x):
        if not (self.training and td.is_available() and td.is_initialized()):
            return base.forward(self, x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.tensor([xf.numel() / max(c, 1)], dtype=torch.float32, device=x.device)
        s = all_reduce(torch.cat([xf.sum(dims), count]))
        n = s[c]
        mean = s[:c] / n
        shape = [1, c] + [1] * (x.dim() - 2)
        dev = xf - mean.view(shape)
        var = all_reduce((dev * dev).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                nd = n.detach()
                unbiased = var.detach() * (nd / (nd - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = dev * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    cls = type(f"CPUSync{base.__name__}", (base,), {"forward": forward, "__doc__": _cpu_sync_class.__doc__})
    _CPU_SYNC_BN[base] = cls
    return cls


def sync_batchnorm(module, device_type: str | None = None):
    """Make every BatchNorm of ``module`` use the statistics of the *global* batch,
    so N processes with per-rank batches B/N normalise like one process with batch
    B. On GPUs this is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; on CPU
    (gloo), where torch's SyncBatchNorm is GPU-only, each BatchNorm becomes a
    subclass of its own class that synchronises with autograd-aware all-reduces.
    No-op in a single process. Parameters are shared with the old layers
    (optimizers stay valid) and state-dict keys are unchanged."""
    if not is_distributed():
        return module
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    if device_type is None:
        try:
            device_type = next(module.parameters()).device.type
        except StopIteration:
            device_type = "cpu"
    if device_type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm) and type(m) not in _CPU_SYNC_BN.values():
            m.__class__ = _cpu_sync_class(type(m))
    return module


@dataclass
class _DropoutPart:
    part: BatchPart | None = None


def shard_dropout(module) -> _DropoutPart:
    """Replace every ``nn.Dropout`` of ``module`` by one that draws the mask of the
    whole global batch (from the global torch RNG, identical on all ranks) and keeps
    this rank's rows, so dropout is the same for 1 or N processes. Set ``.part`` of
    the returned handle to the current :class:`BatchPart` before each forward (None:
    the batch is all local). Works in a single process too (then it changes nothing
    but the mask's RNG draw). Module state dicts are unchanged."""
    import torch
    from torch import nn

    handle = _DropoutPart()

    class ShardedDropout(nn.Dropout):
        def forward(self, x):
            part = handle.part
            if not self.training or self.p == 0 or part is None:
                return super().forward(x)
            if self.p >= 1:
                return x * 0
            keep = torch.empty((part.n, *x.shape[1:]), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
            return x * keep[part.rows] / (1 - self.p)

    for m in module.modules():
        if type(m) is nn.Dropout:
            m.__class__ = ShardedDropout
    return handle


def rank0_progress(progress: bool) -> bool:
    """``progress`` on rank 0, False elsewhere: pass as tqdm's ``disable=not ...``."""
    return bool(progress) and is_main()


# -- run summaries --------------------------------------------------------------------


@dataclass
class DistributedInfo:
    """How a run was spread, for its summary and run.json."""

    world_size: int = 1
    backend: str | None = None
    device: str = "cpu"
    per_rank_batch: int | None = None
    effective_batch: int | None = None
    lr: float | None = None
    nodes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def current(cls, device: Any = "cpu", per_rank_batch: int | None = None, lr: float | None = None,
                **extra: Any) -> DistributedInfo:
        w = world()
        return cls(
            world_size=w,
            backend=_backend(),
            device=str(device),
            per_rank_batch=per_rank_batch,
            effective_batch=None if per_rank_batch is None else per_rank_batch * w,
            lr=lr,
            nodes=max(1, w // max(1, _env_int("LOCAL_WORLD_SIZE", w))) if w > 1 else 1,
            extra=dict(extra),
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _backend() -> str | None:
    if not is_distributed():
        return None
    import torch.distributed as td

    return str(td.get_backend())


# -- manifests written per rank -------------------------------------------------------


def part_manifest_name(rank_: int, world_size: int, stem: str = "manifest") -> str:
    """File name of one rank's manifest part, e.g. ``manifest.part-00001-of-00004.jsonl``."""
    return f"{stem}.part-{rank_:05d}-of-{world_size:05d}.jsonl"


def merge_manifests(parts: Iterable[str | os.PathLike], out: str | os.PathLike,
                    key: str | Sequence[str] = "path", remove_parts: bool = False) -> int:
    """Merge per-rank manifest parts into one manifest at ``out``, sorted by
    ``key`` (a field, or fields), written atomically. Identical records found in
    several parts are kept once; two different records with the same key are a
    DataError naming both files. Returns the number of records written."""
    from .data.manifest import iter_manifest, write_manifest

    keys = (key,) if isinstance(key, str) else tuple(key)
    parts = [Path(p) for p in parts]
    seen: dict[tuple, tuple[dict[str, Any], Path]] = {}
    for p in parts:
        for i, rec in enumerate(iter_manifest(p), 1):
            missing = [k for k in keys if k not in rec]
            if missing:
                raise DataError(f"{p}: record {i} has no {', '.join(missing)} field to sort and merge by")
            k = tuple(_sortable(rec[f]) for f in keys)
            if k in seen:
                if seen[k][0] != rec:
                    raise DataError(
                        f"manifest parts disagree on {dict(zip(keys, (rec[f] for f in keys), strict=True))}: "
                        f"{seen[k][1]} and {p} hold different records; were they written by different runs?"
                    )
                continue
            seen[k] = (rec, p)
    n = write_manifest(out, [seen[k][0] for k in sorted(seen)])
    if remove_parts:
        for p in parts:
            if Path(p).resolve() != Path(out).resolve():
                Path(p).unlink(missing_ok=True)
    return n


def _sortable(v: Any) -> tuple:
    # None first, then numbers, then strings; nested values by their JSON text
    import json

    if v is None:
        return (0, 0, "")
    if isinstance(v, bool | int | float):
        return (1, float(v), "")
    if isinstance(v, str):
        return (2, 0, v)
    return (3, 0, json.dumps(v, sort_keys=True))
