"""Built-in samplers: thin wrappers over diffusers schedulers.

Each sampler's ``make_scheduler(train_config)`` builds its scheduler class with
``SchedulerClass.from_config(...)`` from the *training* noise schedule saved
with the generator (the ``DDPMScheduler`` config: ``num_train_timesteps``,
``beta_schedule``, ``beta_start``/``beta_end``, ``prediction_type``...),
overlays the sampler's own options and calls ``set_timesteps(steps)``. It also
accepts a bare ``num_train_timesteps`` int, like the example plugin's ``deis``.

==================  ===========================================  ====================
name                diffusers class                              own options
==================  ===========================================  ====================
``ddpm``            DDPMScheduler (ancestral, Ho et al. 2020)    variance_type
``ddim``            DDIMScheduler (Song et al. 2021)             eta (0: deterministic)
``dpmsolver++``     DPMSolverMultistepScheduler, dpmsolver++     order, karras sigmas
``unipc``           UniPCMultistepScheduler                      order
``euler``           EulerDiscreteScheduler (Karras et al. 2022)  karras sigmas
``euler_ancestral`` EulerAncestralDiscreteScheduler              --
==================  ===========================================  ====================

Use one scheduler per batch (multistep solvers keep state). Extra arguments of
``scheduler.step`` (DDIM's ``eta``) come from :meth:`step_kwargs`. diffusers is
imported inside the methods only.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

from pydantic import Field

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import ConfigError

# Keys of the training schedule a sampler takes over (when its class accepts them).
SCHEDULE_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "rescale_betas_zero_snr", "clip_sample", "clip_sample_range",
    "thresholding", "sample_max_value", "steps_offset",
)


class SamplerConfig(ComponentConfig):
    steps: int = Field(50, ge=1, le=1000, description="Number of denoising steps; 1..1000.")
    timestep_spacing: Literal["linspace", "leading", "trailing"] | None = Field(
        None, description="How the steps are spread over the training grid; none: the scheduler's default."
    )


class SchedulerSampler:
    """Base: ``scheduler_class`` names a diffusers class; ``overrides()`` its options."""

    name: ClassVar[str] = ""
    scheduler_class: ClassVar[str] = ""
    Config = SamplerConfig

    def __init__(self, config: SamplerConfig | None = None):
        self.config = config if config is not None else self.Config()

    def overrides(self) -> dict[str, Any]:
        """Scheduler config keys set by this sampler's options."""
        c = self.config
        return {} if c.timestep_spacing is None else {"timestep_spacing": c.timestep_spacing}

    def step_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for ``scheduler.step`` (e.g. DDIM's eta)."""
        return {}

    def scheduler_cls(self):
        import diffusers

        return getattr(diffusers, self.scheduler_class)

    def make_scheduler(self, train_config: dict[str, Any] | int | None = None, num_train_timesteps: int | None = None):
        """A fresh scheduler from the generator's training schedule (a DDPMScheduler
        config dict; an int means ``num_train_timesteps`` only; none: diffusers'
        defaults, 1000 linear steps), with ``set_timesteps(steps)`` called."""
        if isinstance(train_config, int):
            train_config = {"num_train_timesteps": train_config}
        cfg = dict(train_config or {})
        if num_train_timesteps is not None:
            cfg["num_train_timesteps"] = num_train_timesteps
        cls = self.scheduler_cls()
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        base = {k: v for k, v in cfg.items() if k in SCHEDULE_KEYS and k in accepted}
        base.update({k: v for k, v in self.overrides().items() if k in accepted})
        n_train = int(base.get("num_train_timesteps", 1000))
        if self.config.steps > n_train:
            raise ConfigError(
                f"sampler {self.name!r}: steps={self.config.steps} exceeds the generator's "
                f"num_train_timesteps={n_train}; use steps <= {n_train}"
            )
        scheduler = cls.from_config(base)
        scheduler.set_timesteps(self.config.steps)
        return scheduler

    def timesteps(self, train_config: dict[str, Any] | int | None = None) -> list[int]:
        """The timestep grid this sampler visits, noisiest first."""
        return [int(t) for t in self.make_scheduler(train_config).timesteps]


class DDPMSampler(SchedulerSampler):
    """DDPM ancestral sampling (Ho et al. 2020) via diffusers' DDPMScheduler."""

    name = "ddpm"
    scheduler_class = "DDPMScheduler"

    class Config(SamplerConfig):
        steps: int = Field(1000, ge=1, le=1000, description="Number of denoising steps; 1..1000 (DDPM needs many).")
        variance_type: Literal["fixed_small", "fixed_large"] = Field(
            "fixed_small", description="Posterior variance: fixed_small (beta tilde) or fixed_large (beta)."
        )

    def overrides(self):
        return {**super().overrides(), "variance_type": self.config.variance_type}


class DDIMSampler(SchedulerSampler):
    """DDIM sampling (Song et al. 2021) via diffusers' DDIMScheduler; eta=0 is deterministic."""

    name = "ddim"
    scheduler_class = "DDIMScheduler"

    class Config(SamplerConfig):
        eta: float = Field(0.0, ge=0.0, le=1.0, description="Noise weight eta in [0, 1]: 0 deterministic DDIM, 1 DDPM-like.")

    def step_kwargs(self):
        return {"eta": self.config.eta}


class DPMSolverPPSampler(SchedulerSampler):
    """DPM-Solver++ multistep (Lu et al. 2022) via diffusers' DPMSolverMultistepScheduler."""

    name = "dpmsolver++"
    aliases = ("dpmpp", "dpm_solver_pp")
    scheduler_class = "DPMSolverMultistepScheduler"

    class Config(SamplerConfig):
        steps: int = Field(20, ge=1, le=1000, description="Number of denoising steps; 1..1000.")
        order: int = Field(2, ge=1, le=3, description="Solver order (diffusers solver_order); 2 for guided sampling.")
        use_karras_sigmas: bool = Field(False, description="Karras et al. noise levels for the step grid.")

    def overrides(self):
        c = self.config
        return {**super().overrides(), "algorithm_type": "dpmsolver++", "solver_order": c.order,
                "use_karras_sigmas": c.use_karras_sigmas}


class UniPCSampler(SchedulerSampler):
    """UniPC multistep predictor-corrector (Zhao et al. 2023) via diffusers' UniPCMultistepScheduler."""

    name = "unipc"
    scheduler_class = "UniPCMultistepScheduler"

    class Config(SamplerConfig):
        steps: int = Field(20, ge=1, le=1000, description="Number of denoising steps; 1..1000.")
        order: int = Field(2, ge=1, le=3, description="Solver order (diffusers solver_order); 1..3.")

    def overrides(self):
        return {**super().overrides(), "solver_order": self.config.order}


class EulerSampler(SchedulerSampler):
    """Euler (Karras et al. 2022) via diffusers' EulerDiscreteScheduler."""

    name = "euler"
    scheduler_class = "EulerDiscreteScheduler"

    class Config(SamplerConfig):
        steps: int = Field(30, ge=1, le=1000, description="Number of denoising steps; 1..1000.")
        use_karras_sigmas: bool = Field(False, description="Karras et al. noise levels for the step grid.")

    def overrides(self):
        return {**super().overrides(), "use_karras_sigmas": self.config.use_karras_sigmas}


class EulerAncestralSampler(SchedulerSampler):
    """Euler ancestral sampling via diffusers' EulerAncestralDiscreteScheduler."""

    name = "euler_ancestral"
    aliases = ("euler_a",)
    scheduler_class = "EulerAncestralDiscreteScheduler"

    class Config(SamplerConfig):
        steps: int = Field(30, ge=1, le=1000, description="Number of denoising steps; 1..1000.")


SAMPLERS = (DDPMSampler, DDIMSampler, DPMSolverPPSampler, UniPCSampler, EulerSampler, EulerAncestralSampler)


@hookimpl
def register_samplers(register):
    for cls in SAMPLERS:
        register(cls, aliases=getattr(cls, "aliases", ()))
