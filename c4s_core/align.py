"""Face alignment: templates, the similarity-transform helpers, the aligner base.

Every face model in c4s expects an aligned face. An aligner (component kind
``aligner``, hook ``register_aligners``) maps each image to a crop at a
*template*: named reference points (eye centres, nose, mouth corners) at a
reference size, scaled to the requested output size. The default is the
5-point ArcFace template at 112x112 that AdaFace/IR backbones expect.

Point names are in image terms: ``left_eye`` is the eye on the left of the
image (the subject's right eye). Coordinates are ``(x, y)`` pixels with pixel
centres at integers.

:class:`Aligner` does the shared work; a detecting aligner implements only
``detect(image) -> Detection | None``. When no face is found, the ``on_no_face``
policy decides:

``fallback``  crop ``fallback_box`` (fractions of the image) like the ``center``
              aligner; status ``"fallback"``.
``skip``      no crop; status ``"skipped"``; callers leave the image out.
``error``     raise :class:`c4s_core.errors.DataError` naming the image.

Crops can be cached on disk (``cache_dir``): one ``.npz`` per image, keyed by
the SHA-256 of the pixels, the aligner name and its config (minus
``cache_dir``), so a changed option never returns a stale crop.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from .config import ComponentConfig
from .errors import ConfigError, DataError

__all__ = [
    "TEMPLATES",
    "Template",
    "AlignResult",
    "Detection",
    "AlignerConfig",
    "DetectingAlignerConfig",
    "Aligner",
    "template_points",
    "estimate_similarity",
    "warp_affine",
    "box_transform",
    "perturb_image",
    "summarize",
]

Status = Literal["ok", "fallback", "skipped"]


@dataclass(frozen=True)
class Template:
    """Named reference points at a square reference size (pixels)."""

    name: str
    size: int
    points: dict[str, tuple[float, float]]
    description: str = ""


# ArcFace / insightface 5-point template at 112x112 (arcface_torch, AdaFace).
# ``nose_base`` (the subnasale, dlib's 5th point) is not an ArcFace point: it is
# where dlib's 5-point predictor puts it after eye-aligning the 268 CUFS
# training photos onto this template (mean; std about 2 px), so landmark sets
# without mouth corners can still use three points.
ARCFACE = Template(
    "arcface",
    112,
    {
        "left_eye": (38.2946, 51.6963),
        "right_eye": (73.5318, 51.5014),
        "nose": (56.0252, 71.7366),
        "mouth_left": (41.5493, 92.3655),
        "mouth_right": (70.7299, 92.2041),
        "nose_base": (56.03, 78.2),
    },
    "insightface/ArcFace 5-point template, 112x112",
)

# dlib's 5-point face chip (dlib.get_face_chip, 150 px, padding 0.25), the crop
# dlib's ResNet descriptor was trained on. Eyes and nose base: where dlib puts
# them, measured on 120 CUFS/FS2K photos by pushing coordinate images through
# get_face_chip (std under 1 px for the eyes, 2 px for the nose base); the other
# points: ArcFace's, carried over by the similarity that fits those three.
DLIB_CHIP = Template(
    "dlib_chip",
    150,
    {
        "left_eye": (47.32, 47.41),
        "right_eye": (100.68, 47.40),
        "nose": (74.05, 77.39),
        "mouth_left": (52.23, 108.19),
        "mouth_right": (95.95, 108.15),
        "nose_base": (74.05, 86.70),
    },
    "dlib's 5-point face chip (get_face_chip, padding 0.25), 150x150: dlib_r29's training crop",
)

TEMPLATES: dict[str, Template] = {ARCFACE.name: ARCFACE, DLIB_CHIP.name: DLIB_CHIP}


def template_points(template: str | Template, size: int) -> dict[str, np.ndarray]:
    """The template's points scaled to a ``size`` x ``size`` crop."""
    t = TEMPLATES[template] if isinstance(template, str) else template
    s = size / t.size
    return {k: np.array(v, dtype=np.float64) * s for k, v in t.points.items()}


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping ``src``
    points onto ``dst`` (both ``(N, 2)``, N >= 2); returns a 3x3 matrix.

    Uses :class:`skimage.transform.SimilarityTransform` (Umeyama's method).
    """
    from skimage.transform import SimilarityTransform

    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise DataError(f"similarity needs >= 2 matching point pairs, got {len(src)} and {len(dst)}")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tf = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tf)
    else:  # pragma: no cover - older scikit-image
        tf = SimilarityTransform()
        ok = tf.estimate(src, dst)
    if not ok or not np.all(np.isfinite(tf.params)):
        raise DataError(f"cannot estimate a similarity transform from points {src.tolist()}")
    return np.array(tf.params, dtype=np.float64)


def warp_affine(
    image: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int], border: str = "edge"
) -> np.ndarray:
    """Warp uint8 ``image`` by the 3x3 ``matrix`` (source -> output pixels) into an
    output of ``size`` (int or (H, W)); bilinear; ``border`` is a numpy pad mode
    ("edge", "constant" (black), "reflect", "symmetric", "wrap")."""
    from skimage.transform import AffineTransform, warp

    h, w = (size, size) if isinstance(size, int) else size
    inv = AffineTransform(matrix=np.linalg.inv(matrix))
    out = warp(image, inv, output_shape=(h, w), order=1, mode=border, cval=0.0, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def box_transform(box: Sequence[float], size: int) -> np.ndarray:
    """3x3 matrix that maps the pixel box ``(x0, y0, x1, y1)`` (edges, exclusive
    end) onto a ``size`` x ``size`` output (crop and resize)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    # pixel centres: out u + 0.5 = (x + 0.5 - x0) * sx
    return np.array(
        [[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]]
    )


def fraction_box(image: np.ndarray, frac: Sequence[float]) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    left, top, right, bottom = frac
    return (left * w, top * h, right * w, bottom * h)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ matrix[:2, :2].T + matrix[:2, 2]


def perturb_image(
    image: np.ndarray,
    rng: np.random.Generator,
    shift: float = 0.05,
    scale: float = 0.05,
    rotate: float = 5.0,
    border: str = "edge",
) -> np.ndarray:
    """A random similarity about the image centre: shift up to ``shift`` x width
    (and height), scale in ``[1 - scale, 1 + scale]``, rotation up to ``rotate``
    degrees; the output keeps the input size."""
    h, w = image.shape[:2]
    dx, dy = rng.uniform(-shift, shift, size=2) * (w, h)
    s = rng.uniform(1.0 - scale, 1.0 + scale)
    a = np.deg2rad(rng.uniform(-rotate, rotate))
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    c, si = s * np.cos(a), s * np.sin(a)
    m = np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = (cx + dx, cy + dy) - m[:2, :2] @ (cx, cy)
    return warp_affine(image, m, (h, w), border=border)


@dataclass
class Detection:
    """What a detector found: named landmarks for the template, the raw
    landmarks in the detector's own order, the face box and its score."""

    points: dict[str, tuple[float, float]]
    landmarks: np.ndarray  # (K, 2) source pixels, detector order
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float | None = None


@dataclass
class AlignResult:
    """One aligned image. ``image`` is None when ``status == "skipped"``.

    ``landmarks`` are in source-image pixels (the detector's own points; for
    crops without detection, the template points mapped back), ``box`` is the
    face box (or the crop box) in source pixels, ``transform`` maps source
    pixels to crop pixels (3x3).
    """

    image: np.ndarray | None
    status: Status
    landmarks: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    score: float | None = None
    transform: np.ndarray | None = None
    message: str = ""
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """JSON-able description (no pixels)."""
        return {
            "status": self.status,
            "landmarks": None if self.landmarks is None else np.round(self.landmarks, 2).tolist(),
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "score": None if self.score is None else round(float(self.score), 4),
            "transform": None if self.transform is None else np.round(self.transform, 6).tolist(),
            "message": self.message,
        }


FracBox = tuple[float, float, float, float]
# Where the ArcFace template's face sits in the CUFS layout (200x250, pre-aligned):
# eye centres of the 268 training photos averaged, mapped to the template.
CUFS_BOX: FracBox = (0.10, 0.213, 0.90, 0.851)


def check_box(v: FracBox) -> FracBox:
    left, top, right, bottom = v
    if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
        raise ValueError(f"box must be fractions (left, top, right, bottom) with 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got {v}")
    return v


class AlignerConfig(ComponentConfig):
    size: int = Field(112, ge=16, le=1024, description="Output crop side in pixels (square).")
    template: str = Field("arcface", description=f"Template the crop is aligned to: {', '.join(TEMPLATES)}.")
    border: Literal["edge", "constant", "reflect", "symmetric"] = Field(
        "edge", description="How pixels outside the image are filled: edge replicate, constant (black), reflect."
    )
    cache_dir: Path | None = Field(
        None, description="Folder to cache crops in (keyed by image hash + aligner config); none: no cache."
    )

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        if v not in TEMPLATES:
            raise ValueError(f"unknown template {v!r}; known: {', '.join(TEMPLATES)}")
        return v


class DetectingAlignerConfig(AlignerConfig):
    on_no_face: Literal["fallback", "skip", "error"] = Field(
        "fallback",
        description="No face found: fallback = centre crop at fallback_box (status 'fallback'), "
        "skip = leave the image out (status 'skipped'), error = stop with an error naming the image.",
    )
    fallback_box: FracBox = Field(
        CUFS_BOX, description="Crop for the fallback, as fractions (left, top, right, bottom) of the image."
    )

    @field_validator("fallback_box")
    @classmethod
    def _box(cls, v: FracBox) -> FracBox:
        return check_box(v)


class Aligner:
    """Base of aligners: ``align(images, names=None) -> list[AlignResult]``.

    Subclasses set ``name`` and ``Config`` and implement either
    ``detect(image) -> Detection | None`` (detecting aligners) or override
    ``align_one(image, name)``.
    """

    name = "base"
    Config = AlignerConfig

    def __init__(self, config: AlignerConfig):
        self.config = config

    # -- identity of this aligner, for caches and manifests --------------------
    def fingerprint(self) -> str:
        cfg = json.loads(self.config.model_dump_json(exclude={"cache_dir"}))
        return json.dumps({"aligner": self.name, "config": cfg, "version": 1}, sort_keys=True)

    def cache_key(self, image: np.ndarray) -> str:
        h = hashlib.sha256(self.fingerprint().encode())
        h.update(str((image.shape, str(image.dtype))).encode())
        h.update(np.ascontiguousarray(image).tobytes())
        return h.hexdigest()

    # -- the contract -----------------------------------------------------------
    def align(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[AlignResult]:
        """Align a batch; ``names`` (paths) are used in error messages."""
        out = []
        for i, image in enumerate(images):
            label = names[i] if names is not None else f"image #{i}"
            _check_image(image, label)
            res = self._cached(image) if self.config.cache_dir else None
            if res is None:
                res = self.align_one(image, label)
                if self.config.cache_dir:
                    self._store(image, res)
            out.append(res)
        return out

    def align_one(self, image: np.ndarray, name: str) -> AlignResult:
        det = self.detect(image)
        if det is None:
            return self.no_face(image, name)
        return self.from_detection(image, det)

    def detect(self, image: np.ndarray) -> Detection | None:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement detect() or align_one()")

    # -- shared steps -----------------------------------------------------------
    def from_detection(self, image: np.ndarray, det: Detection) -> AlignResult:
        ref = template_points(self.config.template, self.config.size)
        names = [k for k in det.points if k in ref]
        if len(names) < 2:
            raise ConfigError(
                f"aligner {self.name!r}: its points {sorted(det.points)} share fewer than two with "
                f"template {self.config.template!r} ({sorted(ref)})"
            )
        m = estimate_similarity([det.points[k] for k in names], [ref[k] for k in names])
        crop = warp_affine(image, m, self.config.size, self.config.border)
        return AlignResult(crop, "ok", np.asarray(det.landmarks, float), det.box, det.score, m)

    def crop_box(self, image: np.ndarray, frac: FracBox, status: Status, message: str = "") -> AlignResult:
        box = fraction_box(image, frac)
        m = box_transform(box, self.config.size)
        crop = warp_affine(image, m, self.config.size, self.config.border)
        ref = template_points(self.config.template, self.config.size)
        inv = np.linalg.inv(m)
        pts = apply_matrix(inv, np.array([ref[k] for k in ref if k != "nose_base"]))
        return AlignResult(crop, status, pts, box, None, m, message)

    def no_face(self, image: np.ndarray, name: str) -> AlignResult:
        policy = getattr(self.config, "on_no_face", "fallback")
        msg = f"no face found in {name}"
        if policy == "error":
            raise DataError(
                f"{msg} (aligner {self.name!r}); set on_no_face=fallback to centre-crop "
                "such images or on_no_face=skip to leave them out"
            )
        if policy == "skip":
            return AlignResult(None, "skipped", message=msg)
        return self.crop_box(image, self.config.fallback_box, "fallback", msg)

    # -- cache ------------------------------------------------------------------
    def _cache_path(self, image: np.ndarray) -> Path:
        key = self.cache_key(image)
        return Path(self.config.cache_dir) / key[:2] / f"{key}.npz"

    def _cached(self, image: np.ndarray) -> AlignResult | None:
        p = self._cache_path(image)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                crop = z["image"] if "image" in z.files else None
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is recomputed
        return AlignResult(
            crop,
            meta["status"],
            None if meta["landmarks"] is None else np.array(meta["landmarks"]),
            None if meta["box"] is None else tuple(meta["box"]),
            meta["score"],
            None if meta["transform"] is None else np.array(meta["transform"]),
            meta["message"],
            cached=True,
        )

    def _store(self, image: np.ndarray, res: AlignResult) -> None:
        from .data.io import atomic_write_bytes

        arrays = {"meta": np.array(json.dumps(res.to_record()))}
        if res.image is not None:
            arrays["image"] = res.image
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self._cache_path(image), buf.getvalue())


def _check_image(image: Any, label: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"{label}: aligners take uint8 HxWx3 RGB images, got {desc}")


def summarize(results: Sequence[AlignResult]) -> dict[str, int]:
    """Counts for a run's summary: ok, fallback, skipped, no_face (= fallback + skipped)."""
    c = {"ok": 0, "fallback": 0, "skipped": 0}
    for r in results:
        c[r.status] += 1
    c["no_face"] = c["fallback"] + c["skipped"]
    return c
