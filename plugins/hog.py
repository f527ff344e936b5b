"""Built-in training-free matcher baseline: ``hog`` (histogram of oriented gradients)."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from c4s_core import ComponentConfig, hookimpl


class HogConfig(ComponentConfig):
    size: int = Field(112, ge=16, le=512, description="Images are resized to size x size (grayscale) first.")
    orientations: int = Field(9, ge=2, le=36, description="Gradient orientation bins.")
    pixels_per_cell: int = Field(8, ge=2, le=64, description="Cell side in pixels.")
    cells_per_block: int = Field(2, ge=1, le=8, description="Block side in cells (block normalisation).")
    flip_fusion: bool = Field(False, description="Sum the descriptors of the face and its mirror image "
                              "(as the torch backbones' option of that name).")

    @model_validator(mode="after")
    def _fits(self):
        if self.size // self.pixels_per_cell < self.cells_per_block:
            raise ValueError(
                f"size {self.size} holds {self.size // self.pixels_per_cell} cells of "
                f"{self.pixels_per_cell} px, fewer than cells_per_block={self.cells_per_block}"
            )
        return self


class HogBackbone:
    """HOG descriptor of the grayscale face (scikit-image), L2-normalised: no training."""

    name = "hog"
    Config = HogConfig
    color_order = "RGB"

    def __init__(self, config: HogConfig):
        self.config = config
        self.input_size = (config.size, config.size)
        cells = config.size // config.pixels_per_cell
        blocks = cells - config.cells_per_block + 1
        self.embedding_dim = blocks * blocks * config.cells_per_block**2 * config.orientations

    def embed(self, images) -> np.ndarray:
        from skimage.feature import hog

        from c4s_core.data.io import resize

        c = self.config
        out = np.zeros((len(images), self.embedding_dim), np.float32)
        for i, im in enumerate(images):
            im = resize(np.asarray(im, np.uint8), c.size)
            gray = im.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            f = sum(hog(view, orientations=c.orientations, pixels_per_cell=(c.pixels_per_cell,) * 2,
                        cells_per_block=(c.cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)
                    for view in ([gray, gray[:, ::-1]] if c.flip_fusion else [gray]))
            out[i] = f / max(float(np.linalg.norm(f)), 1e-12)
        return out


@hookimpl
def register_backbones(register):
    register(HogBackbone)
