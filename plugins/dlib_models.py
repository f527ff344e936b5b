"""dlib's pretrained face models as c4s components, with no download.

Needs the extra ``clip4sketch[dlib]`` (``dlib-bin`` and ``face_recognition_models``).
Registers:

- aligner ``dlib``: dlib's HOG frontal face detector (retried with upsampling,
  then optionally dlib's CNN detector) + the 5-point landmark predictor, then a
  least-squares similarity onto the c4s template;
- backbone ``dlib_resnet``: dlib's 128-d ResNet face descriptor, on dlib's own
  face chip (150x150, padding 0.25) from detection + 5 points;
- conditioner ``dlib_id``: the same descriptor as one identity token
  ``[B, 1, 128]``, cached on disk.

Model files (Davis King, dlib-models, released into the public domain) are read
from the installed ``face_recognition_models`` package:
``shape_predictor_5_face_landmarks.dat``, ``mmod_human_face_detector.dat`` and
``dlib_face_recognition_resnet_model_v1.dat``. The package's 68-point predictor
is never used: its training data (iBUG 300-W) forbids commercial use.

``face_recognition_models`` imports ``pkg_resources`` at import time, which
recent setuptools no longer ships, so it is never imported: its folder is found
with ``importlib.util.find_spec`` (see :func:`models_dir`). dlib itself is
imported only inside functions.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from c4s_core import ComponentConfig, hookimpl
from c4s_core.align import Aligner, DetectingAlignerConfig, Detection
from c4s_core.errors import DataError, missing_dependency

MODEL_FILES = {
    "sp5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}


def models_dir(what: str = "dlib face models") -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models``,
    found without importing the package (its ``__init__`` needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise missing_dependency("face_recognition_models", "dlib", what)
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        if d.is_dir():
            return d
    raise DataError(
        f"face_recognition_models is installed at {list(spec.submodule_search_locations)} "
        "but has no models/ folder; reinstall it: pip install --force-reinstall face_recognition_models"
    )


def model_path(key: str, what: str = "dlib face models") -> Path:
    p = models_dir(what) / MODEL_FILES[key]
    if not p.is_file():
        raise DataError(f"dlib model file missing: {p}; reinstall face_recognition_models")
    return p


def _installed(module: str) -> bool:
    # sys.modules first: a module set to None there cannot be imported (how tests hide one)
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(what: str) -> str | None:
    """Why ``what`` cannot run here (the message naming the package and the extra to
    install), or None when the dlib extra is installed; imports nothing."""
    for module, package in (("dlib", "dlib-bin"), ("face_recognition_models", "face_recognition_models")):
        if not _installed(module):
            return str(missing_dependency(package, "dlib", what))
    return None


def import_dlib(what: str):
    try:
        import dlib
    except ImportError:
        raise missing_dependency("dlib-bin", "dlib", what) from None
    return dlib


def load_model(key: str, what: str = "dlib face models") -> Any:
    """dlib models, loaded once per process: hog, sp5, cnn, resnet; errors name ``what``."""
    import_dlib(what)
    if key != "hog":
        model_path(key, what)
    return _load_model(key)


@functools.cache
def _load_model(key: str) -> Any:
    import dlib

    if key == "hog":
        return dlib.get_frontal_face_detector()
    path = str(model_path(key))
    if key == "sp5":
        return dlib.shape_predictor(path)
    if key == "cnn":
        return dlib.cnn_face_detection_model_v1(path)
    if key == "resnet":
        return dlib.face_recognition_model_v1(path)
    raise KeyError(key)


@functools.cache
def model_hash(key: str) -> str:
    h = hashlib.sha256()
    with open(model_path(key), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class DetectOptions(ComponentConfig):
    upsample: int = Field(0, ge=0, le=3, description="Times the HOG detector upsamples the image (finds smaller faces, slower).")
    retry_upsample: int | None = Field(
        1, ge=1, le=3, description="If nothing is found, retry the HOG detector with this upsampling (none: no retry)."
    )
    cnn_fallback: bool = Field(
        True, description="If the HOG detector finds nothing, try dlib's CNN (MMOD) detector (slow on CPU)."
    )


def find_face(image: np.ndarray, opts: DetectOptions, what: str):
    """``(rect, score, detector)`` of the largest face, or None."""
    hog = load_model("hog", what)
    tries = [opts.upsample]
    if opts.retry_upsample is not None and opts.retry_upsample > opts.upsample:
        tries.append(opts.retry_upsample)
    for up in tries:
        rects, scores, _ = hog.run(image, up, 0.0)
        if len(rects):
            i = max(range(len(rects)), key=lambda k: rects[k].area())
            return rects[i], float(scores[i]), f"hog@{up}"
    if opts.cnn_fallback:
        found = load_model("cnn", what)(image, max(1, opts.upsample))
        if len(found):
            best = max(found, key=lambda d: d.rect.area())
            return best.rect, float(best.confidence), "cnn"
    return None


def detect_shape(image: np.ndarray, opts: DetectOptions, what: str):
    """``(full_object_detection, score, detector)`` with the 5 landmarks, or None."""
    found = find_face(image, opts, what)
    if found is None:
        return None
    rect, score, which = found
    return load_model("sp5", what)(image, rect), score, which


class DlibAlignerConfig(DetectingAlignerConfig, DetectOptions):
    pass


class DlibAligner(Aligner):
    """dlib HOG (+CNN fallback) face detector and 5-point landmarks, similarity to the template."""

    name = "dlib"
    Config = DlibAlignerConfig
    what = "the dlib aligner"

    @classmethod
    def missing_extra(cls) -> str | None:
        """None when this component can be built; else what to install (see :func:`missing`)."""
        return missing(cls.what)

    def __init__(self, config: DlibAlignerConfig):
        super().__init__(config)
        load_model("hog", self.what)  # fail now, naming the extra, if dlib is missing
        load_model("sp5", self.what)

    def detect(self, image: np.ndarray) -> Detection | None:
        image = np.ascontiguousarray(image)
        found = detect_shape(image, self.config, self.what)
        if found is None:
            return None
        shape, score, which = found
        p = np.array([(pt.x, pt.y) for pt in shape.parts()], dtype=np.float64)
        # dlib 5-point order: 0/1 outer/inner corner of the eye on the image's
        # right, 2/3 outer/inner corner of the eye on the image's left, 4 nose base.
        points = {
            "left_eye": tuple((p[2] + p[3]) / 2),
            "right_eye": tuple((p[0] + p[1]) / 2),
            "nose_base": tuple(p[4]),
        }
        r = shape.rect
        return Detection(points, p, (r.left(), r.top(), r.right() + 1, r.bottom() + 1), score)


class DlibResnetConfig(DetectOptions):
    cnn_fallback: bool = Field(
        False, description="If the HOG detector finds nothing, try dlib's CNN (MMOD) detector (slow on CPU)."
    )
    num_jitters: int = Field(
        0, ge=0, le=100, description="Average the descriptor over this many random jitters (0: none; deterministic)."
    )
    padding: float = Field(0.25, ge=0.0, le=1.0, description="Padding of dlib's face chip (the model was trained with 0.25).")


class DlibResnet:
    """dlib's pretrained 128-d ResNet face descriptor on its own 5-point face chip."""

    name = "dlib_resnet"
    Config = DlibResnetConfig
    color_order = "RGB"
    input_size = (150, 150)
    embedding_dim = 128
    what = "the dlib_resnet backbone"

    @classmethod
    def missing_extra(cls) -> str | None:
        """None when this component can be built; else what to install (see :func:`missing`)."""
        return missing(cls.what)

    def __init__(self, config: DlibResnetConfig):
        self.config = config
        self.net = load_model("resnet", self.what)
        load_model("sp5", self.what)
        self.last_no_face = 0  # images of the last embed() call with no face (whole image used)

    def chips(self, images) -> tuple[list[np.ndarray], list[bool]]:
        dlib = import_dlib(self.what)
        chips, found = [], []
        for im in images:
            im = np.ascontiguousarray(np.asarray(im, np.uint8))
            det = detect_shape(im, self.config, self.what)
            if det is None:
                from c4s_core.data.io import resize

                chips.append(np.ascontiguousarray(resize(im, 150)))
                found.append(False)
            else:
                chips.append(dlib.get_face_chip(im, det[0], size=150, padding=self.config.padding))
                found.append(True)
        return chips, found

    def embed(self, images) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, 128), np.float32)
        chips, found = self.chips(images)
        self.last_no_face = found.count(False)
        vecs = self.net.compute_face_descriptor(chips, self.config.num_jitters)
        out = np.array([np.array(v) for v in vecs], dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def fingerprint(self) -> str:
        return json.dumps(
            {"encoder": self.name, "model": model_hash("resnet"), "config": self.config.model_dump()},
            sort_keys=True,
        )


class DlibIdConfig(DlibResnetConfig):
    cache_dir: Path | None = Field(
        None, description="Cache embeddings here, keyed by image hash + encoder identity; none: no cache."
    )


class DlibIdConditioner:
    """Frozen dlib ResNet identity embedding as one conditioning token [B, 1, 128]."""

    name = "dlib_id"
    Config = DlibIdConfig
    dim = 128
    num_tokens = 1
    what = "the dlib_id conditioner"

    @classmethod
    def missing_extra(cls) -> str | None:
        """None when this component can be built; else what to install (see :func:`missing`)."""
        return missing(cls.what)

    def __init__(self, config: DlibIdConfig):
        self.config = config
        self.encoder = DlibResnet(DlibResnetConfig(**config.model_dump(exclude={"cache_dir"})))
        self.encoder.what = self.what

    def cache_key(self, image: np.ndarray) -> str:
        h = hashlib.sha256(self.encoder.fingerprint().encode())
        h.update(str((image.shape, str(image.dtype))).encode())
        h.update(np.ascontiguousarray(image).tobytes())
        return h.hexdigest()

    def embed(self, photos) -> np.ndarray:
        photos = [np.asarray(p, np.uint8) for p in photos]
        out = np.zeros((len(photos), self.dim), np.float32)
        todo = list(range(len(photos)))
        cache = Path(self.config.cache_dir) if self.config.cache_dir else None
        paths: dict[int, Path] = {}
        if cache is not None:
            todo = []
            for i, p in enumerate(photos):
                key = self.cache_key(p)
                paths[i] = cache / key[:2] / f"{key}.npy"
                try:
                    out[i] = np.load(paths[i], allow_pickle=False)
                except (OSError, ValueError):
                    todo.append(i)
        if todo:
            vecs = self.encoder.embed([photos[i] for i in todo])
            for i, v in zip(todo, vecs, strict=True):
                out[i] = v
                if cache is not None:
                    from c4s_core.data.io import atomic_write_bytes

                    buf = io.BytesIO()
                    np.save(buf, v.astype(np.float32))
                    atomic_write_bytes(paths[i], buf.getvalue())
        return out

    def encode(self, photos, styles=None):
        """``photos``: list of uint8 HxWx3 RGB; ``styles`` is ignored. Returns a
        float32 torch tensor ``[B, 1, 128]`` (L2-normalised, no gradient)."""
        import torch

        return torch.from_numpy(self.embed(photos)).unsqueeze(1)


@hookimpl
def register_aligners(register):
    register(DlibAligner)


@hookimpl
def register_backbones(register):
    register(DlibResnet)


@hookimpl
def register_conditioners(register):
    register(DlibIdConditioner)
