"""Sketches drawn from a candidate's mugshot (``c4s serve --generator``): loaded on first use."""

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import C4SError, ConfigError, DataError
from .uploads import UploadError, png_data_url

__all__ = ["SketchGenerator"]


class SketchGenerator:
    """A diffusion generator folder (``c4s train-generator``), its styles, one sampling at a time."""

    def __init__(self, path: str | Path, device: str = "auto", steps: int = 50, default_style: str | None = None):
        from .. import get_registries

        self.path = Path(path)
        self.device = device
        self.steps = int(steps)
        self._model = None
        self.error: str | None = None
        self._lock = threading.Lock()
        if not (self.path / "generator.json").is_file():
            raise DataError(f"--generator {self.path}: no generator.json there; pass a folder written "
                            "by `c4s train-generator` (a checkpoint or its final folder)")
        if "diffusion" not in get_registries().generator:
            raise DataError("--generator needs the 'diffusion' generator plugin, which is not loaded "
                            "(see `c4s plugins`)")
        self.styles: list[str] = get_registries().sketch_style.names()
        if default_style is not None and default_style not in self.styles:
            raise ConfigError(f"--style {default_style!r} is not a sketch style; choose from {', '.join(self.styles)}")
        self.default_style = default_style or (
            "forensic_composite" if "forensic_composite" in self.styles else self.styles[0])

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def status(self) -> dict[str, Any]:
        return {"name": self.path.name, "loaded": self.loaded,
                "device": str(self._model.device) if self._model is not None else self.device,
                "steps": self.steps, "styles": self.styles, "default_style": self.default_style,
                "error": self.error}

    def model(self):
        with self._lock:
            if self._model is None:
                from .. import get_registries

                cls = get_registries().generator.get("diffusion").cls
                dev = None if self.device == "auto" else self.device
                try:
                    self._model = cls.from_pretrained(self.path, device=dev)
                except C4SError as err:
                    self.error = str(err)
                    raise UploadError(f"generator {self.path}: {err}", 503) from None
                self.error = None
        return self._model

    def check_style(self, style: str | None) -> str:
        style = style or self.default_style
        if style not in self.styles:
            raise UploadError(f"style {style!r} is not one of {', '.join(self.styles)}", 422)
        return style

    def draw(self, photo_jpeg: bytes, style: str, count: int, seed: int) -> dict[str, Any]:
        from PIL import Image

        from .. import ComponentSpec

        gen = self.model()
        photo = np.array(Image.open(io.BytesIO(photo_jpeg)).convert("RGB"))
        t0 = time.perf_counter()
        with self._lock:  # one sampling at a time: it is the heavy part
            out = gen.sample([photo], [style], sampler=ComponentSpec(name="ddim", options={"steps": self.steps}),
                             seed=int(seed), num_per_input=int(count))
        return {"style": style, "seed": int(seed), "steps": self.steps, "images": [png_data_url(im) for im in out],
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}
