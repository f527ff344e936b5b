"""Built-in generator ``diffusion``: the CLIP4Sketch conditional pixel-space DDPM.

A diffusers ``UNet2DConditionModel`` (3 channels, default 112x112) denoises
sketches while cross-attending to one token sequence: the tokens of every
configured conditioner (``clip_image``, ``adaface_id``/``dlib_id``,
``clip_text``...), each passed through a learned ``Linear(dim ->
cross_attention_dim)`` plus a learned per-conditioner type embedding,
concatenated. Each conditioner belongs to a *role* (``identity``,
``appearance`` or ``style``; its ``role`` attribute, overridable with
``roles``). Training (diffusers ``DDPMScheduler`` noise schedule, epsilon or v
prediction) drops each role independently at ``drop_rates[role]`` and all of
them at once at ``drop_all``, replacing the tokens by that conditioner's learned
null tokens, so sampling can guide each role separately.

Compositional classifier-free guidance (:meth:`DiffusionGenerator.sample`),
with ``guidance = {role: s_role}`` and G the guided roles::

    out = out(∅_G) + Σ_{r in G} s_r · (out(r) − out(∅_G))

where ``out(∅_G)`` keeps only the roles *not* in ``guidance`` (all guided
roles replaced by null tokens) and ``out(r)`` keeps those plus role ``r``.
"out" is the model output (epsilon, or v: the combination is linear, so it is
the same for both). With ``guidance={"identity": s_id, "style": s_style}`` and
conditioners identity+style this is exactly
``eps = eps_uncond + s_id (eps_id_only − eps_uncond) + s_style (eps_style_only − eps_uncond)``.
``guidance_mode="nested"`` instead chains the roles in the order given
(InstructPix2Pix's guidance for two conditionings, Brooks et al. 2023)::

    out = out(∅_G) + Σ_k s_k · (out(r_1..r_k) − out(r_1..r_{k−1}))

so each role is guided *given* the ones before it. With ``{identity, style}``
the style direction is taken with the photo kept, where the compositional
form's ``out(style) − out(∅)`` is the style of no one in particular; all
scales 1 telescope to plain conditional sampling. Measured on real data it
moved identity and style only a little (docs/identity-generator.md).
All 1 + |G| branches run as one batched forward pass. ``guidance=None`` (or
empty) is plain conditional sampling with every condition kept. An
``appearance`` conditioner not named in ``guidance`` stays in every branch.

Sampling is deterministic per image: image ``j`` of input ``i`` draws its
initial and step noise from its own ``torch.Generator`` seeded from
``(seed, i, j)``, so results do not depend on the batch size.

``strength < 1`` starts from the reference photo instead of pure noise
(SDEdit, Meng et al. 2022; diffusers' img2img pipelines): the grey photo at
the generator's side is noised to the step ``strength`` of the way up the
sampler's schedule and denoised from there, so the coarse layout (face shape,
hair, glasses) is the photo's own and the strokes are the model's. 1.0 (the
default) is plain sampling; lower keeps more of the photo and less of the
style. torch/diffusers are imported inside methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from c4s_core import ComponentConfig, ComponentSpec, hookimpl
from c4s_core.config import C4SModel
from c4s_core.errors import C4SError, ConfigError, DataError

ROLES = ("identity", "appearance", "style")

PRESETS: dict[str, dict[str, Any]] = {
    # tests: 32 px, two levels, a few thousand parameters per block
    "tiny": {"sample_size": 32, "block_out_channels": [16, 32], "layers_per_block": 1,
             "attention_levels": [False, True], "cross_attention_dim": 32, "attention_head_dim": 8,
             "norm_num_groups": 8},
    # CPU demo: 64 px
    "small": {"sample_size": 64, "block_out_channels": [32, 64, 128], "layers_per_block": 1,
              "attention_levels": [False, True, True], "cross_attention_dim": 128, "attention_head_dim": 32,
              "norm_num_groups": 16},
    # the paper's setting: 112 px aligned faces (DCFace-like UNet, smaller). Attention at
    # 28 and 14 px only: at 56 px (3,136 tokens) it took 40 GB and half the step time on
    # an H200 at batch 64 (benchmarks/gpu.sh)
    "default": {"sample_size": 112, "block_out_channels": [64, 128, 192, 256], "layers_per_block": 2,
                "attention_levels": [False, False, True, True], "cross_attention_dim": 256,
                "attention_head_dim": 32, "norm_num_groups": 32},
}


def _default_conditioners() -> list[ComponentSpec]:
    # No download needed: dlib's pretrained 128-d identity descriptor, and a frozen
    # random open_clip text tower (distinct style prompts -> distinct vectors; the
    # learned projection does the rest). Swap in clip_image/adaface_id with weights.
    return [ComponentSpec(name="dlib_id"), ComponentSpec(name="clip_text")]


class IdentityLoss(C4SModel):
    """Identity loss on the predicted clean image: ``weight * (1 - cos(R(x0_hat), R(x0)))``
    through a frozen pretrained recogniser R, at timesteps below ``max_timestep``
    (where ``x0_hat`` is sharp enough for R to read)."""

    weight: float = Field(0.1, gt=0.0, le=100.0, description="Weight of the identity term beside the denoising loss.")
    backbone: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="dlib_r29", options={"input_size": 150}),
        description="Frozen recogniser R (any torch backbone with to_input/forward); not the judge.",
    )
    max_timestep: int = Field(300, ge=1, le=4000, description="Only rows noised with t below this get the term.")
    min_spread: float = Field(
        0.01, ge=0.0, le=1.0, description="Refuse to train when 1 - the mean cosine between R's embeddings of "
        "different training sketches is below this: the term can then tell a wrong person from the right one by "
        "less than that, so it carries no identity signal (the shipped mfn_human: 0.0002; dlib_r29 on 64 px "
        "sketches: 0.13). 0: no check.")


class DiffusionConfig(ComponentConfig):
    preset: Literal["tiny", "small", "default"] = Field(
        "default", description="UNet size preset: tiny (32 px, tests), small (64 px, CPU demo), default (112 px)."
    )
    sample_size: int | None = Field(None, ge=16, le=512, description="Image side in pixels; none: the preset's.")
    block_out_channels: list[int] | None = Field(None, description="UNet channels per level; none: the preset's.")
    layers_per_block: int | None = Field(None, ge=1, le=4, description="ResNet layers per UNet block; none: the preset's.")
    attention_levels: list[bool] | None = Field(
        None, description="Per level: cross-attention block (true) or plain ResNet block; none: the preset's."
    )
    cross_attention_dim: int | None = Field(None, ge=8, le=2048, description="Width of the condition tokens; none: the preset's.")
    attention_head_dim: int | None = Field(None, ge=1, le=256, description="Channels per attention head; none: the preset's.")
    norm_num_groups: int | None = Field(None, ge=1, le=64, description="GroupNorm groups (must divide every channel count).")
    conditioners: list[ComponentSpec] = Field(
        default_factory=_default_conditioners, description="Conditioners whose tokens are concatenated (order kept)."
    )
    roles: dict[str, Literal["identity", "appearance", "style"]] = Field(
        default_factory=dict, description="Role per conditioner name, overriding its own `role` (default identity)."
    )
    drop_rates: dict[str, float] = Field(
        default_factory=lambda: {"identity": 0.1, "appearance": 0.1, "style": 0.1},
        description="Training: probability of replacing each role's tokens by null tokens, independently.",
    )
    drop_all: float = Field(0.1, ge=0.0, le=1.0, description="Training: probability of dropping every condition at once.")
    prediction_type: Literal["epsilon", "v_prediction"] = Field("epsilon", description="What the UNet predicts.")
    num_train_timesteps: int = Field(1000, ge=10, le=4000, description="Training noise levels (DDPMScheduler).")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        "linear", description="Training noise schedule (DDPMScheduler beta_schedule). squaredcos_cap_v2 puts "
        "sigma_max near 2e4, where diffusers' euler_ancestral step returns NaN."
    )
    identity_loss: IdentityLoss | None = Field(
        None, description="Training: identity loss through a frozen recogniser on the predicted clean image; none: off."
    )
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA decay of the weights used for sampling; 0: no EMA.")
    mixed_precision: Literal["no", "bf16"] = Field("no", description="bf16 autocast for the UNet forward (GPU).")
    device: str = Field("auto", description="Torch device: auto (cuda if available), cpu, cuda, cuda:1...")
    seed: int = Field(0, ge=0, description="Seed of the weight initialisation.")

    @field_validator("drop_rates")
    @classmethod
    def _rates(cls, v):
        for k, r in v.items():
            if k not in ROLES:
                raise ValueError(f"drop_rates key {k!r} is not a role; roles: {', '.join(ROLES)}")
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"drop_rates[{k!r}]={r} must be in [0, 1]")
        return v

    @model_validator(mode="after")
    def _unet(self):
        u = self.unet_options()
        ch, lv = u["block_out_channels"], u["attention_levels"]
        if not ch or any(c < 1 for c in ch):
            raise ValueError(f"block_out_channels must be positive, got {ch}")
        if len(lv) != len(ch):
            raise ValueError(f"attention_levels has {len(lv)} entries but block_out_channels {len(ch)}")
        bad = [c for c in ch if c % u["norm_num_groups"]]
        if bad:
            raise ValueError(f"norm_num_groups={u['norm_num_groups']} must divide every channel count; {bad} do not")
        f = 2 ** (len(ch) - 1)
        if u["sample_size"] % f:
            raise ValueError(f"sample_size={u['sample_size']} must be divisible by {f} (2 ** (levels - 1))")
        if not self.conditioners:
            raise ValueError("give at least one conditioner")
        return self

    def unet_options(self) -> dict[str, Any]:
        base = dict(PRESETS[self.preset])
        for k in base:
            v = getattr(self, k)
            if v is not None:
                base[k] = list(v) if isinstance(v, list) else v
        return base


def unet_config(cfg: DiffusionConfig, extra_channels: int = 0) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` keyword arguments for ``cfg``; the
    spatial conditions' ``extra_channels`` join the 3 image channels at the input."""
    u = cfg.unet_options()
    lv = u["attention_levels"]
    # diffusers' UNet2DConditionModel reads attention_head_dim as the number of heads.
    heads = [max(1, c // u["attention_head_dim"]) for c in u["block_out_channels"]]
    return {
        "sample_size": u["sample_size"],
        "in_channels": 3 + int(extra_channels),
        "out_channels": 3,
        "block_out_channels": list(u["block_out_channels"]),
        "layers_per_block": u["layers_per_block"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in lv],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(lv)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": u["cross_attention_dim"],
        "attention_head_dim": heads,
        "norm_num_groups": u["norm_num_groups"],
    }


def _versions() -> dict[str, str]:
    import diffusers
    import torch

    import c4s_core

    return {"c4s": c4s_core.__version__, "diffusers": diffusers.__version__, "torch": torch.__version__}


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class DiffusionGenerator:
    """CLIP4Sketch conditional pixel DDPM (diffusers UNet) with per-condition classifier-free guidance."""

    name = "diffusion"
    aliases = ("clip4sketch", "ddpm_generator")
    Config = DiffusionConfig

    def __init__(self, config: DiffusionConfig, conditioners: list | None = None):
        import torch

        from c4s_core import get_registries

        from ._diffusion_model import CondDiffusion

        self.config = config
        if conditioners is None:
            reg = get_registries().conditioner
            conditioners = [reg.build(spec) for spec in config.conditioners]
        self.conditioners = conditioners
        self.cond_names = [spec.name for spec in config.conditioners]
        self.roles = [
            config.roles.get(n) or getattr(c, "role", None) or "identity"
            for n, c in zip(self.cond_names, conditioners, strict=True)
        ]
        for n, r in zip(self.cond_names, self.roles, strict=True):
            if r not in ROLES:
                raise ConfigError(f"conditioner {n!r} has role {r!r}; roles: {', '.join(ROLES)}")
        kinds = [getattr(c, "kind", "tokens") for c in conditioners]
        for n, k in zip(self.cond_names, kinds, strict=True):
            if k not in ("tokens", "spatial"):
                raise ConfigError(f"conditioner {n!r} has kind {k!r}; kinds: tokens, spatial")
        conds = [("spatial", int(c.channels)) if k == "spatial" else ("tokens", int(c.num_tokens), int(c.dim))
                 for c, k in zip(conditioners, kinds, strict=True)]
        self.unet_config = unet_config(config, sum(c[1] for c in conds if c[0] == "spatial"))
        self.noise_config = {
            "num_train_timesteps": config.num_train_timesteps,
            "beta_schedule": config.beta_schedule,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "prediction_type": config.prediction_type,
            "clip_sample": True,
            "clip_sample_range": 1.0,
        }
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = CondDiffusion(self.unet_config, conds, self.unet_config["cross_attention_dim"])
        self.model.to(self.device)
        self.ema = None
        if config.ema_decay > 0:
            from ._diffusion_model import EMA

            self.ema = EMA(self.model, config.ema_decay)
        self.meta: dict[str, Any] = {}
        self.step = 0

    # -- conditions ---------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.unet_config["sample_size"])

    def conditioner_records(self) -> list[dict[str, Any]]:
        from c4s_core.cache import condition_shape, conditioner_identity

        return [
            {"name": n, "options": json.loads(json.dumps(spec.options, default=str)), "role": r,
             "kind": getattr(c, "kind", "tokens"), "shape": list(condition_shape(c)),
             "num_tokens": int(getattr(c, "num_tokens", 0)), "dim": int(getattr(c, "dim", 0)),
             "identity": conditioner_identity(c)}
            for n, spec, r, c in zip(self.cond_names, self.config.conditioners, self.roles, self.conditioners, strict=True)
        ]

    def encode_conditions(self, photos, styles, cache_dir: str | Path | None = None) -> list[np.ndarray]:
        """Each conditioner's output ``[B, *condition_shape]`` (float32: tokens or
        spatial maps), through an on-disk cache when ``cache_dir`` is given."""
        from c4s_core.cache import EmbeddingCache, conditioner_identity, encode_cached

        out = []
        for c in self.conditioners:
            cache = EmbeddingCache(cache_dir, conditioner_identity(c)) if cache_dir else None
            out.append(encode_cached(c, photos, styles, cache))
        return out

    def _keep_all(self, b: int):
        import torch

        return torch.ones(b, len(self.conditioners), dtype=torch.bool, device=self.device)

    def drop_mask(self, b: int, generator) -> Any:
        """Training keep mask ``[b, k]``: each role dropped at its rate, all at ``drop_all``.
        Draws ``b * (len(ROLES) + 1)`` uniforms from ``generator`` (CPU)."""
        import torch

        u = torch.rand(b, len(ROLES) + 1, generator=generator)
        rates = torch.tensor([self.config.drop_rates.get(r, 0.0) for r in ROLES])
        keep_role = u[:, : len(ROLES)] >= rates
        keep_role &= (u[:, len(ROLES):] >= self.config.drop_all)
        idx = torch.tensor([ROLES.index(r) for r in self.roles])
        return keep_role[:, idx]

    # -- training -----------------------------------------------------------------
    def train_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.noise_config)

    def loss(self, x0, tokens, generator, scheduler=None, part=None, model=None):
        """Denoising loss of one batch: x0 ``[B, 3, H, W]`` in [-1, 1] on the device,
        ``tokens`` per conditioner on the device; noise, timesteps and the drop
        mask come from the CPU ``generator``.

        ``part`` (a :class:`c4s_core.distributed.BatchPart`): ``x0`` and ``tokens``
        hold rows ``part.rows`` of a global batch of ``part.n``; the randomness of
        all ``part.n`` rows is drawn (so ``generator`` advances the same on every
        rank) and these rows' share is used. ``model``: the module to call (a DDP
        wrapper of ``self.model``); default ``self.model``."""
        import torch
        import torch.nn.functional as F

        sched = scheduler or self.train_scheduler()
        b = x0.shape[0]
        n, rows = (b, slice(0, b)) if part is None else (part.n, part.rows)
        noise = torch.randn((n, *x0.shape[1:]), generator=generator)[rows].to(self.device)
        t = torch.randint(0, self.config.num_train_timesteps, (n,), generator=generator)[rows].to(self.device)
        keep = self.drop_mask(n, generator)[rows].to(self.device)
        xt = sched.add_noise(x0, noise, t)
        target = noise if self.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.mixed_precision == "bf16"):
            pred = (model or self.model)(xt, t, tokens, keep)
        loss = F.mse_loss(pred.float(), target.float())
        il = self.config.identity_loss
        if il is None:
            return loss
        low = t < il.max_timestep
        self.last_identity_loss = None
        if not bool(low.any()):
            return loss
        ab = sched.alphas_cumprod.to(self.device)[t[low]].view(-1, 1, 1, 1).float()
        xl, pl = xt[low].float(), pred[low].float()
        x0_hat = (xl - (1 - ab).sqrt() * pl) / ab.sqrt() if self.config.prediction_type == "epsilon" \
            else ab.sqrt() * xl - (1 - ab).sqrt() * pl
        with torch.no_grad():
            ref = self._identity_embed(x0[low].float())
        # a sum over this part's rows / its row count: the same weighting as the MSE mean, so DDP sums right
        term = (1.0 - (self._identity_embed(x0_hat) * ref).sum(1)).sum() / b
        self.last_identity_loss = float(term.detach()) * b / int(low.sum())
        return loss + il.weight * term

    def _check_identity_spread(self, x_all, seed) -> float:
        """1 - mean cosine between the identity recogniser's embeddings of up to 64 training sketches
        (seeded pick); ConfigError below ``identity_loss.min_spread``."""
        import torch

        il = self.config.identity_loss
        g = torch.Generator().manual_seed(_seed_int(seed, 0x5B2))
        rows = torch.randperm(len(x_all), generator=g)[:64]
        if len(rows) < 2:
            return 1.0
        with torch.no_grad():
            e = self._identity_embed(x_all[rows].to(self.device).float())
        c = e @ e.T
        spread = 1.0 - float((c.sum() - c.diagonal().sum()) / (len(rows) * (len(rows) - 1)))
        if spread < il.min_spread:
            raise ConfigError(
                f"identity_loss.backbone {il.backbone.name!r} embeds the training sketches alike: 1 - mean cosine "
                f"between {len(rows)} of them is {spread:.4f}, below min_spread={il.min_spread}, so its loss cannot "
                "tell one person from another. Use a recogniser that separates these faces (e.g. dlib_r29, or a "
                "fine-tuned matcher folder), or set identity_loss.min_spread=0 to train anyway")
        return spread

    def _identity_embed(self, x):
        """Unit embeddings by the frozen identity-loss recogniser of images in [-1, 1]."""
        import torch.nn.functional as F

        net = getattr(self, "_id_net", None)
        if net is None:
            from c4s_core import get_registries

            net = get_registries().backbone.build(self.config.identity_loss.backbone)
            if not all(hasattr(net, a) for a in ("to_input", "forward", "model")):
                raise ConfigError(f"identity_loss.backbone {self.config.identity_loss.backbone.name!r} is not a torch "
                                  "backbone (needs to_input, forward and model)")
            net.model.to(self.device).eval()
            for p in net.model.parameters():
                p.requires_grad_(False)
            self._id_net = net
        x01 = ((x.clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1)
        if tuple(x01.shape[-2:]) != tuple(net.input_size):
            x01 = F.interpolate(x01, size=tuple(net.input_size), mode="bilinear", align_corners=False)
        return F.normalize(net.forward(net.to_input(x01)).float(), dim=1)

    def fit(
        self,
        sketches: np.ndarray,
        tokens: list[np.ndarray],
        *,
        out: str | Path,
        steps: int,
        batch_size: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        grad_accum: int = 1,
        grad_clip: float = 1.0,
        seed: int = 0,
        checkpoint_every: int = 500,
        keep_checkpoints: int = 2,
        val: tuple[np.ndarray, list[np.ndarray]] | None = None,
        val_every: int = 0,
        sample_every: int = 0,
        grid: tuple[Sequence[np.ndarray], Sequence[str]] | None = None,
        grid_sampler: Any = None,
        grid_guidance: dict[str, float] | None = None,
        resume: bool = False,
        stop_after: int | None = None,
        progress: bool = True,
        log: Callable[[dict], None] | None = None,
    ) -> dict[str, Any]:
        """Train on ``sketches`` (uint8 ``[N, H, W, 3]`` at ``size``) with the
        precomputed condition ``tokens`` (one array ``[N, n_i, dim_i]`` per
        conditioner). Data order: a permutation per epoch from ``(seed, epoch)``;
        noise, timesteps and drop masks from one CPU generator whose state is
        checkpointed, so ``resume`` continues exactly where a killed run stopped.
        Checkpoints: ``out/checkpoints/step_NNNNNNN/`` every ``checkpoint_every``
        steps, at ``stop_after`` and at the end.

        Under a ``torch.distributed`` process group (``torchrun``) every rank calls
        ``fit`` with the same arguments: ``batch_size`` is the *global* micro-batch,
        each rank takes its contiguous rows of it (:func:`c4s_core.distributed.batch_part`),
        draws the noise, timesteps and drop masks of all rows and keeps its own,
        and DistributedDataParallel averages gradients of losses weighted to the
        global mean, so N processes give the weights of one (up to float rounding).
        Rank 0 reads the checkpoint to resume from (and hands it round), validates,
        draws the grids and writes; checkpoints hold plain state dicts, so a run
        may resume with another number of processes."""
        import contextlib

        import torch
        from tqdm import tqdm

        from c4s_core import distributed as dist
        from c4s_core.training import latest_checkpoint

        from ._diffusion_model import to_tensor

        out = Path(out)
        n = len(sketches)
        if n == 0:
            raise DataError("diffusion.fit: no training sketches")
        if sketches.shape[1:3] != (self.size, self.size):
            raise DataError(f"diffusion.fit: sketches are {sketches.shape[1:3]}, the generator expects {self.size}x{self.size}")
        from c4s_core.cache import condition_shape

        for i, (t, c) in enumerate(zip(tokens, self.conditioners, strict=True)):
            if t.shape != (n, *condition_shape(c)):
                raise DataError(f"diffusion.fit: conditions of {self.cond_names[i]!r} have shape {t.shape}, "
                                f"expected {(n, *condition_shape(c))}")
        world, rank = dist.world(), dist.rank()
        main, distributed = rank == 0, world > 1
        if batch_size < world:
            raise ConfigError(f"diffusion.fit: batch_size={batch_size} is the global batch and must be at least "
                              f"the number of processes ({world})")
        x_all = to_tensor(sketches)
        if self.config.identity_loss is not None and self.config.identity_loss.min_spread > 0:
            self._check_identity_spread(x_all, seed)
        tok_all = [torch.from_numpy(np.ascontiguousarray(t)) for t in tokens]
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(_seed_int(seed, 0x7A1))
        sched = self.train_scheduler()
        ckdir = out / "checkpoints"
        history: list[dict] = []
        start = 0
        if resume:
            # rank 0 reads (its out folder need not be shared) and hands the state round
            state, err = None, None
            if main:
                try:
                    last = latest_checkpoint(ckdir)
                    state = None if last is None else self._read_training_state(last)
                except C4SError as e:
                    err = e
            state, err = dist.broadcast_object((state, err))
            if err is not None:
                raise err
            if state is not None:
                start = self._apply_training_state(state, opt, gen)
                history = state["history"]
        end = steps if stop_after is None else min(steps, stop_after)
        perms: dict[int, np.ndarray] = {}

        def indices(step: int, micro: int) -> np.ndarray:
            first = (step * grad_accum + micro) * batch_size
            idx = []
            for j in range(first, first + batch_size):
                e = j // n
                if e not in perms:
                    perms.clear()
                    perms[e] = np.random.default_rng([seed, 0xDA7A, e]).permutation(n)
                idx.append(perms[e][j % n])
            return np.asarray(idx)

        self.model.train()
        # every parameter takes part in each forward (null tokens through torch.where), so plain DDP
        net = dist.wrap_ddp(self.model, self.device)
        bar = tqdm(total=steps, initial=start, desc="train-generator", unit="step", disable=not (progress and main))
        t0, loss_ema = time.perf_counter(), None
        step = start
        for step in range(start, end):
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
            opt.zero_grad(set_to_none=True)
            total = torch.zeros((), dtype=torch.float64)
            for micro in range(grad_accum):
                idx = indices(step, micro)
                part = dist.batch_part(len(idx), rank, world)
                mine = torch.from_numpy(idx[part.rows])
                x0 = x_all[mine].to(self.device)
                tk = [t[mine].to(self.device) for t in tok_all]
                sync = contextlib.nullcontext() if not distributed or micro == grad_accum - 1 else net.no_sync()
                with sync:
                    loss = self.loss(x0, tk, gen, sched, part=part, model=net) / grad_accum
                    if distributed:  # DDP's mean over ranks of these is the global batch mean
                        loss = loss * part.weight
                    loss.backward()
                total += loss.detach().double().cpu()
            if distributed:
                total = dist.all_reduce_sum(total) / world
            total = float(total)
            if not np.isfinite(total):
                raise C4SError(f"diffusion.fit: loss became {total} at step {step + 1}; lower lr (now {lr})")
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
            opt.step()
            if self.ema is not None:
                self.ema.update(self.model, step)
            self.step = step + 1
            loss_ema = total if loss_ema is None else 0.9 * loss_ema + 0.1 * total
            rec: dict[str, Any] = {"step": self.step, "loss": total}
            if getattr(self, "last_identity_loss", None) is not None:
                rec["identity_loss"] = self.last_identity_loss  # rank 0's last micro-batch: a trace, not a mean
            if val is not None and val_every and (self.step % val_every == 0 or self.step == steps):
                v = self.validation_loss(*val, seed=seed) if main else None
                rec["val_loss"] = dist.broadcast_object(v)
            if main and grid is not None and sample_every and (self.step % sample_every == 0 or self.step == steps):
                self.save_grid(out / "samples" / f"step_{self.step:07d}.png", grid, grid_sampler, grid_guidance)
            history.append(rec)
            if log and main:
                log(rec)
            bar.set_postfix(loss=f"{loss_ema:.4f}", **({"val": f"{rec['val_loss']:.4f}"} if "val_loss" in rec else {}))
            bar.update(1)
            if (checkpoint_every and self.step % checkpoint_every == 0) or self.step == end:
                if main:
                    self._save_checkpoint(ckdir, opt, gen, history, keep_checkpoints, world)
                dist.barrier()
        bar.close()
        self.model.eval()
        elapsed = time.perf_counter() - t0
        done = max(0, end - start)
        return {"step": self.step, "steps_run": done, "steps_per_s": done / elapsed if elapsed > 0 else None,
                "images_per_s": done * batch_size * grad_accum / elapsed if elapsed > 0 else None,
                "final_loss": history[-1]["loss"] if history else None, "history": history,
                "stopped_early": end < steps, "world_size": world, "per_rank_batch_size": -(-batch_size // world),
                "effective_batch_size": batch_size * grad_accum}

    def validation_loss(self, sketches: np.ndarray, tokens: list[np.ndarray], seed: int = 0, batch_size: int = 32) -> float:
        """Mean denoising loss on held-out data with every condition kept, fixed
        noise and timesteps (a separate generator: training randomness is untouched)."""
        import torch
        import torch.nn.functional as F

        from ._diffusion_model import to_tensor

        sched = self.train_scheduler()
        g = torch.Generator().manual_seed(_seed_int(seed, 0x7A2))
        was = self.model.training
        self.model.eval()
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for a in range(0, len(sketches), batch_size):
                x0 = to_tensor(sketches[a:a + batch_size]).to(self.device)
                b = x0.shape[0]
                tk = [torch.from_numpy(np.ascontiguousarray(t[a:a + b])).to(self.device) for t in tokens]
                noise = torch.randn(x0.shape, generator=g).to(self.device)
                t = torch.randint(0, self.config.num_train_timesteps, (b,), generator=g).to(self.device)
                xt = sched.add_noise(x0, noise, t)
                target = noise if self.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
                pred = self.model(xt, t, tk, self._keep_all(b))
                tot += float(F.mse_loss(pred.float(), target.float(), reduction="sum")) / x0[0].numel()
                cnt += b
        self.model.train(was)
        return tot / max(cnt, 1)

    def save_grid(self, path, grid, sampler=None, guidance=None) -> None:
        """Rows: the grid photos; columns: the photo, then one sample per style."""
        from c4s_core.data.io import grid as tile
        from c4s_core.data.io import resize, save_image

        photos, styles = grid
        rows = []
        for i, p in enumerate(photos):
            imgs = self.sample([p] * len(styles), list(styles), sampler=sampler, guidance=guidance, seed=i)
            rows.append([resize(np.asarray(p), self.size)] + list(imgs))
        save_image(path, tile(rows))

    # -- sampling ----------------------------------------------------------------
    def _sampler(self, sampler):
        from c4s_core import get_registries

        if sampler is None:
            sampler = ComponentSpec(name="ddim", options={"steps": 50})
        if isinstance(sampler, (str, ComponentSpec)):
            sampler = get_registries().sampler.build(sampler)
        return sampler

    def make_scheduler(self, sampler):
        """The sampler's scheduler on this generator's training noise schedule."""
        import inspect

        params = list(inspect.signature(sampler.make_scheduler).parameters)
        if params and params[0] == "num_train_timesteps":  # older contract (example plugin's deis)
            sch = sampler.make_scheduler(self.config.num_train_timesteps)
        else:
            sch = sampler.make_scheduler(dict(self.noise_config))
        for key in ("prediction_type", "beta_schedule"):
            got = sch.config.get(key)
            if got is not None and got != self.noise_config[key]:
                raise ConfigError(
                    f"sampler {getattr(sampler, 'name', sampler)!r} uses {key}={got!r} but the generator was "
                    f"trained with {key}={self.noise_config[key]!r}; set the sampler's {key} to match"
                )
        return sch

    def sample(
        self,
        photos: Sequence[np.ndarray],
        styles: Sequence[str | None] | None,
        sampler: Any = None,
        guidance: dict[str, float] | None = None,
        seed: int = 0,
        num_per_input: int = 1,
        batch_size: int = 16,
        use_ema: bool = True,
        tokens: list[np.ndarray] | None = None,
        cache_dir: str | Path | None = None,
        output: Literal["uint8", "float"] = "uint8",
        seeds: Sequence[int] | None = None,
        strength: float = 1.0,
        starts: Sequence[np.ndarray] | None = None,
        guidance_mode: Literal["compositional", "nested"] = "compositional",
    ) -> np.ndarray:
        """Sketches for each (photo, style): uint8 ``[len(photos) * num_per_input,
        size, size, 3]``, input-major (input i's copies are rows i*num..i*num+num-1).
        ``sampler``: a name, ComponentSpec or sampler object (default DDIM, 50 steps).
        ``guidance``: ``{role: scale}``, combined as ``guidance_mode`` says (module
        docstring: ``compositional`` or ``nested``, in the dict's order). Image ``j`` of
        input ``i`` uses a generator seeded from ``(seed, i, j)``, or from
        ``seeds[i * num_per_input + j]`` when ``seeds`` is given (one per output
        image: ``c4s generate`` seeds each image from its identity, style and k).
        ``strength`` in (0, 1]: below 1, start from the noised grey photo (module
        docstring), or from ``starts`` (one image per input, e.g. a procedural
        rendering of the photo) when given."""
        import contextlib

        import torch

        from ._diffusion_model import to_uint8

        sampler = self._sampler(sampler)
        guidance = {k: float(v) for k, v in (guidance or {}).items()}
        bad = [k for k in guidance if k not in self.roles]
        if bad:
            raise ConfigError(f"guidance names role(s) {bad} that no conditioner has; roles here: {sorted(set(self.roles))}")
        if guidance_mode not in ("compositional", "nested"):
            raise ConfigError(f"guidance_mode must be 'compositional' or 'nested', got {guidance_mode!r}")
        n = len(photos) if photos is not None and len(photos) else len(styles or [])
        if not 0.0 < float(strength) <= 1.0:
            raise ConfigError(f"diffusion.sample: strength must be in (0, 1], got {strength}")
        init = None
        if strength < 1.0:
            first = photos if starts is None else starts
            if first is None or len(first) != n:
                raise ConfigError(f"diffusion.sample: strength < 1 starts from one image per input ({n}); give "
                                  "photos or starts")
            init = self.init_images(first)
        if tokens is None:
            tokens = self.encode_conditions(photos, styles, cache_dir)
        # branch keep-masks: with guidance, [uncond-of-guided, one per guided role]; nested:
        # role k's branch also keeps roles 1..k-1
        guided = list(guidance)
        nested = guidance_mode == "nested"
        k = len(self.conditioners)
        if guided:
            base = torch.tensor([r not in guided for r in self.roles])
            branches = [base]
            for g in guided:
                branches.append((branches[-1] if nested else base) | torch.tensor([r == g for r in self.roles]))
        else:
            branches = [torch.ones(k, dtype=torch.bool)]
        jobs = [(i, j) for i in range(n) for j in range(num_per_input)]
        if seeds is not None and len(seeds) != len(jobs):
            raise ConfigError(f"diffusion.sample: {len(seeds)} seeds for {len(jobs)} images (inputs x num_per_input)")
        seed_ints = [_seed_int(seed, i, j) for i, j in jobs] if seeds is None else [_seed_int(int(s)) for s in seeds]
        out = (np.zeros((len(jobs), self.size, self.size, 3), np.uint8) if output == "uint8"
               else np.zeros((len(jobs), 3, self.size, self.size), np.float32))
        ctx = self.ema.swapped(self.model) if (use_ema and self.ema is not None) else contextlib.nullcontext()
        was = self.model.training
        self.model.eval()
        step_kw = dict(getattr(sampler, "step_kwargs", dict)() or {})
        with ctx, torch.no_grad():
            for a in range(0, len(jobs), batch_size):
                chunk = jobs[a:a + batch_size]
                x = self._sample_chunk(chunk, tokens, sampler, guidance, guided, branches,
                                       seed_ints[a:a + len(chunk)], step_kw, init, float(strength), nested)
                out[a:a + len(chunk)] = to_uint8(x) if output == "uint8" else x.float().cpu().numpy()
        self.model.train(was)
        return out

    def init_images(self, photos) -> Any:
        """The photos as the generator's start images: grey, at its side (area-averaged),
        replicated to 3 channels, float ``[N, 3, S, S]`` in [-1, 1] (sketches are grey)."""
        from .spatial import PhotoMapConditioner, PhotoMapConfig

        grey = PhotoMapConditioner(PhotoMapConfig(size=self.size, channels="grey")).encode(photos)
        return grey.expand(-1, 3, -1, -1).contiguous()

    def _sample_chunk(self, chunk, tokens, sampler, guidance, guided, branches, seed_ints, step_kw,
                      init=None, strength: float = 1.0, nested: bool = False):
        import inspect

        import torch

        b = len(chunk)
        nb = len(branches)
        sch = self.make_scheduler(sampler)
        gens = [torch.Generator().manual_seed(s) for s in seed_ints]
        shape = (3, self.size, self.size)
        x = torch.cat([torch.randn((1, *shape), generator=g) for g in gens]).to(self.device)
        rows = torch.tensor([i for i, _ in chunk])
        timesteps = sch.timesteps
        if init is None or strength >= 1.0:
            x = x * sch.init_noise_sigma
        else:
            # as diffusers' img2img: skip the first (1 - strength) of the steps, noise the
            # start image to the first kept timestep (at least one step is kept)
            order = getattr(sch, "order", 1)
            n_steps = len(sch.timesteps) // order
            skip = min(int(round(n_steps * (1.0 - strength))), n_steps - 1)
            timesteps = sch.timesteps[skip * order:]
            if hasattr(sch, "set_begin_index"):
                sch.set_begin_index(skip * order)
            x = sch.add_noise(init[rows].to(self.device), x, timesteps[:1].repeat(b))
        tk = [torch.from_numpy(np.ascontiguousarray(t))[rows].to(self.device).repeat(nb, *([1] * (t.ndim - 1)))
              for t in tokens]
        keep = torch.cat([br.unsqueeze(0).expand(b, -1) for br in branches]).to(self.device)
        accepts = set(inspect.signature(sch.step).parameters)
        kw = {k: v for k, v in step_kw.items() if k in accepts}
        if "generator" in accepts:
            kw["generator"] = gens
        scales = [guidance[g] for g in guided]
        for t in timesteps:
            xin = sch.scale_model_input(x, t).repeat(nb, 1, 1, 1)
            tt = t.to(self.device).expand(nb * b) if torch.is_tensor(t) else torch.full((nb * b,), t, device=self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.mixed_precision == "bf16"):
                pred = self.model(xin, tt, tk, keep).float()
            if guided:
                parts = pred.chunk(nb)
                unc = parts[0]
                prev = parts[:-1] if nested else [unc] * len(scales)
                pred = unc + sum(s * (p - q) for s, p, q in zip(scales, parts[1:], prev, strict=True))
            x = sch.step(pred, t, x, **kw).prev_sample
        if not torch.isfinite(x).all():
            raise C4SError(
                f"sampler {getattr(sampler, 'name', sampler)!r} produced non-finite values with the generator's "
                f"noise schedule ({self.config.beta_schedule}, {self.config.num_train_timesteps} steps); "
                "try another sampler or more steps"
            )
        return x

    # -- persistence ---------------------------------------------------------------
    def generator_json(self) -> dict[str, Any]:
        return {
            "format": "c4s-diffusion-generator",
            "format_version": 1,
            "generator": self.name,
            "config": json.loads(self.config.model_dump_json()),
            "conditioners": self.conditioner_records(),
            "unet_config": self.unet_config,
            "noise_schedule": {"class": "DDPMScheduler", **self.noise_config},
            "step": self.step,
            "versions": _versions(),
            **self.meta,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """``path/generator.json``, ``model.safetensors`` (UNet, projections, type
        embeddings, null tokens) and ``ema.safetensors``; generator.json records
        each file's sha256 (checked on load). Written to a temp folder and renamed,
        so a killed save never leaves a half checkpoint."""
        return self._save_folder(path)

    def _save_folder(self, path: str | Path, files: dict[str, bytes] | None = None) -> Path:
        from c4s_core.training import save_verified_folder

        weights = {"model.safetensors": self.model.state_dict()}
        if self.ema is not None:
            weights["ema.safetensors"] = self.ema.shadow
        return save_verified_folder(path, weights, self.generator_json(), "generator.json", files)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, check_conditioners: bool = True):
        """Load a folder written by :meth:`save_pretrained`; the conditioners are
        rebuilt from their recorded options and their identities (options and
        weights hashes) must match the recorded ones."""
        from c4s_core.cache import conditioner_identity
        from c4s_core.training import (
            folder_has,
            load_verified,
            load_verified_into,
            read_format_json,
            recorded_config,
        )

        path = Path(path)
        meta_p = path / "generator.json"
        meta = read_format_json(path, "generator.json", "c4s-diffusion-generator", "diffusion generator")
        self = cls(recorded_config(DiffusionConfig, meta, f"generator config in {meta_p}", device))
        if check_conditioners:
            for rec, c in zip(meta["conditioners"], self.conditioners, strict=True):
                now = conditioner_identity(c)
                if now != rec["identity"]:
                    raise C4SError(
                        f"{meta_p}: conditioner {rec['name']!r} differs from the one the generator was trained "
                        f"with (recorded identity {rec['identity']}, now {now}); provide the same weights/options "
                        "or load with check_conditioners=False"
                    )
        # every file is checked against the sha256 generator.json records for it
        load_verified_into(self.model, path, "model.safetensors", meta, "generator.json")
        self.model.to(self.device)
        if self.ema is not None and folder_has(path, meta, "ema.safetensors"):
            ema = load_verified(path, "ema.safetensors", meta, "generator.json")
            self.ema.shadow = {k: ema[k].float().to(self.device) for k in self.ema.shadow}
        self.step = int(meta.get("step", 0))
        self.meta = {k: meta[k] for k in ("dataset",) if k in meta}
        return self

    def _save_checkpoint(self, ckdir: Path, opt, gen, history, keep: int, world_size: int = 1) -> Path:
        from c4s_core.training import save_training_checkpoint

        state = {"step": self.step, "optimizer": opt.state_dict(), "rng": gen.get_state(), "world_size": world_size}
        return save_training_checkpoint(ckdir, self.step, self._save_folder, state, history, keep)

    def _read_training_state(self, d: Path) -> dict[str, Any]:
        """Everything a resumed ``fit`` needs from checkpoint ``d``, as plain data
        (CPU tensors): model, EMA, optimizer, RNG state, step, history. Every file
        is checked against the hashes its generator.json records."""
        from c4s_core.training import read_training_checkpoint

        ck = read_training_checkpoint(d, ["model.safetensors"], optional=["ema.safetensors"])
        trainer = ck["trainer"]
        return {"model": ck["weights"]["model.safetensors"], "ema": ck["weights"]["ema.safetensors"],
                "optimizer": trainer["optimizer"], "rng": trainer["rng"], "step": int(trainer["step"]),
                "world_size": int(trainer.get("world_size", 1)), "history": ck["history"]}

    def _apply_training_state(self, state: dict[str, Any], opt, gen) -> int:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.shadow = {k: state["ema"][k].float().to(self.device) for k in self.ema.shadow}
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        self.step = int(state["step"])
        return self.step

    def _load_training_state(self, d: Path, opt, gen) -> int:
        return self._apply_training_state(self._read_training_state(d), opt, gen)


@hookimpl
def register_generators(register):
    register(DiffusionGenerator, aliases=DiffusionGenerator.aliases)
