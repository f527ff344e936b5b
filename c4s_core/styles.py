"""Base class for sketch styles (the ``sketch_style`` kind).

A sketch style is a name, one-line ``description``, text ``prompts`` that
describe the style to a CLIP text encoder, and optionally a procedural
renderer ``render(photo: uint8 HxWx3 RGB) -> uint8 HxWx3 RGB``::

    class Ballpoint(c4s_core.styles.SketchStyle):
        \"\"\"Blue ballpoint pen hatching.\"\"\"

        name = "ballpoint"
        prompts = ("a blue ballpoint pen sketch of a face",)
        renders = True

        class Config(c4s_core.ComponentConfig):
            sigma: float = Field(1.0, gt=0, le=20, description="...")

        def draw(self, gray):          # float HxW in [0, 1], 1 = white paper
            return ...                 # float HxW (or HxWx3) in [0, 1]

:meth:`SketchStyle.render` checks the photo, converts it to luminance, calls
:meth:`draw` and turns the result back into uint8 RGB, so a style only writes
the maths. Styles without a renderer keep ``renders = False``; their
``render`` raises :class:`~c4s_core.errors.C4SError` naming styles that do render.
No heavy imports here: renderers import scipy/skimage inside ``draw``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .config import ComponentConfig
from .errors import C4SError, DataError

__all__ = ["SketchStyle", "as_rgb_uint8", "luminance", "style_grid"]


class SketchStyle:
    """Base of every sketch style: prompts, and an optional procedural renderer."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    prompts: ClassVar[tuple[str, ...]] = ()
    renders: ClassVar[bool] = False

    class Config(ComponentConfig):
        """A prompt-only style has no options."""

    def __init__(self, config: ComponentConfig | None = None):
        self.config = config if config is not None else self.Config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def render(self, photo: np.ndarray) -> np.ndarray:
        """Draw ``photo`` (uint8 HxWx3 RGB; HxW grey and HxWx4 also accepted) in
        this style; returns uint8 HxWx3 RGB of the same height and width.
        Deterministic: the same photo and config give the same pixels."""
        if not self.renders:
            raise C4SError(
                f"sketch style {self.name!r} has no procedural renderer (prompt-only: "
                "use it to condition the diffusion generator). Styles that render: "
                f"{', '.join(_rendering_style_names()) or 'none registered'}."
            )
        gray = luminance(photo)
        out = self.draw(gray)
        return as_rgb_uint8(out, gray.shape)

    def draw(self, gray: np.ndarray) -> np.ndarray:
        """Subclasses that render: float HxW luminance in [0, 1] -> float HxW or
        HxWx3 in [0, 1], where 1 is white paper."""
        raise NotImplementedError(f"{type(self).__qualname__} sets renders=True but has no draw()")


def luminance(photo: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB (or HxW, HxWx1, HxWx4) -> float64 HxW in [0, 1], ITU-R 601 weights."""
    arr = np.asarray(photo)
    if arr.dtype != np.uint8:
        raise DataError(f"render expects a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        gray = arr.astype(np.float64)
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[:, :, :3].astype(np.float64)
        gray = rgb @ np.array([0.299, 0.587, 0.114])
    else:
        raise DataError(f"render expects an HxWx3 RGB image, got shape {arr.shape}")
    if gray.shape[0] < 1 or gray.shape[1] < 1:
        raise DataError(f"render got an empty image of shape {arr.shape}")
    return gray / 255.0


def as_rgb_uint8(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float HxW or HxWx3 in [0, 1] -> uint8 HxWx3, checking the size is kept."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[:2] != tuple(shape) or img.ndim != 3 or img.shape[2] != 3:
        raise C4SError(f"renderer returned shape {img.shape}, expected {tuple(shape)} (+3 channels)")
    img = np.nan_to_num(img, nan=1.0)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _rendering_style_names() -> list[str]:
    try:
        from . import get_registries

        return [e.name for e in get_registries().sketch_style if getattr(e.cls, "renders", False)]
    except Exception:  # listing is a courtesy in an error message; never mask it
        return []


def style_grid(
    photos: list[np.ndarray],
    styles: list[SketchStyle],
    *,
    size: int = 160,
    labels: bool = True,
) -> np.ndarray:
    """One row per photo: the photo, then each style's rendering; uint8 RGB grid.

    Photos are resized to ``size`` x ``size``; a label row names each column.
    """
    from PIL import Image, ImageDraw

    label_h = 18 if labels else 0
    pad = 4
    cols = 1 + len(styles)
    w = cols * size + (cols + 1) * pad
    h = label_h + len(photos) * size + (len(photos) + 1) * pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    names = ["photo"] + [s.name for s in styles]
    if labels:
        for c, n in enumerate(names):
            draw.text((pad + c * (size + pad) + 2, 3), n, fill=(0, 0, 0))
    for r, photo in enumerate(photos):
        small = np.asarray(Image.fromarray(photo).convert("RGB").resize((size, size), Image.BICUBIC))
        tiles = [small] + [s.render(small) for s in styles]
        for c, tile in enumerate(tiles):
            x = pad + c * (size + pad)
            y = label_h + pad + r * (size + pad)
            canvas.paste(Image.fromarray(tile), (x, y))
    return np.asarray(canvas)
