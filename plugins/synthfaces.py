"""Embedded synthetic faces: procedural mugshot-like photos and matching sketches.

``synthfaces`` needs no files and no downloads. Each identity is a set of face
parameters (face shape, eye/brow/nose/mouth geometry, hair style and colour,
skin tone, facial hair, glasses) drawn from ``(seed, identity index)`` alone,
so growing ``num_identities`` keeps the earlier identities as they were. Each
shot adds its own pose (roll, shift, scale, yaw, pitch), lighting and
expression, drawn from ``(seed, identity, modality, shot)``: ``ds[i]`` gives the
same pixels in any order and in any process.

Faces sit at the ArcFace 112x112 template (eyes near ``(0.34W, 0.46H)`` and
``(0.66W, 0.46H)``, nose tip near ``0.64H``, mouth corners near ``0.82H``), so
aligners cropping at that template work; every sample's ``meta["landmarks"]``
holds the five posed points in pixels.

Run ``python -m c4s_plugins.synthfaces --sheet docs/synthfaces.png`` for a
contact sheet. Only numpy, Pillow and pydantic are imported.

This module holds the dataset, its config and the contact sheet; the faces are
made beside it: ``_synthfaces_identity`` (identity and shot parameters),
``_synthfaces_geometry`` (the posed face), ``_synthfaces_photo`` and
``_synthfaces_sketch`` (the two renderers).
"""


from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator, model_validator

from c4s_core import ComponentConfig, hookimpl
from c4s_core.data.datasets import Dataset, Sample, SampleRef

from ._synthfaces_geometry import TEMPLATE, _Face
from ._synthfaces_identity import _MODALITY_CODE, _SALT_SHOT, _identity, _shot
from ._synthfaces_photo import _render_photo
from ._synthfaces_sketch import _render_sketch

__all__ = ["SynthFaces", "SynthFacesConfig", "SKETCH_STYLES", "TEMPLATE", "contact_sheet", "main"]

# Sketch renderers, by style label.
SKETCH_STYLES = ("line", "pencil", "charcoal")


class SynthFacesConfig(ComponentConfig):
    num_identities: int = Field(100, ge=1, le=1_000_000, description="Number of distinct identities (1 to 1,000,000).")
    images_per_identity: int = Field(2, ge=0, le=1000, description="Photos per identity (0 to 1000).")
    sketches_per_identity: int = Field(2, ge=0, le=1000, description="Sketches per identity (0 to 1000).")
    size: int = Field(112, ge=32, le=512, description="Side of the square images in pixels (32 to 512).")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed; identities and shots derive from it alone.")
    prefix: str = Field(
        "sf", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,15}$",
        description="Identity name prefix; give sets with other seeds their own (e.g. distractors) so names stay unique.",
    )
    styles: list[str] = Field(
        default_factory=lambda: ["line"],
        description="Sketch style labels, assigned to sketches in turn: " + ", ".join(SKETCH_STYLES) + ".",
    )
    jitter: float = Field(
        1.0,
        ge=0.0,
        le=3.0,
        description="Strength of per-shot variation (pose, lighting, expression, sketch artist error); "
        "0 renders every shot of an identity alike (0 to 3).",
    )

    @field_validator("styles")
    @classmethod
    def _known_styles(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"give at least one sketch style, from: {', '.join(SKETCH_STYLES)}")
        bad = [s for s in v if s not in SKETCH_STYLES]
        if bad:
            raise ValueError(f"unknown sketch style(s) {bad}; allowed: {', '.join(SKETCH_STYLES)}")
        return v

    @model_validator(mode="after")
    def _some_images(self) -> SynthFacesConfig:
        if self.images_per_identity + self.sketches_per_identity == 0:
            raise ValueError("images_per_identity and sketches_per_identity are both 0: nothing to render")
        return self


# -- the dataset ----------------------------------------------------------------------


class _Refs(Sequence):
    """Labels without pixels, computed on access (no per-sample list is built)."""

    def __init__(self, ds: SynthFaces):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.ds.ref(i)


class SynthFaces(Dataset):
    """Procedural synthetic faces: mugshot-like photos and matching sketches, no files needed."""

    name = "synthfaces"
    Config = SynthFacesConfig

    def __init__(self, config: SynthFacesConfig | None = None):
        self.config = config or SynthFacesConfig()
        c = self.config
        self.per_identity = c.images_per_identity + c.sketches_per_identity

    # labels ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.config.num_identities * self.per_identity

    @property
    def refs(self) -> _Refs:  # type: ignore[override]
        return _Refs(self)

    def identity_name(self, k: int) -> str:
        return f"{self.config.prefix}{k:05d}"

    def identities(self) -> list[str]:
        return [self.identity_name(k) for k in range(self.config.num_identities)]

    def locate(self, i: int) -> tuple[int, Literal["photo", "sketch"], int, str | None]:
        """Index -> (identity index, modality, shot within modality, style)."""
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"synthfaces index {i} out of range for {n} samples")
        k, j = divmod(i, self.per_identity)
        if j < self.config.images_per_identity:
            return k, "photo", j, None
        j -= self.config.images_per_identity
        return k, "sketch", j, self.config.styles[j % len(self.config.styles)]

    def ref(self, i: int) -> SampleRef:
        k, modality, j, style = self.locate(i)
        return SampleRef(self._path(k, modality, j), self.identity_name(k), modality, style)

    def labels(self) -> list[tuple[str, str, str | None]]:
        """(identity, modality, style) of every sample, without rendering."""
        c = self.config
        one = [("photo", None)] * c.images_per_identity + [
            ("sketch", c.styles[j % len(c.styles)]) for j in range(c.sketches_per_identity)
        ]
        return [(self.identity_name(k), m, s) for k in range(c.num_identities) for m, s in one]

    def _path(self, k: int, modality: str, j: int) -> str:
        return f"synthfaces://{self.config.seed}/{self.identity_name(k)}/{modality}_{j}"

    # pixels ---------------------------------------------------------------------------
    def render(self, k: int, modality: Literal["photo", "sketch"], j: int, style: str | None = None):
        """Render shot ``j`` of ``modality`` for identity ``k``: (uint8 HxWx3, landmarks 5x2)."""
        c = self.config
        p = _identity(c.seed, k)
        sh = _shot(c.seed, k, modality, j, c.jitter)
        f = _Face(p, sh, 2 * c.size)
        rng = np.random.default_rng([_SALT_SHOT + 1, c.seed, k, _MODALITY_CODE[modality], j])
        if modality == "photo":
            img = _render_photo(f, c.size, rng)
        else:
            img = _render_sketch(f, c.size, style or c.styles[j % len(c.styles)], rng)
        return img, f.landmarks() / 2

    def __getitem__(self, i: int) -> Sample:
        k, modality, j, style = self.locate(i)
        img, lm = self.render(k, modality, j, style)
        meta = {
            "seed": self.config.seed,
            "index": int(i) % len(self),
            "identity_index": k,
            "shot": j,
            "landmarks": lm.round(2).tolist(),
        }
        return Sample(img, self.identity_name(k), modality, style, None, meta)


@hookimpl
def register_datasets(register):
    register(SynthFaces)


# -- contact sheet ---------------------------------------------------------------------


def contact_sheet(ds: SynthFaces, n_identities: int = 8, pad: int = 4) -> np.ndarray:
    """One row per identity (its photos, then its sketches) as a uint8 RGB image."""
    n = min(n_identities, ds.config.num_identities)
    s, cols = ds.config.size, ds.per_identity
    sheet = np.full((pad + n * (s + pad), pad + cols * (s + pad), 3), 255, np.uint8)
    for k in range(n):
        for j in range(cols):
            y, x = pad + k * (s + pad), pad + j * (s + pad)
            sheet[y : y + s, x : x + s] = ds[k * cols + j].image
    return sheet


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m c4s_plugins.synthfaces", description=main.__doc__)
    ap.add_argument("--sheet", required=True, help="PNG file to write the contact sheet to.")
    ap.add_argument("--identities", type=int, default=8, help="Rows (identities) on the sheet.")
    ap.add_argument("--photos", type=int, default=2, help="Photos per identity.")
    ap.add_argument("--styles", default="line,pencil,charcoal", help="Comma-separated sketch styles, one sketch each.")
    ap.add_argument("--size", type=int, default=112, help="Image side in pixels.")
    ap.add_argument("--seed", type=int, default=0, help="Dataset seed.")
    a = ap.parse_args(argv)
    styles = [s.strip() for s in a.styles.split(",") if s.strip()]
    from c4s_core.config import validate

    cfg = validate(SynthFacesConfig, {
        "num_identities": a.identities, "images_per_identity": a.photos, "sketches_per_identity": len(styles),
        "styles": styles, "size": a.size, "seed": a.seed,
    }, "synthfaces sheet options")
    Image.fromarray(contact_sheet(SynthFaces(cfg), a.identities)).save(a.sheet)
    print(a.sheet)


main.__doc__ = "Write a contact sheet of synthfaces identities (photos, then sketches) to a PNG."

if __name__ == "__main__":
    main()
