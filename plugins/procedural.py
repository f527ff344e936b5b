"""Built-in generator ``procedural``: the sketch-style renderers, no training.

``sample(photos, styles)`` resizes each photo to ``size`` and draws it with the
style's procedural renderer (``pencil``, ``charcoal``, ``line_drawing``,
``xdog``, ``edges``...; prompt-only styles are refused). So that K sketches of
one photo differ, each image gets small seeded jitter (``jitter`` scales all of
it; 0 gives the plain, deterministic rendering):

- a Gaussian pre-blur of the photo (sigma up to ``0.8 * jitter`` px);
- a contrast/gamma change of the photo (gamma ``exp(N(0, 0.15 * jitter))``);
- a line-weight change of the drawing: with probability ``0.5 * jitter`` a 2x2
  grey erosion (darker, thicker strokes), else none;
- a paper tone: the drawing is mixed towards white by up to ``0.1 * jitter``.

Each image's jitter comes from its own seed, ``(seed, i, j)`` or the caller's
``seeds``, so results never depend on the batch. scipy is imported inside.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import ConfigError, DataError


class ProceduralConfig(ComponentConfig):
    size: int = Field(112, ge=16, le=1024, description="Output side in pixels (photos are resized to it first).")
    jitter: float = Field(
        1.0, ge=0.0, le=3.0, description="Strength of the seeded per-image jitter (blur, contrast, line weight); 0: none."
    )


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class ProceduralGenerator:
    """Procedural sketches: the style renderers plus small seeded jitter (no training)."""

    name = "procedural"
    aliases = ("renderer",)
    Config = ProceduralConfig
    needs_checkpoint = False

    def __init__(self, config: ProceduralConfig):
        self.config = config
        self.meta: dict[str, Any] = {}
        self._styles: dict[str, Any] = {}

    @property
    def size(self) -> int:
        return self.config.size

    def conditioner_records(self) -> list[dict[str, Any]]:
        return []

    def style(self, name: str):
        if name not in self._styles:
            from c4s_core import get_registries

            reg = get_registries().sketch_style
            entry = reg.get(name)
            if not getattr(entry.cls, "renders", False):
                rendering = [e.name for e in reg if getattr(e.cls, "renders", False)]
                raise ConfigError(f"generator 'procedural': style {name!r} has no renderer; styles that render: "
                                  f"{', '.join(rendering)}")
            self._styles[name] = reg.build(name)
        return self._styles[name]

    def render_one(self, photo: np.ndarray, style: str, seed_int: int) -> np.ndarray:
        from scipy import ndimage

        from c4s_core.data.io import resize

        j = self.config.jitter
        img = resize(np.asarray(photo, np.uint8), self.size)
        if j > 0:
            rng = np.random.default_rng(seed_int)
            blur, gamma = rng.uniform(0, 0.8 * j), float(np.exp(rng.normal(0, 0.15 * j)))
            thick, paper = rng.uniform() < 0.5 * j, rng.uniform(0, 0.1 * j)
            f = img.astype(np.float64) / 255.0
            if blur > 0.05:
                f = ndimage.gaussian_filter(f, (blur, blur, 0), mode="nearest")
            img = np.clip(np.rint(255.0 * f**gamma), 0, 255).astype(np.uint8)
        out = self.style(style).render(img)
        if j > 0:
            if thick:
                out = ndimage.grey_erosion(out, size=(2, 2, 1))
            out = np.clip(np.rint(out * (1 - paper) + 255.0 * paper), 0, 255).astype(np.uint8)
        return out

    def sample(
        self,
        photos: Sequence[np.ndarray],
        styles: Sequence[str],
        seed: int = 0,
        num_per_input: int = 1,
        seeds: Sequence[int] | None = None,
        **_ignored: Any,
    ) -> np.ndarray:
        """uint8 ``[len(photos) * num_per_input, size, size, 3]``, input-major; image
        ``j`` of input ``i`` jittered from ``(seed, i, j)`` or ``seeds[i * num + j]``."""
        if len(photos) != len(styles):
            raise DataError(f"procedural.sample: {len(photos)} photos but {len(styles)} styles")
        jobs = [(i, j) for i in range(len(photos)) for j in range(num_per_input)]
        if seeds is not None and len(seeds) != len(jobs):
            raise ConfigError(f"procedural.sample: {len(seeds)} seeds for {len(jobs)} images")
        out = np.zeros((len(jobs), self.size, self.size, 3), np.uint8)
        for a, (i, j) in enumerate(jobs):
            s = _seed_int(seed, i, j) if seeds is None else _seed_int(int(seeds[a]))
            out[a] = self.render_one(photos[i], styles[i], s)
        return out

    def generator_json(self) -> dict[str, Any]:
        import c4s_core

        return {"format": "c4s-procedural-generator", "format_version": 1, "generator": self.name,
                "config": json.loads(self.config.model_dump_json()), "versions": {"c4s": c4s_core.__version__},
                **self.meta}

    def save_pretrained(self, path: str | Path) -> Path:
        """``path/generator.json`` (no weights), so ``c4s generate`` can name it like any checkpoint."""
        from c4s_core.data.io import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path / "generator.json", json.dumps(self.generator_json(), indent=2).encode())
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None):
        from c4s_core.config import validate

        meta_p = Path(path) / "generator.json"
        if not meta_p.is_file():
            raise DataError(f"{path}: not a generator folder (no generator.json)")
        meta = json.loads(meta_p.read_text())
        if meta.get("format") != "c4s-procedural-generator":
            raise DataError(f"{meta_p}: format {meta.get('format')!r} is not c4s-procedural-generator")
        return cls(validate(ProceduralConfig, meta["config"], f"generator config in {meta_p}"))



@hookimpl
def register_generators(register):
    register(ProceduralGenerator, aliases=ProceduralGenerator.aliases)
