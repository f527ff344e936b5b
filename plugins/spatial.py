"""Built-in spatial conditioner ``photo_map``: the aligned reference photo as
extra input channels of the denoiser.

CUFS and FS2K artists trace over the photo: where the eyes, jaw line, hair and
glasses are is most of what makes a sketch *this* person. Cross-attention
tokens carry that only coarsely; concatenating the photo to the noisy sketch
(as image-to-image diffusion models such as Palette do) gives every UNet
layer the photo at its own position. The conditioner returns
``[B, channels, size, size]`` in [-1, 1] (``kind = "spatial"``, see
``register_conditioners`` in :mod:`c4s_core.hookspecs`); the generator resizes
it to its own side and replaces it by a learned constant when dropped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from c4s_core import ComponentConfig, hookimpl


class PhotoMapConfig(ComponentConfig):
    size: int = Field(64, ge=8, le=512, description="Side of the map (area-averaged; the generator resizes to its own).")
    channels: Literal["grey", "rgb"] = Field("grey", description="grey: luminance, 1 channel; rgb: 3 channels.")


class PhotoMapConditioner:
    """The aligned reference photo as a spatial condition (grey or RGB map in [-1, 1])."""

    name = "photo_map"
    Config = PhotoMapConfig
    kind = "spatial"
    uses = "photo"
    role = "identity"

    def __init__(self, config: PhotoMapConfig):
        from .conditioners import _identity_string

        self.config = config
        self.size = config.size
        self.channels = 1 if config.channels == "grey" else 3
        self.identity = _identity_string(self.name, config, "none")

    def encode(self, photos, styles=None):
        """``[B, channels, size, size]`` float32 in [-1, 1]."""
        import torch
        from PIL import Image

        from .conditioners import _check_photos, _square

        mode, s = ("L" if self.channels == 1 else "RGB"), self.size
        out = np.zeros((len(photos), self.channels, s, s), np.float32)
        for i, p in enumerate(_check_photos(photos, "conditioner 'photo_map'")):
            im = np.asarray(Image.fromarray(_square(p)).convert(mode).resize((s, s), Image.BOX), np.float32)
            out[i] = (im.reshape(s, s, self.channels).transpose(2, 0, 1)) / 127.5 - 1.0
        return torch.from_numpy(out)


@hookimpl
def register_conditioners(register):
    register(PhotoMapConditioner)
