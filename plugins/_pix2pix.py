"""Torch parts of the ``gan`` generator (imported lazily by c4s_plugins.gan).

pix2pix (Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks"):

- :class:`UNetGenerator`: encoder-decoder with skip connections; Conv(4, s2) +
  InstanceNorm + LeakyReLU(0.2) down, ConvTranspose(4, s2) + InstanceNorm + ReLU
  up, dropout 0.5 in the innermost decoder layers (the paper's only noise
  source), tanh output. The style enters as one-hot input channels, one per
  style, concatenated to the RGB photo.
- :class:`PatchDiscriminator`: the PatchGAN, a stack of Conv(4) layers whose
  output is a map of real/fake logits, one per overlapping patch; it sees the
  photo (+ style channels) and the sketch.
- :class:`SeededDropout`: dropout whose masks come, when set, from one
  ``torch.Generator`` per batch row, so a sampled image depends only on its own
  seed and not on the batch it shares.

InstanceNorm (the paper's batch size 1 BatchNorm) keeps every image
independent of its batch.
"""

from __future__ import annotations

import torch
from torch import nn


class SeededDropout(nn.Module):
    """Dropout(p); with ``generators`` set (one per row), each row's mask is drawn
    from its own generator, in training or evaluation mode alike."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p
        self.generators: list[torch.Generator] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generators is not None:
            if len(self.generators) != x.shape[0]:
                raise RuntimeError(f"SeededDropout: {len(self.generators)} generators for a batch of {x.shape[0]}")
            masks = torch.stack([torch.rand(x.shape[1:], generator=g) >= self.p for g in self.generators])
            return x * masks.to(x.device, x.dtype) / (1.0 - self.p)
        return nn.functional.dropout(x, self.p, self.training)


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
        if norm:
            layers.append(nn.InstanceNorm2d(cout, affine=True))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(True)
        )
        self.drop = SeededDropout(dropout) if dropout > 0 else None

    def forward(self, x):
        x = self.net(x)
        return self.drop(x) if self.drop is not None else x


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``num_downs`` stride-2 levels, channels ``ngf * min(2**i, 8)``."""

    def __init__(self, in_channels: int, ngf: int, num_downs: int, dropout: float = 0.5, dropout_layers: int = 3):
        super().__init__()
        chans = [ngf * min(2**i, 8) for i in range(num_downs)]
        self.downs = nn.ModuleList(
            _Down(in_channels if i == 0 else chans[i - 1], chans[i], norm=0 < i < num_downs - 1)
            for i in range(num_downs)
        )
        ups = []
        for i in reversed(range(1, num_downs)):  # decoder level producing chans[i - 1]
            cin = chans[i] if i == num_downs - 1 else 2 * chans[i]
            ups.append(_Up(cin, chans[i - 1], dropout if len(ups) < dropout_layers else 0.0))
        self.ups = nn.ModuleList(ups)
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * chans[0], 3, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for d in self.downs:
            x = d(x)
            skips.append(x)
        skips.pop()  # the innermost level feeds the decoder directly
        for u in self.ups:
            x = torch.cat([u(x), skips.pop()], 1)
        return self.out(x)

    def dropouts(self) -> list[SeededDropout]:
        return [m for m in self.modules() if isinstance(m, SeededDropout)]


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 convs, one stride-1 conv, a 1-channel logit map."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for i in range(1, n_layers):
            nc = ndf * min(2**i, 8)
            layers += [nn.Conv2d(c, nc, 4, 2, 1, bias=False), nn.InstanceNorm2d(nc, affine=True), nn.LeakyReLU(0.2, True)]
            c = nc
        nc = ndf * min(2**n_layers, 8)
        layers += [nn.Conv2d(c, nc, 4, 1, 1, bias=False), nn.InstanceNorm2d(nc, affine=True), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(nc, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, image], 1))


def style_planes(indices: torch.Tensor, num_styles: int, size: int) -> torch.Tensor:
    """One-hot style channels ``[B, num_styles, size, size]``."""
    oh = nn.functional.one_hot(indices, num_styles).float()
    return oh[:, :, None, None].expand(-1, -1, size, size)


def init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
