"""Export a matcher to ONNX, checked: ``c4s export``.

Takes any torch backbone (``backbone``: a ``matcher`` folder from
``c4s train-matcher`` by default, or e.g. ``ir_18`` with ``weights``) and
writes, in ``out``:

- ``<name>.onnx``: input ``images`` uint8 RGB NHWC ``[batch, H, W, 3]`` at the
  model's input size (callers resize or align faces to it first; ``c4s match``
  and the ``onnx`` backbone do), output ``embeddings`` float32 ``[batch, D]``,
  unit length. Colour reorder, normalisation and L2 norm are in the graph; the
  facts are in ``metadata_props`` (see :mod:`c4s_core.export`);
- ``<name>.fp16.onnx`` / ``<name>.int8-dynamic.onnx`` / ``<name>.int8-static.onnx``
  when asked (``fp16``, ``int8``), each with its cost against fp32 (cosine,
  rank-1 on a synthfaces probe/gallery set) in the report;
- ``<name>.report.json``: parity (max abs diff, min cosine), batches run,
  hashes, metadata and the variants' figures; ``config.yaml`` / ``run.json``.

The fp32 file is refused (a C4SError, no file left behind) when onnx.checker
fails, the batch axis is not dynamic, a batch size in ``check_batches`` does
not run in onnxruntime, or parity with torch on ``parity`` faces is outside
``max_abs_diff`` / ``min_cosine``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import C4SModel, ComponentSpec
from ..errors import ConfigError, DataError


def _parity_set() -> ComponentSpec:
    return ComponentSpec(name="synthfaces", options={
        "num_identities": 16, "images_per_identity": 1, "sketches_per_identity": 1, "seed": 7, "prefix": "parity"})


def _compare_set() -> ComponentSpec:
    return ComponentSpec(name="synthfaces", options={
        "num_identities": 50, "images_per_identity": 1, "sketches_per_identity": 1, "seed": 11, "prefix": "cmp"})


class Parity(C4SModel):
    dataset: ComponentSpec = Field(default_factory=_parity_set, description="Faces for the torch/onnxruntime parity check (resized to the input size).")
    images: Path | None = Field(None, description="Folder of face images to use instead of `dataset` (aligned crops; resized).")
    count: int = Field(32, ge=1, le=4096, description="Images in the parity batch (at most).")
    max_abs_diff: float = Field(1e-3, gt=0.0, le=2.0, description="Largest allowed |onnx - torch| on unit embeddings.")
    min_cosine: float = Field(0.9999, ge=-1.0, le=1.0, description="Smallest allowed cosine between onnx and torch embeddings.")


class Compare(C4SModel):
    dataset: ComponentSpec = Field(default_factory=_compare_set, description="Probe (sketch) / gallery (photo) set on which fp16/int8 variants are compared with fp32.")
    calibration: int = Field(64, ge=1, le=4096, description="Images (photos and sketches) that calibrate int8 static quantisation.")


class Config(C4SModel):
    backbone: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="matcher", options={"path": "c4s-out/matcher/best"}),
        description="Torch backbone to export: a `matcher` folder (train-matcher output) or any torch backbone with its options.",
    )
    out: Path = Field(Path("c4s-out/export"), description="Output folder.")
    name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="File stem of the exported model(s).")
    opset: int = Field(17, ge=17, le=23, description="ONNX opset of the default domain (17 to 23).")
    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript", description="torch.onnx exporter: torchscript (tracing, built in) or dynamo (torch.export; needs onnxscript)."
    )
    check_batches: list[int] = Field([1, 7, 64], description="Batch sizes that must run in onnxruntime (the batch axis is dynamic).")
    parity: Parity = Field(default_factory=Parity, description="Parity check against torch.")
    fp16: bool = Field(False, description="Also write <name>.fp16.onnx (fp16 weights/activations, same input/output).")
    int8: Literal["none", "dynamic", "static"] = Field(
        "none", description="Also write an int8 model: dynamic (weights only, no calibration) or static (QDQ, calibrated on `compare`).",
    )
    compare: Compare = Field(default_factory=Compare, description="Where fp16/int8 variants are measured against fp32.")
    threads: int | None = Field(None, ge=1, le=512, description="torch and onnxruntime CPU threads (None: their defaults).")

    @field_validator("check_batches")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 or b > 4096 for b in v):
            raise ValueError(f"check_batches must be 1 to 4096 each and not empty, got {v}")
        return v


def _build_backbone(spec: ComponentSpec, regs):
    entry = regs.backbone.get(spec.name)
    opts = dict(spec.options)
    if "device" in entry.config_cls.model_fields:
        opts["device"] = "cpu"  # export runs on CPU; the ONNX file picks its device at run time
    backbone = regs.backbone.build(spec.name, opts)
    if not hasattr(backbone, "model") or not callable(getattr(backbone.model, "state_dict", None)):
        raise ConfigError(f"backbone {spec.name!r} is not a torch model (no .model nn.Module); only torch backbones "
                          "(ir_*, mobilefacenet, matcher, ...) can be exported")
    return backbone


def _meta(backbone, spec: ComponentSpec):
    from ..export import ExportMeta, file_sha256, state_dict_hash

    info = getattr(backbone, "info", None)
    if isinstance(info, dict) and info.get("format") == "c4s-matcher":  # a train-matcher folder
        name = info["backbone"]["name"]
        source = info.get("weights_sha256") or state_dict_hash(backbone.model)
        data_hash = str(info.get("data_hash") or "")
        extra = {"source": "matcher", "matcher_path": str(getattr(backbone, "folder", "")),
                 "backbone_options": info["backbone"].get("options", {}),
                 **{k: info[k] for k in ("epoch", "val_rank1", "head") if k in info}}
    else:
        name = spec.name
        weights = spec.options.get("weights")
        source = file_sha256(weights) if weights and Path(weights).is_file() else "weights:" + state_dict_hash(backbone.model)
        data_hash = ""
        arch = backbone.architecture() if callable(getattr(backbone, "architecture", None)) else {}
        extra = {"source": "backbone", "backbone_options": arch, "weights": str(weights) if weights else None}
    return ExportMeta.from_backbone(backbone, name, source_hash=source, training_data_hash=data_hash, extra=extra)


def _dataset_images(spec: ComponentSpec, regs, size, limit: int | None = None):
    """(uint8 [N, H, W, 3] at size, identities, modalities) from a dataset."""
    import numpy as np

    from ..data.io import resize

    ds = regs.dataset.build(spec)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise DataError(f"dataset {spec.name!r} is empty")
    samples = [ds[i] for i in range(n)]
    imgs = np.stack([resize(s.image, size) for s in samples])
    return imgs, [s.identity for s in samples], [s.modality for s in samples]


def _folder_images(folder: Path, size, limit: int):
    import numpy as np

    from ..data.io import list_images, load_image, resize

    files = list_images(folder)[:limit]
    if not files:
        raise DataError(f"parity.images {folder}: no images in the folder")
    return np.stack([resize(load_image(p), size) for p in files])


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    import numpy as np
    import torch

    from .. import get_registries
    from ..export import Tolerance, compare_models, convert_fp16, export_onnx, quantize_int8
    from .common import prepare_out, save_run_config, write_json

    t0 = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    regs = get_registries()
    backbone = _build_backbone(config.backbone, regs)
    meta = _meta(backbone, config.backbone)
    size = tuple(meta.input_size)
    if config.parity.images is not None:
        parity = _folder_images(config.parity.images, size, config.parity.count)
        parity_src = str(config.parity.images)
    else:
        parity, _, _ = _dataset_images(config.parity.dataset, regs, size, config.parity.count)
        parity_src = config.parity.dataset.name
    out = prepare_out(config.out)
    save_run_config(out, "export", config)
    path = out / f"{config.name}.onnx"
    result = export_onnx(
        backbone.model, meta, path, parity, opset=config.opset,
        tolerance=Tolerance(config.parity.max_abs_diff, config.parity.min_cosine),
        check_batches=config.check_batches, exporter=config.exporter, threads=config.threads,
    )
    report: dict[str, Any] = {"model": result.as_dict(), "parity_source": parity_src, "variants": []}
    if config.fp16 or config.int8 != "none":
        imgs, ids, mods = _dataset_images(config.compare.dataset, regs, size)
        mods = np.array(mods)
        probe = [i for i, m in enumerate(mods) if m == "sketch"]
        gal = [i for i, m in enumerate(mods) if m == "photo"]
        if not probe or not gal:
            raise DataError(f"compare.dataset {config.compare.dataset.name!r} needs both sketches (probes) and photos (gallery)")

        def cost(variant: dict[str, Any]) -> dict[str, Any]:
            cmp = compare_models(path, variant["path"], imgs[probe], [ids[i] for i in probe],
                                 imgs[gal], [ids[i] for i in gal])
            return {**variant, "compare": cmp}

        if config.fp16:
            report["variants"].append(cost(convert_fp16(path, out / f"{config.name}.fp16.onnx")))
        if config.int8 != "none":
            calib = imgs[np.random.default_rng(0).permutation(len(imgs))[: config.compare.calibration]]
            q = quantize_int8(path, out / f"{config.name}.int8-{config.int8}.onnx", config.int8, calibration=calib)
            report["variants"].append(cost(q))
    report["seconds"] = round(time.time() - t0, 3)
    report_path = out / f"{config.name}.report.json"
    write_json(report_path, report)
    return {
        "out": str(out), "model": str(path), "report": str(report_path), "opset": config.opset,
        "backbone": meta.backbone, "embedding_dim": meta.embedding_dim, "input_size": list(size),
        "max_abs_diff": result.max_abs_diff, "min_cosine": result.min_cosine,
        "batches_checked": result.batches_checked, "model_hash": result.model_hash,
        "variants": [{"path": v["path"], "precision": v["precision"], "cosine_min": v["compare"]["cosine_min"],
                      "rank1": v["compare"]["rank1"], "rank1_change": v["compare"]["rank1_change"]}
                     for v in report["variants"]],
        "seconds": report["seconds"],
    }
