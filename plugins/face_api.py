"""dlib's pretrained ResNet face descriptor in torch, from face-api's TF.js weights.

Registers:

- weights ``face_api_resnet``: npm ``@vladmandic/face-api@1.7.15`` (MIT),
  ``model/face_recognition_model.bin`` and its manifest: dlib's
  ``dlib_face_recognition_resnet_model_v1`` (Davis King, public domain; about
  3 M faces of 7,485 identities; LFW 99.38 %), per-tensor uint8-quantised by
  face-api's author. ``c4s weights fetch face_api_resnet`` converts it once.
- backbone ``dlib_r29``: that network as a trainable torch module
  (``c4s_plugins._dlib_resnet``), 150 px RGB -> 128-d, starting from the
  converted weights (``pretrained``), so ``train-matcher`` fine-tunes it.
  dlib trained it on its own 5-point face chip (150 px, padding 0.25): the
  ``dlib`` aligner's ``chip`` option gives exactly that crop; on the c4s
  template it works too, a little less well.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from c4s_core import hookimpl
from c4s_core.weights import WeightSource, read_tfjs, read_tfjs_manifest

from .backbones import PretrainedConfig, TorchBackbone

MANIFEST = "model/face_recognition_model-weights_manifest.json"
SHARD = "model/face_recognition_model.bin"
# dlib's input layer subtracts this mean (RGB); face-api then divides by 255
MEAN_RGB = (122.782, 117.001, 104.298)


class FaceApiResNet(WeightSource):
    """dlib's ResNet-29 face descriptor (LFW 99.38 %), from face-api's TF.js weights."""

    name = "face_api_resnet"
    package = "@vladmandic/face-api"
    version = "1.7.15"
    sha256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
    licence = "MIT (face-api, Vladimir Mandic); weights: public domain (dlib-models, Davis King)"
    upstream = ("dlib_face_recognition_resnet_model_v1 (dlib.net, dlib-models): ResNet-29, metric learning on "
                "about 3 M faces of 7,485 people, LFW 99.38 %; TF.js port by face-api.js, uint8-quantised")
    files = (MANIFEST, SHARD)

    def convert(self, files):
        from ._dlib_resnet import from_tfjs

        tensors = read_tfjs(read_tfjs_manifest(files[MANIFEST], MANIFEST), {"face_recognition_model.bin": files[SHARD]},
                            f"{self.spec} {SHARD}")
        return from_tfjs(tensors)


class DlibR29Config(PretrainedConfig):
    input_size: int = Field(150, ge=112, le=448, description="Square input side (dlib's chip: 150; below 112 the "
                            "last units have no pixels left).")
    embedding_dim: Literal[128] = Field(128, description="Descriptor size (dlib's: 128).")


class DlibR29(TorchBackbone):
    """dlib's ResNet-29 face descriptor in torch (pretrained, fine-tunable), 150 px RGB -> 128-d."""

    name = "dlib_r29"
    aliases = ("dlib_torch",)
    Config = DlibR29Config
    color_order = "RGB"
    mean = tuple(m / 255.0 for m in MEAN_RGB)
    std = (1.0, 1.0, 1.0)  # (x - mean) / 255 with x in 0..255
    weight_source = FaceApiResNet.name

    def build_model(self):
        from ._dlib_resnet import DlibResNet

        return DlibResNet(self.config.embedding_dim)

    def feature_map(self, x):
        """Last feature map [B, 256, h, w] of model input ``x`` (for identity tokens)."""
        return self.model.features(x)


@hookimpl
def register_weights(register):
    register(FaceApiResNet)


@hookimpl
def register_backbones(register):
    register(DlibR29)

