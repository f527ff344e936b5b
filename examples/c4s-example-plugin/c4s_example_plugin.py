"""c4s-example-plugin: a third-party c4s plugin, written as a tutorial.

It registers one component of two kinds and one command:

* sketch style ``ballpoint`` (alias ``biro``): prompts, plus a procedural
  renderer drawing blue-ink outlines and diagonal hatching;
* sampler ``deis``: DEIS multistep sampling through ``diffusers.DEISMultistepScheduler``;
* command ``c4s example-hello``: lists what this plugin registered.

c4s finds the module through the ``c4s`` entry point in ``pyproject.toml``.
Keep the module light: numpy, pydantic and c4s_core at the top; scipy,
diffusers and torch are imported inside the methods that need them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

import c4s_core
from c4s_core.errors import ConfigError
from c4s_core.styles import SketchStyle

# -- a sketch style ----------------------------------------------------------------


class Ballpoint(SketchStyle):
    """Ballpoint pen sketch: thin ink outlines and diagonal hatching in the shadows."""

    name = "ballpoint"
    prompts = (
        "a ballpoint pen sketch of a face",
        "a blue biro drawing of a face with cross-hatched shading",
    )
    renders = True

    class Config(c4s_core.ComponentConfig):
        sigma: float = Field(
            1.0, gt=0, le=10, description="Std. dev. (pixels) of the outline detector's Gaussian; (0, 10]."
        )
        spacing: int = Field(
            5, ge=2, le=32, description="Distance between hatching lines in pixels; 2..32."
        )
        shade: float = Field(
            0.45, ge=0, le=1, description="Luminance below which a region is hatched; [0, 1]. 0 turns hatching off."
        )
        ink: Literal["blue", "black"] = Field("blue", description="Ink colour.")

    def draw(self, gray: np.ndarray) -> np.ndarray:
        # gray: float HxW in [0, 1]; return float HxWx3 in [0, 1] (1 = white paper).
        from scipy import ndimage

        c = self.config
        # Outlines: where the image is darker than its blurred surround (a DoG).
        dog = ndimage.gaussian_filter(gray, c.sigma, mode="nearest") - ndimage.gaussian_filter(
            gray, 2.0 * c.sigma, mode="nearest"
        )
        outline = np.clip(-dog * 25.0, 0.0, 1.0)
        # Hatching: diagonal lines, only where the photo is dark.
        yy, xx = np.indices(gray.shape)
        lines = ((xx + yy) % c.spacing) == 0
        hatch = lines & (gray < c.shade)
        ink = np.maximum(outline, hatch * 0.8)
        colour = np.array([0.1, 0.15, 0.55]) if c.ink == "blue" else np.zeros(3)
        # Paper is white; ink pulls each pixel towards the ink colour.
        return 1.0 - ink[:, :, None] * (1.0 - colour)


# -- a sampler ---------------------------------------------------------------------


class DEIS:
    """DEIS multistep sampler (Zhang & Chen 2022) via diffusers' DEISMultistepScheduler."""

    name = "deis"

    class Config(c4s_core.ComponentConfig):
        steps: int = Field(20, ge=1, le=1000, description="Number of denoising steps; 1..1000.")
        order: int = Field(
            2, ge=1, le=3, description="DEIS solver order (diffusers `solver_order`); 1..3. 2 for guided sampling, 3 unguided."
        )
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
            "linear", description="Noise schedule; must match the one the generator was trained with."
        )
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = Field(
            "epsilon", description="What the model predicts; must match the generator."
        )
        timestep_spacing: Literal["linspace", "leading", "trailing"] = Field(
            "linspace", description="How the `steps` timesteps are spread over the training grid."
        )

    def __init__(self, config: Config | None = None):
        self.config = config if config is not None else self.Config()

    def make_scheduler(self, num_train_timesteps: int = 1000):
        """A fresh ``diffusers.DEISMultistepScheduler`` for this config, with
        ``set_timesteps(config.steps)`` already called (timesteps on the CPU).

        Loop over ``scheduler.timesteps`` calling ``scheduler.step(...)``. To
        put the timesteps on another device call
        ``scheduler.set_timesteps(config.steps, device=...)`` again, which also
        resets the multistep solver's state. Use a new scheduler per batch.
        """
        if self.config.steps > num_train_timesteps:
            raise ConfigError(
                f"sampler 'deis': steps={self.config.steps} exceeds the generator's "
                f"num_train_timesteps={num_train_timesteps}; use steps <= {num_train_timesteps}"
            )
        from diffusers import DEISMultistepScheduler

        scheduler = DEISMultistepScheduler(
            num_train_timesteps=num_train_timesteps,
            solver_order=self.config.order,
            beta_schedule=self.config.beta_schedule,
            prediction_type=self.config.prediction_type,
            timestep_spacing=self.config.timestep_spacing,
        )
        scheduler.set_timesteps(self.config.steps)
        return scheduler

    def timesteps(self, num_train_timesteps: int = 1000) -> list[int]:
        """The timestep grid this sampler visits, largest (noisiest) first."""
        return [int(t) for t in self.make_scheduler(num_train_timesteps).timesteps]


# -- the hooks: this is all c4s calls ----------------------------------------------


@c4s_core.hookimpl
def register_sketch_styles(register):
    register(Ballpoint, aliases=("biro",))


@c4s_core.hookimpl
def register_samplers(register):
    register(DEIS)


@c4s_core.hookimpl
def register_commands(cli):
    import click

    @cli.command(name="example-hello")
    @click.option("--name", default="world", show_default=True, help="Who to greet.")
    def example_hello(name):
        """Say hello and list what c4s-example-plugin registered."""
        regs = c4s_core.get_registries()
        click.echo(f"Hello, {name}, from c4s-example-plugin.")
        for kind in ("sketch_style", "sampler"):
            for entry in regs[kind]:
                if entry.origin.plugin == "example":
                    click.echo(f"  {kind} {entry.name}: {entry.description}")
