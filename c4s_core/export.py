"""ONNX export of an embedding model, checked rather than hoped.

Generic: nothing here names a concrete backbone. :func:`export_onnx` takes any
``torch.nn.Module`` mapping a normalised float batch ``[B, 3, H, W]`` (in the
model's own colour order) to embeddings ``[B, D]``, plus an
:class:`ExportMeta` describing that input, and writes one ONNX file with a
single documented input contract:

- input ``images``: **uint8 RGB, NHWC** ``[batch, H, W, 3]`` at the model's
  ``input_size``; ``batch`` is a real dynamic axis. Callers resize (or align)
  faces to ``input_size`` first; :mod:`c4s_core.runtime` does that for you.
- inside the graph: channel reorder to the backbone's colour order, float
  conversion, ``(x / 255 - mean) / std``, the model, L2 normalisation;
- output ``embeddings``: float32 ``[batch, D]``, unit length.

The file describes itself in ``metadata_props`` (keys ``c4s.*``, see
:data:`META_KEYS`): input size, input colour order (RGB), the backbone's colour
order, mean/std, embedding size, backbone name, training-data hash, c4s
version, source checkpoint hash, opset and precision.

Checks before the file appears at its path (written to a temp file beside it,
renamed only on success): ``onnx.checker``, a declared symbolic batch axis,
onnxruntime runs at several batch sizes (default 1, 7, 64), and parity with
torch on a real batch (max abs difference and min cosine against a tolerance).
A failure raises :class:`ExportError` and leaves no file behind.

:func:`convert_fp16` and :func:`quantize_int8` derive lighter variants, and
:func:`compare_models` measures what they cost (cosine to fp32, rank-1 change).

torch, onnx and onnxruntime are imported inside functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import C4SError, ConfigError, DataError, MissingDependencyError

__all__ = [
    "ExportMeta",
    "Tolerance",
    "ExportResult",
    "ExportError",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "META_KEYS",
    "MIN_OPSET",
    "build_deployable",
    "torch_reference",
    "export_onnx",
    "convert_fp16",
    "quantize_int8",
    "compare_models",
    "read_metadata",
    "write_metadata",
    "state_dict_hash",
    "embedding_stats",
    "file_sha256",
]

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
FORMAT = "c4s-onnx-embedder"
FORMAT_VERSION = 1
MIN_OPSET = 17
DEFAULT_BATCHES = (1, 7, 64)

# metadata_props key -> (type, description). Values are strings in ONNX; lists
# and numbers are JSON.
META_KEYS: dict[str, tuple[str, str]] = {
    "c4s.format": ("str", f"always {FORMAT!r}"),
    "c4s.format_version": ("int", "version of this metadata layout"),
    "c4s.input_name": ("str", "graph input name"),
    "c4s.input_layout": ("str", "NHWC"),
    "c4s.input_dtype": ("str", "uint8"),
    "c4s.input_color_order": ("str", "colour order callers feed: RGB"),
    "c4s.input_size": ("json", "[H, W] the input must have"),
    "c4s.color_order": ("str", "the backbone's own colour order (the graph reorders)"),
    "c4s.mean": ("json", "per-channel mean (backbone order), on x/255"),
    "c4s.std": ("json", "per-channel std (backbone order), on x/255"),
    "c4s.output_name": ("str", "graph output name"),
    "c4s.embedding_dim": ("int", "embedding size D"),
    "c4s.normalized": ("json", "true: the graph L2-normalises its output"),
    "c4s.flip_fusion": ("json", "true: the graph sums the embeddings of the image and its mirror image"),
    "c4s.backbone": ("str", "registered backbone name"),
    "c4s.training_data_hash": ("str", "hash of the training data ('' if unknown)"),
    "c4s.source_hash": ("str", "hash of the source checkpoint / weights"),
    "c4s.version": ("str", "c4s version that exported the file"),
    "c4s.opset": ("int", "ONNX opset of the default domain"),
    "c4s.precision": ("str", "fp32, fp16, int8-dynamic or int8-static"),
    "c4s.extra": ("json", "further caller-given facts"),
}


class ExportError(C4SError):
    """An export failed a check (checker, batch axis, parity); nothing was written."""


@dataclass
class ExportMeta:
    """What the exported graph needs to know about the model's input.

    ``color_order``, ``mean`` and ``std`` describe what ``model`` expects:
    ``x = (img[:, order] / 255 - mean) / std`` in ``color_order``.
    """

    input_size: tuple[int, int]
    color_order: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    backbone: str
    source_hash: str = ""
    training_data_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    flip_fusion: bool = False

    def __post_init__(self):
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ConfigError(f"input_size must be (H, W) with positive sides, got {self.input_size}")
        if self.color_order not in ("RGB", "BGR"):
            raise ConfigError(f"color_order must be 'RGB' or 'BGR', got {self.color_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean/std must be 3 values each with std > 0, got {self.mean} / {self.std}")
        if int(self.embedding_dim) < 1:
            raise ConfigError(f"embedding_dim must be positive, got {self.embedding_dim}")

    @classmethod
    def from_backbone(cls, backbone, name: str, source_hash: str = "", training_data_hash: str = "",
                      extra: dict[str, Any] | None = None) -> ExportMeta:
        """From a backbone's ``input_size``, ``color_order``, ``mean``, ``std`` and ``embedding_dim``."""
        missing = [a for a in ("input_size", "color_order", "embedding_dim") if not hasattr(backbone, a)]
        if missing:
            raise ConfigError(f"backbone {name!r} lacks {', '.join(missing)}; it cannot be exported")
        return cls(
            input_size=tuple(backbone.input_size), color_order=backbone.color_order,
            mean=tuple(getattr(backbone, "mean", (0.5, 0.5, 0.5))),
            std=tuple(getattr(backbone, "std", (0.5, 0.5, 0.5))),
            embedding_dim=int(backbone.embedding_dim), backbone=name, source_hash=source_hash,
            training_data_hash=training_data_hash, extra=dict(extra or {}),
            flip_fusion=bool(getattr(getattr(backbone, "config", None), "flip_fusion", False)),
        )


@dataclass
class Tolerance:
    """Parity limits between onnxruntime and torch on L2-normalised embeddings."""

    max_abs_diff: float = 1e-3
    min_cosine: float = 0.9999


@dataclass
class ExportResult:
    path: str
    opset: int
    precision: str
    batches_checked: list[int]
    parity_images: int
    max_abs_diff: float
    min_cosine: float
    tolerance: dict[str, float]
    model_hash: str
    size_bytes: int
    seconds: float
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the graph ------------------------------------------------------------------------


def _deployed_class():
    import torch

    class DeployedModel(torch.nn.Module):
        """uint8 RGB NHWC -> L2-normalised embeddings, preprocessing inside."""

        def __init__(self, model: torch.nn.Module, meta: ExportMeta):
            super().__init__()
            self.model = model
            order = [2, 1, 0] if meta.color_order == "BGR" else [0, 1, 2]
            mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
            # (x/255 - mean)/std as one multiply-add
            self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
            self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
            self.register_buffer("shift", -mean / std, persistent=False)
            self.flip_fusion = meta.flip_fusion

        def embed(self, x):
            y = self.model(x)
            if isinstance(y, (tuple, list)):  # AdaFace-style (embedding, norm)
                y = y[0]
            return y.to(torch.float32)

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).to(torch.float32)
            x = torch.index_select(x, 1, self.order)
            x = x * self.scale + self.shift
            y = self.embed(x)
            if self.flip_fusion:
                y = y + self.embed(torch.flip(x, dims=[3]))
            return torch.nn.functional.normalize(y, p=2.0, dim=1, eps=1e-12)

    return DeployedModel


def build_deployable(model, meta: ExportMeta):
    """The module that gets exported: preprocessing + ``model`` + L2 norm, in eval mode."""
    return _deployed_class()(model, meta).eval()


def torch_reference(model, meta: ExportMeta, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Embeddings of uint8 RGB NHWC ``images`` by ``model`` in torch, with the
    preprocessing done here in numpy (a separate code path from the graph's, so
    a wrong reorder or normalisation in the graph fails the parity check)."""
    import torch

    _check_images(images, meta, "parity images")
    x = images.astype(np.float32) / 255.0
    if meta.color_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                views = [x[i:i + batch_size]] + ([x[i:i + batch_size, :, :, ::-1]] if meta.flip_fusion else [])
                y = 0.0
                for v in views:
                    e = model(torch.from_numpy(np.ascontiguousarray(v)))
                    y = y + (e[0] if isinstance(e, (tuple, list)) else e).float().cpu().numpy()
                out.append(y)
    finally:
        model.train(was_training)
    y = np.concatenate(out).astype(np.float64)
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def state_dict_hash(model, n: int = 16) -> str:
    """Content hash of a module's parameters and buffers (names, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n]


# -- metadata -----------------------------------------------------------------------------


def _meta_props(meta: ExportMeta, opset: int, precision: str) -> dict[str, str]:
    from . import __version__

    values: dict[str, Any] = {
        "c4s.format": FORMAT,
        "c4s.format_version": FORMAT_VERSION,
        "c4s.input_name": INPUT_NAME,
        "c4s.input_layout": "NHWC",
        "c4s.input_dtype": "uint8",
        "c4s.input_color_order": "RGB",
        "c4s.input_size": list(meta.input_size),
        "c4s.color_order": meta.color_order,
        "c4s.mean": list(meta.mean),
        "c4s.std": list(meta.std),
        "c4s.output_name": OUTPUT_NAME,
        "c4s.embedding_dim": int(meta.embedding_dim),
        "c4s.normalized": True,
        "c4s.flip_fusion": bool(meta.flip_fusion),
        "c4s.backbone": meta.backbone,
        "c4s.training_data_hash": meta.training_data_hash or "",
        "c4s.source_hash": meta.source_hash or "",
        "c4s.version": __version__,
        "c4s.opset": int(opset),
        "c4s.precision": precision,
        "c4s.extra": meta.extra,
    }
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}


def write_metadata(model_proto, props: dict[str, str]) -> None:
    """Set ``props`` in an ``onnx.ModelProto``'s metadata_props (replacing same keys)."""
    keep = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for k, v in [*keep, *props.items()]:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(props: dict[str, str], where: str = "model") -> dict[str, Any]:
    """Decode ``c4s.*`` metadata_props (as from onnxruntime's
    ``get_modelmeta().custom_metadata_map``) into typed values, without the prefix.
    Raises DataError if the model was not written by c4s export."""
    if props.get("c4s.format") != FORMAT:
        raise DataError(
            f"{where} has no c4s metadata (metadata_props c4s.format={props.get('c4s.format')!r}); "
            "export it with `c4s export` so its input size and preprocessing are known"
        )
    out: dict[str, Any] = {}
    for key, (typ, _doc) in META_KEYS.items():
        if key not in props:
            continue
        raw = props[key]
        try:
            out[key[4:]] = json.loads(raw) if typ in ("json", "int") else raw
        except ValueError:
            raise DataError(f"{where}: metadata {key}={raw!r} is not valid JSON") from None
    for key in ("input_size", "embedding_dim"):
        if key not in out:
            raise DataError(f"{where}: metadata c4s.{key} is missing; re-export the model")
    return out


# -- export ---------------------------------------------------------------------------------


@contextmanager
def _temp_beside(path: Path, suffix: str = ".onnx") -> Iterator[Path]:
    """A temp file path beside ``path``; removed on failure (the caller renames on success)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    from .data.io import _UMASK

    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the model gets the mode other outputs get
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _check_images(images: Any, meta: ExportMeta, label: str) -> None:
    h, w = meta.input_size
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != (h, w, 3):
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{label}: expected uint8 RGB [N, {h}, {w}, 3] at the model's input size, got {desc}; "
                        "resize or align them to input_size first")
    if len(images) == 0:
        raise DataError(f"{label}: no images")


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [sess.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + batch_size]})[0]
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32)


def _parity(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return diff, float(cos.min())


def _torch_export(module, example, tmp: Path, opset: int, exporter: str) -> None:
    """Write ``module`` to ``tmp`` with named input/output and a dynamic batch axis."""
    import torch

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with warnings.catch_warnings():
        # the TorchScript exporter announces its own deprecation; the result is checked below
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise MissingDependencyError(
                    "exporter 'dynamo' (torch.export-based) needs the 'onnxscript' package: "
                    "pip install onnxscript, or use exporter=torchscript"
                ) from None
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False,
                              dynamic_shapes={"images": {0: batch}}, **names)
        else:
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)


def _name_output_axes(proto, meta: ExportMeta) -> None:
    """Output shape ``[batch, embedding_dim]``: the exporters leave the second
    axis symbolic (``Divembeddings_dim_1``), which tells a deployer nothing."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 2:
        dims[0].dim_param = "batch"
        dims[1].dim_value = int(meta.embedding_dim)


def _check_graph(tmp: Path, meta: ExportMeta, where: str) -> Any:
    """onnx.checker, input/output names, dtype and a symbolic batch axis."""
    import onnx

    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as err:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"{where}: onnx.checker rejected the graph: {err}") from None
    proto = onnx.load(str(tmp))
    ins = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if [i.name for i in ins] != [INPUT_NAME] or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"{where}: graph inputs {[i.name for i in ins]} / outputs "
                          f"{[o.name for o in proto.graph.output]}, expected [{INPUT_NAME!r}] / [{OUTPUT_NAME!r}]")
    t = ins[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.UINT8:
        raise ExportError(f"{where}: input {INPUT_NAME!r} is not uint8 (elem_type {t.elem_type})")
    dims = t.shape.dim
    if len(dims) != 4 or not dims[0].dim_param or dims[0].HasField("dim_value"):
        raise ExportError(f"{where}: input {INPUT_NAME!r} has no symbolic batch axis ({dims}); "
                          "the exporter must declare dim 0 dynamic")
    out = [d.dim_value if d.HasField("dim_value") else d.dim_param
           for d in proto.graph.output[0].type.tensor_type.shape.dim]
    if out != ["batch", int(meta.embedding_dim)]:
        raise ExportError(f"{where}: output {OUTPUT_NAME!r} has shape {out}, expected "
                          f"['batch', {meta.embedding_dim}]")
    return proto


def _check_batches(sess, meta: ExportMeta, batches: Sequence[int], where: str) -> None:
    h, w = meta.input_size
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.integers(0, 256, (int(b), h, w, 3), dtype=np.uint8)
        try:
            y = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        except Exception as err:  # onnxruntime's own exception types
            raise ExportError(f"{where}: onnxruntime failed at batch {b}: {err}") from None
        if y.shape != (b, meta.embedding_dim):
            raise ExportError(f"{where}: batch {b} gave output shape {y.shape}, expected ({b}, {meta.embedding_dim})")
        if not np.isfinite(y).all():
            raise ExportError(f"{where}: batch {b} gave non-finite embeddings")


def export_onnx(
    model,
    meta: ExportMeta,
    path: str | Path,
    images: np.ndarray,
    *,
    opset: int = MIN_OPSET,
    tolerance: Tolerance | None = None,
    check_batches: Sequence[int] = DEFAULT_BATCHES,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
    threads: int | None = None,
) -> ExportResult:
    """Export ``model`` (see module doc) to ``path`` and check it; raise
    :class:`ExportError` (and write nothing) if any check fails.

    ``images``: uint8 RGB ``[N, H, W, 3]`` at ``meta.input_size``, a real batch
    for the parity check (faces, not noise). ``model`` is moved to the CPU; its
    train/eval mode is restored afterwards.
    """
    t0 = time.time()
    path = Path(path)
    tolerance = tolerance or Tolerance()
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is below the minimum {MIN_OPSET}")
    _check_images(images, meta, "parity images")
    was_training = model.training
    model = model.cpu().eval()
    try:
        result = _export_checked(model, meta, path, images, opset, tolerance, check_batches, exporter, threads)
    finally:
        model.train(was_training)
    diff, cos, model_hash, size = result
    props = read_metadata(dict(_meta_props(meta, opset, "fp32")))
    return ExportResult(
        path=str(path), opset=opset, precision="fp32", batches_checked=[int(b) for b in check_batches],
        parity_images=len(images), max_abs_diff=diff, min_cosine=cos, tolerance=asdict(tolerance),
        model_hash=model_hash, size_bytes=size, seconds=round(time.time() - t0, 3), metadata=props,
    )


def _export_checked(model, meta: ExportMeta, path: Path, images: np.ndarray, opset: int, tolerance: Tolerance,
                    check_batches: Sequence[int], exporter: str, threads: int | None) -> tuple[float, float, str, int]:
    """Export, check and rename; returns (max abs diff, min cosine, sha256, size)."""
    import onnx
    import torch

    # the reference first, from the module as given
    ref = torch_reference(model, meta, images)
    deployed = build_deployable(model, meta)
    example = torch.from_numpy(images[: min(2, len(images))].copy())
    with _temp_beside(path) as tmp:
        try:
            _torch_export(deployed, example, tmp, opset, exporter)
        except (C4SError, MemoryError):
            raise
        except Exception as err:  # torch.onnx raises many types
            raise ExportError(f"torch.onnx.export ({exporter}, opset {opset}) failed for {meta.backbone!r}: "
                              f"{type(err).__name__}: {err}") from None
        proto = onnx.load(str(tmp))
        write_metadata(proto, _meta_props(meta, opset, "fp32"))
        _name_output_axes(proto, meta)
        onnx.save(proto, str(tmp))
        _check_graph(tmp, meta, str(path))
        sess = _session(tmp, threads)
        _check_batches(sess, meta, check_batches, str(path))
        got = _run(sess, images)
        diff, cos = _parity(ref, got)
        if not (diff <= tolerance.max_abs_diff and cos >= tolerance.min_cosine):
            raise ExportError(
                f"{path}: onnxruntime and torch disagree on {len(images)} images: max abs diff "
                f"{diff:.3g} (limit {tolerance.max_abs_diff:g}), min cosine {cos:.6f} "
                f"(limit {tolerance.min_cosine:g}); nothing was written. An op may export wrongly at "
                f"opset {opset}: try another opset or exporter, or loosen tolerance if the gap is expected"
            )
        model_hash = file_sha256(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    return diff, cos, model_hash, size


def file_sha256(path: str | Path) -> str:
    from .data.io import file_hash

    return file_hash(path, 64)


# -- lighter variants ------------------------------------------------------------------


def _derive(src: Path, dst: Path, precision: str, convert: Callable[[Path, Path], None],
            check_batches: Sequence[int]) -> dict[str, Any]:
    """Run ``convert(src, tmp)``, stamp metadata, check, rename to ``dst``."""
    import onnx

    meta_src = _load_meta_props(src)
    meta = ExportMeta(
        input_size=tuple(meta_src["input_size"]), color_order=meta_src["color_order"],
        mean=tuple(meta_src["mean"]), std=tuple(meta_src["std"]), embedding_dim=meta_src["embedding_dim"],
        backbone=meta_src.get("backbone", ""), source_hash=meta_src.get("source_hash", ""),
        training_data_hash=meta_src.get("training_data_hash", ""), extra=meta_src.get("extra", {}),
        flip_fusion=bool(meta_src.get("flip_fusion", False)),
    )
    with _temp_beside(dst) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(src, tmp)
        proto = onnx.load(str(tmp))
        write_metadata(proto, _meta_props(meta, int(meta_src.get("opset", MIN_OPSET)), precision))
        _name_output_axes(proto, meta)
        onnx.save(proto, str(tmp))
        _check_graph(tmp, meta, str(dst))
        _check_batches(_session(tmp), meta, check_batches, str(dst))
        info = {"path": str(dst), "precision": precision, "model_hash": file_sha256(tmp),
                "size_bytes": tmp.stat().st_size}
        os.replace(tmp, dst)
    return info


def _load_meta_props(path: Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return read_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def convert_fp16(src: str | Path, dst: str | Path, check_batches: Sequence[int] = (1, 7)) -> dict[str, Any]:
    """fp16 weights and activations (input stays uint8, output stays float32),
    with onnxruntime's ``transformers.float16`` converter."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:  # pragma: no cover - shipped with onnxruntime(-gpu)
        raise MissingDependencyError(
            "fp16 export needs onnxruntime.transformers (part of onnxruntime / onnxruntime-gpu)"
        ) from None

    def convert(a: Path, b: Path) -> None:
        import onnx

        onnx.save(convert_float_to_float16(onnx.load(str(a)), keep_io_types=True), str(b))

    return _derive(Path(src), Path(dst), "fp16", convert, check_batches)


def quantize_int8(src: str | Path, dst: str | Path, mode: Literal["dynamic", "static"] = "dynamic",
                  calibration: np.ndarray | None = None, check_batches: Sequence[int] = (1, 7)) -> dict[str, Any]:
    """int8 with onnxruntime.quantization: ``dynamic`` (weights int8,
    activations quantised at run time) or ``static`` (QDQ, activations
    calibrated on ``calibration``, uint8 RGB NHWC images at the input size)."""
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise ConfigError("int8 static quantisation needs calibration images (uint8 RGB NHWC at the input size)")

    class Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray, batch: int = 8):
            self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {INPUT_NAME: b}

    def convert(a: Path, b: Path) -> None:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser warns about the uint8 input it rightly skips
        try:
            if mode == "dynamic":
                quantize_dynamic(str(a), str(b), weight_type=QuantType.QInt8)
            else:
                quantize_static(str(a), str(b), Reader(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, weight_type=QuantType.QInt8,
                                activation_type=QuantType.QUInt8)
        finally:
            root.setLevel(level)

    return _derive(Path(src), Path(dst), f"int8-{mode}", convert, check_batches)


def _embed_file(path: Path, images: np.ndarray) -> np.ndarray:
    return _run(_session(path), images)


def embedding_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Cosine between matching rows of two L2-normalised embedding sets."""
    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(a - b).max())}


def _rank1(probes: np.ndarray, probe_ids: Sequence[str], gallery: np.ndarray,
           gallery_ids: Sequence[str]) -> tuple[float, np.ndarray]:
    s = probes.astype(np.float32) @ gallery.astype(np.float32).T
    top = s.argmax(1)
    hits = np.array([gallery_ids[j] == probe_ids[i] for i, j in enumerate(top)])
    return float(hits.mean()) if len(hits) else 0.0, top


def compare_models(ref_path: str | Path, variant_path: str | Path, probes: np.ndarray, probe_ids: Sequence[str],
                   gallery: np.ndarray, gallery_ids: Sequence[str]) -> dict[str, Any]:
    """Cost of a variant against the reference ONNX model on a probe/gallery
    set (uint8 RGB NHWC at the input size): cosine per image, rank-1 of both
    and the share of probes whose top-1 gallery match changed."""
    rp, rg = _embed_file(Path(ref_path), probes), _embed_file(Path(ref_path), gallery)
    vp, vg = _embed_file(Path(variant_path), probes), _embed_file(Path(variant_path), gallery)
    stats = embedding_stats(np.concatenate([rp, rg]), np.concatenate([vp, vg]))
    r_ref, top_ref = _rank1(rp, probe_ids, rg, gallery_ids)
    r_var, top_var = _rank1(vp, probe_ids, vg, gallery_ids)
    return {
        **stats,
        "rank1_reference": r_ref,
        "rank1": r_var,
        "rank1_change": r_var - r_ref,
        "top1_changed": float((top_ref != top_var).mean()),
        "probes": len(probes),
        "gallery": len(gallery),
    }
