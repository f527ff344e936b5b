"""Built-in aligner without weights: ``center``, a fixed crop and resize.

The detecting ``dlib`` aligner lives in the ``dlib`` plugin
(``c4s_plugins.dlib_models``), so blocking that plugin removes every dlib part.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from c4s_core import hookimpl
from c4s_core.align import CUFS_BOX, Aligner, AlignerConfig, AlignResult, FracBox, check_box


class CenterConfig(AlignerConfig):
    box: FracBox = Field(
        CUFS_BOX,
        description="Crop as fractions (left, top, right, bottom) of the image, resized to size x size. "
        "The default puts CUFS-style 200x250 pre-aligned faces on the ArcFace template; "
        "(0, 0, 1, 1) resizes the whole image.",
    )

    @field_validator("box")
    @classmethod
    def _box(cls, v: FracBox) -> FracBox:
        return check_box(v)


class CenterAligner(Aligner):
    """Fixed crop and resize, no detection: for pre-aligned sets such as CUFS."""

    name = "center"
    Config = CenterConfig

    def align_one(self, image: np.ndarray, name: str) -> AlignResult:
        return self.crop_box(image, self.config.box, "ok")


@hookimpl
def register_aligners(register):
    register(CenterAligner, aliases=("centre", "crop"))
