"""sirius-ai's MobileFaceNet (``MobileFaceNet_TF``, 192-d) as a torch module, in
the form human-models ships it: a TF.js graph (``models/mobilefacenet.json``)
with BatchNorm folded into every conv (conv + bias, no BN left) and PReLU
written out as ``relu(x) + m * (x - |x|)`` with ``m = alpha / 2``.

The graph (112 px RGB, ``(x - 127.5) / 128``), NHWC, TF 'SAME' padding:

- ``Conv2d_0``: 3x3/2 conv 3->64, PReLU; ``SeparableConv2d``: 3x3 depthwise
  64; ``Conv``: 1x1 64->64, linear;
- inverted residual blocks ``Conv2d_{2..6}_InvResBlock_{i}``: 1x1 expand +
  PReLU, 3x3 depthwise (stride 2 in the first block of stages 2, 3, 5), 1x1
  project (linear), plus the input when the stride is 1: stage 2: 5 x (64,
  expand 128); 3: 1 x (->128, expand 256); 4: 6 x (128, 256); 5: 1 x (128,
  512); 6: 2 x (128, 256);
- ``Conv2d_7``: 1x1 128->512, PReLU; ``Logits``: 7x7 depthwise 'VALID'
  (global depthwise conv), 1x1 512->512, 1x1 512->192 (``LinearConv1x1``),
  all linear; ``embeddings`` = that / its L2 norm.

One quirk is reproduced on purpose: in the shipped graph every depthwise conv
is a ``FusedDepthwiseConv2dNative`` with a fused ``Relu`` whose output also
feeds the PReLU's ``Abs``/``Sub``, so ``x - |x|`` is 0 and those 17 PReLUs act
as plain ReLUs (the converter fused the Relu; upstream trained PReLU there).
``depthwise_prelu=True`` restores upstream's PReLU with the shipped slopes
(not what TF.js computes).
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import nn

SCOPE = "MobileFaceNet/MobileFaceNet/"
EMBEDDING_DIM = 192
# (TF scope, in channels, expanded channels, out channels, stride)
BLOCKS = tuple(
    [(f"Conv2d_2_InvResBlock_{i}", 64, 128, 64, 2 if i == 0 else 1) for i in range(5)]
    + [("Conv2d_3_InvResBlock_0", 64, 256, 128, 2)]
    + [(f"Conv2d_4_InvResBlock_{i}", 128, 256, 128, 1) for i in range(6)]
    + [("Conv2d_5_InvResBlock_0", 128, 512, 128, 2)]
    + [(f"Conv2d_6_InvResBlock_{i}", 128, 256, 128, 1) for i in range(2)]
)


def same_pad(x, k: int, s: int):
    """TF 'SAME' padding (the extra pixel goes after, unlike torch's symmetric pad)."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    if ph == pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class ConvAct(nn.Module):
    """Conv (+ bias: the folded BatchNorm), then PReLU, ReLU or nothing."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, depthwise: bool = False,
                 act: str | None = None, same: bool = True):
        super().__init__()
        self.k, self.stride, self.same = k, stride, same
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=cin if depthwise else 1, bias=True)
        self.act = nn.PReLU(cout) if act == "prelu" else nn.ReLU() if act == "relu" else nn.Identity()

    def forward(self, x):
        if self.same and self.k > 1:
            x = same_pad(x, self.k, self.stride)
        return self.act(self.conv(x))


class InvResBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, dw_act: str):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.expand = ConvAct(cin, mid, 1, act="prelu")
        self.dw = ConvAct(mid, mid, 3, stride, depthwise=True, act=dw_act)
        self.project = ConvAct(mid, cout, 1)

    def forward(self, x):
        out = self.project(self.dw(self.expand(x)))
        return out + x if self.residual else out


class MobileFaceNetTFJS(nn.Module):
    """Image [B, 3, 112, 112] (RGB, ``(x - 127.5) / 128``) -> 192-d embedding (unnormalised)."""

    def __init__(self, depthwise_prelu: bool = False):
        super().__init__()
        dw_act = "prelu" if depthwise_prelu else "relu"
        self.conv0 = ConvAct(3, 64, 3, 2, act="prelu")
        self.dw1 = ConvAct(64, 64, 3, depthwise=True, act=dw_act)
        self.pw1 = ConvAct(64, 64, 1)
        self.blocks = nn.Sequential(*[InvResBlock(cin, mid, cout, s, dw_act) for _, cin, mid, cout, s in BLOCKS])
        self.conv7 = ConvAct(128, 512, 1, act="prelu")
        self.gdc = ConvAct(512, 512, 7, depthwise=True, same=False)  # 'VALID': 7x7 -> 1x1
        self.linear = ConvAct(512, 512, 1)
        self.embedding = ConvAct(512, EMBEDDING_DIM, 1)

    def features(self, x):
        """The last feature map [B, 512, 7, 7] (``Conv2d_7``, before the global depthwise conv)."""
        x = self.pw1(self.dw1(self.conv0(x)))
        return self.conv7(self.blocks(x))

    def forward(self, x):
        return self.embedding(self.linear(self.gdc(self.features(x)))).flatten(1)


def tfjs_names(depthwise_prelu: bool = True) -> dict[str, str]:
    """state-dict name -> TF.js tensor name (``..._weights``, ``..._bn_offset``,
    and the PReLU constant ``.../mul``, which is alpha / 2)."""
    units = [("conv0", "Conv2d_0", "Conv2D", True), ("dw1", "SeparableConv2d", "depthwise", depthwise_prelu),
             ("pw1", "Conv", "Conv2D", False)]
    for i, (scope, *_rest) in enumerate(BLOCKS):
        units += [(f"blocks.{i}.expand", f"{scope}/Conv", "Conv2D", True),
                  (f"blocks.{i}.dw", f"{scope}/SeparableConv2d", "depthwise", depthwise_prelu),
                  (f"blocks.{i}.project", f"{scope}/Conv_1", "Conv2D", False)]
    units += [("conv7", "Conv2d_7", "Conv2D", True)]
    out = {}
    for mod, scope, op, prelu in units:
        out[f"{mod}.conv.weight"] = f"{SCOPE}{scope}/{op}_weights"
        out[f"{mod}.conv.bias"] = f"{SCOPE}{scope}/{op}_bn_offset"
        if prelu:
            out[f"{mod}.act.weight"] = f"{SCOPE}{scope}/mul"
    for mod, scope, op in (("gdc", "SeparableConv2d", "depthwise"), ("linear", "Conv", "Conv2D"),
                           ("embedding", "LinearConv1x1", "Conv2D")):
        out[f"{mod}.conv.weight"] = f"MobileFaceNet/Logits/{scope}/{op}_weights"
        out[f"{mod}.conv.bias"] = f"MobileFaceNet/Logits/{scope}/{op}_bn_offset"
    return out


def from_tfjs(tensors: dict) -> dict:
    """The graph's tensors -> this module's state dict with ``depthwise_prelu``
    (the superset: a ReLU model drops the ``*dw*.act.weight`` keys, see
    :func:`for_model`). Filters HWIO -> OIHW, depthwise HW(C)1 -> (C)1HW,
    PReLU ``mul`` x 2 -> alpha. Any tensor left over or missing is an error:
    it would mean a graph other than the one this module mirrors."""
    names = tfjs_names(depthwise_prelu=True)
    extra = sorted(set(tensors) - set(names.values()) - {"embeddings/Sum/reduction_indices", "embeddings/Maximum/y"})
    missing = sorted(set(names.values()) - set(tensors))
    if extra or missing:
        raise ValueError(f"not the MobileFaceNet graph this module mirrors: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    out = {}
    for key, tf_name in names.items():
        a = np.asarray(tensors[tf_name], np.float32)
        if key.endswith("conv.weight"):  # HWIO -> OIHW; depthwise H W C 1 -> C 1 H W
            a = a.transpose(2, 3, 0, 1) if _depthwise(key) else a.transpose(3, 2, 0, 1)
        elif key.endswith("act.weight"):
            a = a * 2.0
        out[key] = np.ascontiguousarray(a)
    return out


def _depthwise(key: str) -> bool:
    return key.split(".")[0] in ("dw1", "gdc") or ".dw." in key


def for_model(sd: dict, depthwise_prelu: bool) -> dict:
    """The stored state dict for a model built with ``depthwise_prelu``."""
    if depthwise_prelu:
        return dict(sd)
    return {k: v for k, v in sd.items() if not (k.endswith("act.weight") and _depthwise(k))}


def to_tfjs(model: MobileFaceNetTFJS) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_tfjs` (tests write random networks in the graph's layout)."""
    names = tfjs_names(depthwise_prelu=True)
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    out = {}
    for key, tf_name in names.items():
        if key not in sd:  # a ReLU depthwise: the graph still holds a slope constant
            out[tf_name] = np.full(model.get_submodule(key.rsplit(".", 2)[0]).conv.out_channels, 0.125, np.float32)
            continue
        a = sd[key]
        if key.endswith("conv.weight"):
            a = a.transpose(2, 3, 0, 1) if _depthwise(key) else a.transpose(2, 3, 1, 0)
        elif key.endswith("act.weight"):
            a = a / 2.0
        out[tf_name] = np.ascontiguousarray(a, np.float32)
    return out
