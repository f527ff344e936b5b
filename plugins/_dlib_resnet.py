"""dlib's ResNet-29 face descriptor (``dlib_face_recognition_resnet_model_v1``)
as a torch module, in the layout face-api's TF.js port gives its weights
(``src/faceRecognitionNet``): every conv is conv + bias, then a per-channel
scale and shift (dlib's affine layers, where BatchNorm was during training),
then ReLU. Residual units add their input; the down units (stride-2 'valid'
conv) add the input average-pooled 2x2 with its channels zero-padded, and pad
their own output with a zero row and column where the pooled map is larger.
150 px in: 72 -> 35 (max-pool) -> 17 -> 8 -> 4 -> 2, mean, 256 -> 128 linear.
Any input size works (the padding rule adapts); the weights were trained on
dlib's 150 px 5-point face chip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# name -> (in channels, out channels, down)
UNITS = (
    ("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False), ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False), ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False), ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


class Scale(nn.Module):
    """Per-channel ``x * weight + bias`` (dlib's affine layer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class ConvScale(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=True)
        self.scale = Scale(cout)

    def forward(self, x):
        return self.scale(self.conv(x))


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        # TF 'valid' for the stride-2 conv, 'same' (pad 1) for stride 1
        self.conv1 = ConvScale(cin, cout, 3, 2 if down else 1, 0 if down else 1)
        self.conv2 = ConvScale(cout, cout, 3, 1, 1)

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            x = F.avg_pool2d(x, 2, 2)
            dh, dw = x.shape[2] - out.shape[2], x.shape[3] - out.shape[3]
            if dh or dw:  # zeros after the last row / column, as face-api does
                out = F.pad(out, (0, max(dw, 0), 0, max(dh, 0)))
            if x.shape[1] != out.shape[1]:
                x = F.pad(x, (0, 0, 0, 0, 0, out.shape[1] - x.shape[1]))
        return F.relu(out + x)


class DlibResNet(nn.Module):
    """Image [B, 3, H, W] (RGB, ``(x - mean_rgb) / 255``) -> 128-d descriptor (unnormalised)."""

    def __init__(self, embedding_dim: int = 128):
        super().__init__()
        self.conv32_down = ConvScale(3, 32, 7, 2, 0)
        for name, cin, cout, down in UNITS:
            self.add_module(name, Residual(cin, cout, down))
        self.fc = nn.Linear(256, embedding_dim, bias=False)
        self.units = [n for n, *_ in UNITS]

    def features(self, x):
        """The last feature map [B, 256, h, w] (2x2 at 150 px)."""
        x = F.max_pool2d(F.relu(self.conv32_down(x)), 3, 2)
        for name in self.units:
            x = getattr(self, name)(x)
        return x

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def from_tfjs(tensors: dict) -> dict:
    """face-api's TF.js tensors (``conv32_1/conv1/conv/filters`` ...) -> this
    module's state dict: HWIO filters to OIHW, the ``fc`` matrix transposed."""
    import numpy as np

    out = {}
    for name, arr in tensors.items():
        parts = name.split("/")
        if name == "fc":
            out["fc.weight"] = np.ascontiguousarray(arr.T)
            continue
        leaf = "/".join(parts[-2:])
        key = {"conv/filters": "conv.weight", "conv/bias": "conv.bias",
               "scale/weights": "scale.weight", "scale/biases": "scale.bias"}.get(leaf)
        if key is None:
            raise ValueError(f"unexpected tensor {name!r} in face-api's face recognition weights")
        if leaf == "conv/filters":
            arr = np.ascontiguousarray(arr.transpose(3, 2, 0, 1))
        out[".".join(parts[:-2] + [key])] = arr.astype(np.float32)
    return out
