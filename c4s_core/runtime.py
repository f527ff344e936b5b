"""Run an exported embedder (``c4s export``) with onnxruntime, on explicit providers.

``device`` picks the execution providers, and what is asked for is what runs:

- ``cpu``: ``CPUExecutionProvider``;
- ``cuda``: ``CUDAExecutionProvider`` (CPU only for ops CUDA lacks);
- ``tensorrt``: ``TensorrtExecutionProvider`` (then CUDA, CPU for the rest).

If the provider asked for is not in ``onnxruntime.get_available_providers()``,
or the created session does not list it in ``get_providers()`` (onnxruntime-gpu
lists CUDA as available on machines without a GPU or without the CUDA
libraries, then quietly runs on CPU), that is a :class:`ProviderError`, never a
silent CPU fallback.

Preprocessing comes from the model's own metadata: images (uint8 RGB, any
size) are aligned by an optional aligner, resized to the model's input size and
fed as uint8 NHWC; the graph does the rest (see :mod:`c4s_core.export`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import C4SError, DataError, ImageReadError

__all__ = ["Device", "PROVIDERS", "ProviderError", "make_session", "OnnxEmbedder"]

Device = Literal["cpu", "cuda", "tensorrt"]

# device -> providers in priority order; the first one must be active.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


class ProviderError(C4SError):
    """The execution provider asked for is not available or did not activate."""


def make_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on ``device``'s providers, checked to be active."""
    import onnxruntime as ort

    path = Path(path)
    if device not in PROVIDERS:
        raise ProviderError(f"device {device!r} is not one of {', '.join(PROVIDERS)}")
    if not path.is_file():
        raise DataError(f"ONNX model {path} not found; write one with `c4s export`")
    wanted = PROVIDERS[device]
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if wanted[0] in missing:
        raise ProviderError(
            f"device {device!r} needs {wanted[0]}, but this onnxruntime ({ort.__version__}) offers only "
            f"{', '.join(available)}. Install onnxruntime-gpu (and not plain onnxruntime beside it), "
            "or use device=cpu"
        )
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    try:
        sess = ort.InferenceSession(str(path), so, providers=[p for p in wanted if p in available])
    except Exception as err:  # onnxruntime's own exception types
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if device != "cpu" and "provider" in str(err).lower():
            raise ProviderError(f"{path}: cannot create a {device} session: {msg}") from None
        raise DataError(f"{path}: onnxruntime cannot load this model: {msg}") from None
    active = sess.get_providers()
    if wanted[0] not in active:
        raise ProviderError(
            f"device {device!r}: onnxruntime lists {wanted[0]} as available but the session for {path} "
            f"runs on {', '.join(active)} only (no GPU, or the CUDA/cuDNN{'/TensorRT' if device == 'tensorrt' else ''} "
            "libraries onnxruntime-gpu needs are not found; see the log lines above). "
            "Fix the GPU setup or use device=cpu; c4s never falls back to CPU silently"
        )
    return sess


class OnnxEmbedder:
    """Embeds faces with an exported model; preprocessing from its metadata.

    Attributes: ``metadata`` (decoded ``c4s.*`` props), ``input_size`` (H, W),
    ``embedding_dim``, ``model_hash`` (sha256 of the file), ``providers``
    (active ones), ``color_order`` ("RGB": what ``embed`` takes).
    """

    color_order = "RGB"

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64,
                 threads: int | None = None, aligner=None):
        from .export import INPUT_NAME, OUTPUT_NAME, file_sha256, read_metadata

        self.path = Path(path)
        self.device = device
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.aligner = aligner
        self.session = make_session(self.path, device, threads)
        self.providers = list(self.session.get_providers())
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata: dict[str, Any] = read_metadata(props, str(self.path))
        self.input_size: tuple[int, int] = tuple(int(v) for v in self.metadata["input_size"])  # type: ignore[assignment]
        self.embedding_dim = int(self.metadata["embedding_dim"])
        self.input_name = self.metadata.get("input_name", INPUT_NAME)
        self.output_name = self.metadata.get("output_name", OUTPUT_NAME)
        ins = self.session.get_inputs()
        if [i.name for i in ins] != [self.input_name] or "uint8" not in ins[0].type:
            raise DataError(
                f"{self.path}: graph input {[(i.name, i.type) for i in ins]} does not match its metadata "
                f"({self.input_name!r}, uint8 NHWC); re-export it with `c4s export`"
            )
        self.model_hash = file_sha256(self.path)

    # -- preprocessing ------------------------------------------------------------------
    def prepare(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
        """uint8 RGB images of any size -> uint8 ``[B, H, W, 3]`` at the input size."""
        from .data.io import resize

        out = np.empty((len(images), *self.input_size, 3), np.uint8)
        for i, im in enumerate(images):
            label = names[i] if names is not None else f"image #{i}"
            im = np.asarray(im)
            if im.ndim == 2:
                im = np.repeat(im[:, :, None], 3, axis=2)
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise DataError(f"{label}: expected a uint8 HxWx3 RGB image, got {im.dtype} {im.shape}")
            out[i] = resize(np.ascontiguousarray(im), self.input_size)
        return out

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw run on uint8 ``[B, H, W, 3]`` at the input size, in chunks of batch_size."""
        if len(batch) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        out = [self.session.run([self.output_name], {self.input_name: batch[i:i + self.batch_size]})[0]
               for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- the backbone contract ----------------------------------------------------------
    def embed(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
        """L2-normalised float32 ``[B, D]`` for uint8 RGB images (resized to the input size;
        aligned first by ``self.aligner`` if set, which must keep every image)."""
        if self.aligner is not None:
            n = len(images)
            images, kept = self.align(images, names)
            if len(kept) != n:
                lost = sorted(set(range(n)) - set(kept))
                label = [names[i] for i in lost] if names is not None else [f"image #{i}" for i in lost]
                raise DataError(f"the aligner left out {len(lost)} image(s) ({', '.join(label[:5])}); "
                                "set its on_no_face=fallback, or use embed_files() which reports skips")
            names = [names[i] for i in kept] if names is not None else None
        return self.run(self.prepare(images, names))

    def align(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None
              ) -> tuple[list[np.ndarray], list[int]]:
        """Aligned crops and the indices of the images the aligner kept."""
        if self.aligner is None:
            return list(images), list(range(len(images)))
        results = self.aligner.align(list(images), list(names) if names is not None else None)
        kept = [i for i, r in enumerate(results) if r.image is not None]
        return [results[i].image for i in kept], kept

    def embed_files(self, paths: Sequence[str | os.PathLike], on_error: Literal["raise", "skip"] = "raise",
                    progress: bool = False) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """Embed image files in batches. Returns ``(embeddings, kept, skipped)``:
        ``kept`` indexes ``paths`` for each embedding row; ``skipped`` holds
        ``(path, reason)`` for unreadable files (on_error=skip) or faces the
        aligner left out."""
        from tqdm import tqdm

        from .data.io import load_image

        embs, kept, skipped = [], [], []
        for start in tqdm(range(0, len(paths), self.batch_size), disable=not progress, unit="batch",
                          desc="embedding"):
            chunk = list(range(start, min(start + self.batch_size, len(paths))))
            images, idx = [], []
            for i in chunk:
                try:
                    images.append(load_image(paths[i]))
                    idx.append(i)
                except ImageReadError as err:
                    if on_error == "raise":
                        raise
                    skipped.append((str(paths[i]), str(err)))
            names = [str(paths[i]) for i in idx]
            crops, keep = self.align(images, names)
            for k in sorted(set(range(len(idx))) - set(keep)):
                skipped.append((names[k], "aligner found no face (skipped)"))
            if crops:
                embs.append(self.run(self.prepare(crops, [names[k] for k in keep])))
                kept += [idx[k] for k in keep]
        e = np.concatenate(embs) if embs else np.zeros((0, self.embedding_dim), np.float32)
        return e, kept, skipped

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "model_hash": self.model_hash, "device": self.device,
                "providers": self.providers, **{k: self.metadata.get(k) for k in (
                    "backbone", "input_size", "embedding_dim", "precision", "opset", "source_hash",
                    "training_data_hash", "version")}}
