"""Built-in backbone ``onnx``: an exported matcher (``c4s export``) run by onnxruntime.

Lets ``evaluate`` (or anything taking a backbone) use the deployed file exactly
as it will run: ``backbone={name: onnx, options: {path: out/model.onnx}}``.
Input size and preprocessing come from the file's metadata; the device is an
explicit onnxruntime provider (asking for CUDA where it is not active is an
error). onnxruntime is imported only when the component is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from c4s_core import ComponentConfig, hookimpl


class OnnxConfig(ComponentConfig):
    path: Path = Field(description="ONNX model written by `c4s export` (uint8 RGB NHWC in, unit embeddings out).")
    device: Literal["cpu", "cuda", "tensorrt"] = Field(
        "cpu", description="onnxruntime execution provider: cpu, cuda or tensorrt (an inactive one is an error)."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Images per onnxruntime run.")
    threads: int | None = Field(None, ge=1, le=512, description="onnxruntime intra-op threads (None: its default).")


class OnnxBackbone:
    """An exported matcher (.onnx from `c4s export`), run by onnxruntime on an explicit device."""

    name = "onnx"
    aliases = ("onnx_matcher",)
    Config = OnnxConfig
    color_order = "RGB"  # what embed() takes; the graph reorders for its backbone

    def __init__(self, config: OnnxConfig):
        from c4s_core.runtime import OnnxEmbedder

        self.config = config
        self.runtime = OnnxEmbedder(config.path, device=config.device, batch_size=config.batch_size,
                                    threads=config.threads)
        self.input_size = tuple(self.runtime.input_size)
        self.embedding_dim = int(self.runtime.embedding_dim)
        self.metadata = self.runtime.metadata
        self.model_hash = self.runtime.model_hash

    def embed(self, images) -> np.ndarray:
        """L2-normalised float32 [B, D] for uint8 RGB images (resized to the model's input size)."""
        return self.runtime.embed(list(images))


@hookimpl
def register_backbones(register):
    register(OnnxBackbone)
