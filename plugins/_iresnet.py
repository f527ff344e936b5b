"""IR-ResNet backbones in the AdaFace (mk-minchul/AdaFace ``net.py``) layout.

Private to the ``backbones`` plugin and imported lazily (it imports torch).
Module names follow AdaFace's ``Backbone`` exactly, so its published
checkpoints load without renaming:

- ``input_layer``: Conv2d(3, 64, 3, 1, 1) + BatchNorm2d + PReLU;
- ``body.N``: ``BasicBlockIR`` units (AdaFace uses them for every depth up to
  100; the bottleneck units only for 152/200, which c4s does not ship). Each
  has ``res_layer`` (BN, conv3x3, BN, PReLU, conv3x3 with the stride, BN) and
  ``shortcut_layer`` (MaxPool2d(1, stride) when the width is kept, otherwise
  conv1x1 with the stride + BN);
- ``output_layer``: BatchNorm2d, Dropout, Flatten, Linear(C*h*w, 512),
  BatchNorm1d(512, affine=False).

Unlike AdaFace's ``forward``, which returns ``(x / |x|, |x|)``, ``forward`` here
returns the unnormalised embedding ``x`` [B, D]: the caller takes the norm
(AdaFace's head needs it) and normalises. ``widths`` and ``input_size`` shrink
the network for tests (the official nets are widths (64, 128, 256, 512) at 112).
"""

from __future__ import annotations

import torch
from torch import nn

# units per stage, as AdaFace's get_blocks
UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), -1)


class BasicBlockIR(nn.Module):
    """AdaFace's ``BasicBlockIR``: pre-activation residual unit, stride on the second conv."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """IR-ResNet (AdaFace ``Backbone(input_size, num_layers, 'ir')``).

    Args:
        num_layers: 18, 34, 50 or 100.
        input_size: square input side; a multiple of 16 (112 for the official nets).
        widths: channels of the four stages; the stem has ``widths[0]``.
        embedding_dim: output size (512 in AdaFace).
        dropout: dropout before the final linear layer (AdaFace: 0.4).
    """

    def __init__(
        self,
        num_layers: int = 50,
        input_size: int = 112,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        dropout: float = 0.4,
    ):
        super().__init__()
        if num_layers not in UNITS:
            raise ValueError(f"num_layers must be one of {sorted(UNITS)}, got {num_layers}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        w = tuple(int(c) for c in widths)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, w[0], (3, 3), 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.PReLU(w[0])
        )
        units = []
        in_c = w[0]
        for depth, n in zip(w, UNITS[num_layers], strict=True):
            units.append(BasicBlockIR(in_c, depth, 2))
            units += [BasicBlockIR(depth, depth, 1) for _ in range(n - 1)]
            in_c = depth
        self.body = nn.Sequential(*units)
        side = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(w[-1]),
            nn.Dropout(dropout),
            Flatten(),
            nn.Linear(w[-1] * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=False),
        )
        _init_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, 3, H, W] normalised input -> unnormalised embedding [B, D]."""
        return self.output_layer(self.body(self.input_layer(x)))


# -- MobileFaceNet, insightface arcface_torch layout ----------------------------------


def _ch(c: int, width: float) -> int:
    """Scaled channel count, a multiple of 8 (at least 8); exact at width 1."""
    return c if width == 1.0 else max(8, int(round(c * width / 8)) * 8)


class ConvBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, groups=groups, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x):
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 expand to ``groups`` channels, depthwise kxk, 1x1 project; optional residual."""

    def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
            ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride),
            LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
        )

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, c, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x):
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv over the last feature map, then linear + BN1d."""

    def __init__(self, channels: int, side: int, embedding_dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, groups=channels, kernel=(side, side), stride=(1, 1), padding=(0, 0)),
            Flatten(),
            nn.Linear(channels, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet as insightface's ``arcface_torch/backbones/mobilefacenet.py``
    (``get_mbf``: blocks (1, 4, 6, 2), scale 2), same module names.

    ``width`` scales every channel count (1.0: the official net); ``input_size``
    must be a multiple of 16 (the GDC kernel is input_size/16).
    ``forward`` returns the unnormalised embedding [B, D].
    """

    def __init__(
        self,
        embedding_dim: int = 512,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        scale: int = 2,
        input_size: int = 112,
        width: float = 1.0,
    ):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        c1, c2 = _ch(64 * scale, width), _ch(128 * scale, width)
        g64, g128, g256, g512 = (_ch(g, width) for g in (64, 128, 256, 512))
        g64 = g64 if c1 % g64 == 0 else 1
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=g64))
        else:
            self.layers.append(Residual(c1, num_block=blocks[0], groups=g128))
        self.layers.extend([
            DepthWise(c1, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=g128),
            Residual(c1, num_block=blocks[1], groups=g128),
            DepthWise(c1, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=g256),
            Residual(c2, num_block=blocks[2], groups=g256),
            DepthWise(c2, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=g512),
            Residual(c2, num_block=blocks[3], groups=g256),
        ])
        sep = _ch(512, width)
        self.conv_sep = ConvBlock(c2, sep, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(sep, input_size // 16, embedding_dim)
        _init_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def _init_weights(modules) -> None:
    """Kaiming (fan_out) convs and linears, BN at identity: as AdaFace and insightface."""
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
