"""Built-in trainable backbones: IR-18/34/50/101 (AdaFace layout), MobileFaceNet,
and ``matcher``, which rebuilds any of them from a ``c4s train-matcher`` folder.

Each component is a light factory: building it builds the torch module
(``self.model``, from the private ``c4s_plugins._iresnet``) and loads
``weights`` if given. Published AdaFace checkpoints load as they are: their
``.ckpt`` holds ``state_dict`` with ``model.`` prefixes and ``head.*`` keys
(ignored). Input: 112x112 BGR, ``(x/255 - 0.5) / 0.5``, as AdaFace.

Contract beyond the hookspec (used by ``train-matcher``):

- ``model``: the ``torch.nn.Module``; ``forward(x)`` returns the
  *unnormalised* embedding [B, D] (AdaFace's own forward returns
  ``(x/|x|, |x|)``; take the norm yourself);
- ``to_input(x01)``: float RGB [B, 3, H, W] in [0, 1] -> the model's input
  (channel order and normalisation applied);
- ``embed(images)``: list of uint8 HxWx3 RGB (any size; resized) ->
  L2-normalised float32 numpy [B, D];
- ``load_weights(path)`` and ``architecture()`` (the options that rebuild it).

torch is imported only when a component is built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import ConfigError, DataError

__all__ = [
    "IR18", "IR34", "IR50", "IR101", "MobileFaceNetBackbone", "Matcher",
    "TorchBackbone", "EmbedConfig", "PretrainedConfig", "load_state_dict_strict", "clean_state_dict", "resolve_device",
]

Device = Literal["auto", "cpu", "cuda"]
# Prefixes that training frameworks put before the backbone's own names.
STRIP_PREFIXES = ("module.", "model.", "backbone.", "_orig_mod.")
# Keys of a recognition checkpoint that belong to the margin head, not the backbone.
HEAD_PREFIXES = ("head.",)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use device=cpu or auto")
    return device


def clean_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop head keys and strip ``module.``/``model.``/``backbone.`` prefixes."""
    out = {}
    for k, v in sd.items():
        if k.startswith(HEAD_PREFIXES):
            continue
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_state_dict_strict(model, sd: Mapping[str, Any], source: str) -> None:
    """Load ``sd`` into ``model`` after :func:`clean_state_dict`; any missing or
    unexpected key, or a shape mismatch, is a DataError listing them."""
    sd = clean_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(label, keys):
            if not keys:
                return ""
            more = f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            return f"\n  {label} ({len(keys)}): " + ", ".join(keys[:8]) + more

        raise DataError(
            f"weights {source} do not fit {type(model).__name__}:"
            + show("missing keys", missing) + show("unexpected keys", unexpected)
            + show("shape mismatches", shapes)
            + "\n  Check the backbone name and its options (widths, embedding_dim, input_size) "
            "against the checkpoint."
        )
    model.load_state_dict(sd, strict=True)


# -- configs ---------------------------------------------------------------------------


class EmbedConfig(ComponentConfig):
    """How embed() runs, shared by every torch backbone (none of it changes the network)."""

    device: Device = Field("auto", description="Where embed() runs: auto (cuda if available), cpu or cuda.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per forward pass in embed().")
    flip_fusion: bool = Field(
        False, description="Embed each image and its mirror image and sum the two (AdaFace's evaluation "
        "habit): a little more robust, twice the compute; `c4s export` puts it in the graph.")


class TorchBackboneConfig(EmbedConfig):
    weights: Path | None = Field(
        None, description="Checkpoint to load: .safetensors, or a torch file (AdaFace .ckpt with "
        "state_dict and model. prefixes); head.* keys are ignored. None: random init."
    )
    embedding_dim: int = Field(512, ge=8, le=4096, description="Embedding size (512 for published weights).")
    input_size: int = Field(112, ge=16, le=448, description="Square input side, a multiple of 16 (112 for published weights).")

    @field_validator("input_size")
    @classmethod
    def _mult16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"input_size must be a multiple of 16 (16 to 448), got {v}")
        return v


class IRConfig(TorchBackboneConfig):
    widths: tuple[int, int, int, int] = Field(
        (64, 128, 256, 512), description="Channels of the four stages (published weights: 64, 128, 256, 512); "
        "smaller for quick tests, e.g. (8, 8, 16, 16)."
    )
    dropout: float = Field(0.4, ge=0.0, lt=1.0, description="Dropout before the output linear layer (AdaFace: 0.4).")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v):
        if any(c < 1 or c > 4096 for c in v):
            raise ValueError(f"widths must be 1 to 4096 channels each, got {v}")
        return v


class MobileFaceNetConfig(TorchBackboneConfig):
    blocks: tuple[int, int, int, int] = Field((1, 4, 6, 2), description="Residual units per stage (insightface get_mbf: 1, 4, 6, 2).")
    scale: int = Field(2, ge=1, le=8, description="Channel multiplier of the stages (64*scale, 128*scale).")
    width: float = Field(1.0, gt=0.0, le=4.0, description="Extra multiplier on every channel count (1.0: the insightface net).")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v):
        if any(b < 1 or b > 64 for b in v):
            raise ValueError(f"blocks must be 1 to 64 units each, got {v}")
        return v


class PretrainedConfig(EmbedConfig):
    """Options shared by backbones that start from a registered weight source."""

    pretrained: bool = Field(True, description="Start from the weight source's trained weights "
                             "(`c4s weights fetch`); false: random init.")
    weights: Path | None = Field(None, description="A .safetensors state dict to load instead (e.g. a fine-tuned one).")


# -- the shared machinery --------------------------------------------------------------


class TorchBackbone:
    """Base of torch backbones: builds ``self.model``, loads weights, embeds images."""

    name = "torch-backbone"
    Config = TorchBackboneConfig
    color_order: Literal["RGB", "BGR"] = "BGR"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # options that do not change the network (left out of architecture())
    runtime_options = ("weights", "device", "batch_size", "pretrained", "flip_fusion")
    # name of a registered weight source: with ``pretrained: true`` in the Config
    # (and no ``weights``), the network starts from its verified tensors
    weight_source: str | None = None

    def __init__(self, config: TorchBackboneConfig):
        self.config = config
        self.input_size = (config.input_size, config.input_size)
        self.embedding_dim = config.embedding_dim
        self.device = resolve_device(config.device)
        self.model = self.build_model()
        if config.weights is not None:
            self.load_weights(config.weights)
        elif self.weight_source and getattr(config, "pretrained", False):
            from c4s_core import weights as store

            sd = self.pretrained_state(store.load(self.weight_source))
            load_state_dict_strict(self.model, sd, str(store.folder(self.weight_source)))
        self.model.to(self.device).eval()

    def pretrained_state(self, tensors: Mapping[str, Any]) -> Mapping[str, Any]:
        """The weight source's tensors as this network's state dict (override to adapt)."""
        return tensors

    def build_model(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def architecture(self) -> dict[str, Any]:
        """Options that rebuild this network (JSON), without weights or device."""
        return json.loads(self.config.model_dump_json(exclude=set(self.runtime_options)))

    def load_weights(self, path: str | Path) -> None:
        from c4s_core.training import load_weights

        load_state_dict_strict(self.model, load_weights(path), str(path))

    def forward(self, x):
        """Normalised input [B, 3, H, W] -> unnormalised embedding [B, D]."""
        return self.model(x)

    __call__ = forward

    def to_input(self, x01):
        """Float RGB in [0, 1], [B, 3, H, W] -> model input (channel order, mean/std)."""
        import torch

        if self.color_order == "BGR":
            x01 = x01.flip(1)
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def images_to_tensor(self, images: Sequence[np.ndarray]):
        """uint8 HxWx3 RGB images (any size) -> float [B, 3, H, W] in [0, 1] at input_size."""
        import torch

        from c4s_core.data.io import resize

        arr = np.stack([resize(np.asarray(im, np.uint8), self.input_size) for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised float32 embeddings [B, D] of uint8 RGB images, in eval mode."""
        import torch

        if len(images) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                bs = self.config.batch_size
                for i in range(0, len(images), bs):
                    x = self.to_input(self.images_to_tensor(images[i:i + bs])).to(self.device)
                    y = self.model(x).float()
                    if self.config.flip_fusion:  # unnormalised sum: the surer view weighs more
                        y = y + self.model(x.flip(3)).float()
                    out.append(torch.nn.functional.normalize(y, dim=1).cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out).numpy().astype(np.float32)


class _IR(TorchBackbone):
    Config = IRConfig
    num_layers = 50

    def build_model(self):
        from ._iresnet import IResNet

        c = self.config
        return IResNet(self.num_layers, c.input_size, c.widths, c.embedding_dim, c.dropout)


class IR18(_IR):
    """IR-18 face recogniser (AdaFace layout), 112x112 BGR -> 512-d."""

    name = "ir_18"
    aliases = ("r18",)
    num_layers = 18


class IR34(_IR):
    """IR-34 face recogniser (AdaFace layout), 112x112 BGR -> 512-d."""

    name = "ir_34"
    aliases = ("r34",)
    num_layers = 34


class IR50(_IR):
    """IR-50 face recogniser (AdaFace layout; loads AdaFace's published ir_50 checkpoints)."""

    name = "ir_50"
    aliases = ("r50",)
    num_layers = 50


class IR101(_IR):
    """IR-101 face recogniser (AdaFace layout; loads AdaFace's published ir_101 checkpoints)."""

    name = "ir_101"
    aliases = ("r100", "ir_100")
    num_layers = 100


class MobileFaceNetBackbone(TorchBackbone):
    """MobileFaceNet (insightface arcface_torch layout): light 112x112 face recogniser."""

    name = "mobilefacenet"
    aliases = ("mbf",)
    Config = MobileFaceNetConfig

    def build_model(self):
        from ._iresnet import MobileFaceNet

        c = self.config
        return MobileFaceNet(c.embedding_dim, c.blocks, c.scale, c.input_size, c.width)


# -- a trained matcher folder ----------------------------------------------------------


class MatcherConfig(EmbedConfig):
    path: Path = Field(
        description="Matcher folder written by `c4s train-matcher` (model.safetensors + matcher.json), "
        "its matcher.json, or the run folder (its best/ is used)."
    )


class Matcher:
    """A trained matcher folder (model.safetensors + matcher.json), rebuilt as its backbone."""

    name = "matcher"
    aliases = ("checkpoint",)
    Config = MatcherConfig

    def __init__(self, config: MatcherConfig):
        from c4s_core import get_registries
        from c4s_core.config import validate
        from c4s_core.matcher_folder import read_matcher

        self.config = config
        folder, info = read_matcher(config.path)
        spec = info["backbone"]
        entry = get_registries().backbone.get(spec["name"])
        if entry.cls is Matcher:
            raise DataError(f"{folder / 'matcher.json'}: backbone 'matcher' cannot name itself")
        opts = {**spec.get("options", {}), "device": config.device, "batch_size": config.batch_size,
                "flip_fusion": config.flip_fusion, "pretrained": False}  # the folder's weights replace any pretrained start
        opts = {k: v for k, v in opts.items() if k in entry.config_cls.model_fields}
        inner = entry.cls(validate(entry.config_cls, opts, f"backbone options in {folder / 'matcher.json'}"))
        inner.load_weights(folder / "model.safetensors")
        self.folder, self.info, self.backbone = folder, info, inner
        self.inner_name = entry.name  # what a matcher trained from this one records as its backbone
        self.input_size = tuple(inner.input_size)
        self.embedding_dim = int(inner.embedding_dim)
        self.color_order = inner.color_order
        self.mean, self.std = inner.mean, inner.std
        self.model = inner.model
        self.device = inner.device

    def architecture(self) -> dict[str, Any]:
        return self.backbone.architecture()

    def load_weights(self, path: str | Path) -> None:
        self.backbone.load_weights(path)

    def to_input(self, x01):
        return self.backbone.to_input(x01)

    def forward(self, x):
        return self.backbone.forward(x)

    __call__ = forward

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.backbone.embed(images)


@hookimpl
def register_backbones(register):
    for cls in (IR18, IR34, IR50, IR101, MobileFaceNetBackbone, Matcher):
        register(cls)
