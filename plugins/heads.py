"""Built-in margin heads: ``adaface``, ``arcface``, ``cosface`` and ``softmax``.

A head component is a factory: its ``Config`` holds the hyper-parameters and
``build(embedding_dim, num_classes) -> torch.nn.Module``. The module's
``forward(embeddings, norms, labels) -> logits [B, C]`` takes

- ``embeddings``: L2-normalised [B, D] (the backbone output divided by its norm),
- ``norms``: the backbone output norms [B, 1] (AdaFace needs them; the others
  accept None; ``softmax`` multiplies them back),
- ``labels``: int64 [B] class indices, or None for margin-free logits
  (``s * cos``) as used at evaluation,

and returns logits for ``torch.nn.functional.cross_entropy``. Class centres are
``kernel`` [D, C], initialised and named as in AdaFace's ``head.py``, so an
AdaFace checkpoint's ``head.kernel`` fits. torch is imported only in ``build``.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

from pydantic import Field

from c4s_core import ComponentConfig, hookimpl

__all__ = ["AdaFaceHead", "ArcFaceHead", "CosFaceHead", "SoftmaxHead", "torch_heads"]

EPS = 1e-3  # AdaFace's cosine clamp and angle clip


@functools.cache
def torch_heads() -> SimpleNamespace:
    """The torch modules, defined on first use so importing this plugin stays light."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MarginHead(nn.Module):
        def __init__(self, embedding_dim: int, num_classes: int, s: float):
            super().__init__()
            self.num_classes, self.s = num_classes, s
            self.kernel = nn.Parameter(torch.empty(embedding_dim, num_classes))
            # AdaFace's init: columns of unit norm
            self.kernel.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

        def cosine(self, emb):
            return (emb @ F.normalize(self.kernel, dim=0)).clamp(-1 + EPS, 1 - EPS)

        def onehot(self, labels, like):
            return torch.zeros_like(like).scatter_(1, labels.view(-1, 1), 1.0)

    class AdaFace(MarginHead):
        """AdaFace (Kim et al. 2022): the margin adapts to the feature norm (image quality)."""

        def __init__(self, embedding_dim, num_classes, m, h, s, t_alpha):
            super().__init__(embedding_dim, num_classes, s)
            self.m, self.h, self.t_alpha = m, h, t_alpha
            self.register_buffer("t", torch.zeros(1))
            self.register_buffer("batch_mean", torch.ones(1) * 20)
            self.register_buffer("batch_std", torch.ones(1) * 100)

        def forward(self, emb, norms, labels):
            cos = self.cosine(emb)
            if labels is None:
                return cos * self.s
            if norms is None:
                raise ValueError("the adaface head needs the embedding norms [B, 1]; got None")
            safe = norms.detach().float().clamp(0.001, 100).view(-1, 1)
            if self.training:
                with torch.no_grad():
                    std = safe.std() if safe.numel() > 1 else torch.zeros((), device=safe.device)
                    self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe.mean())
                    self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
            scaler = ((safe - self.batch_mean) / (self.batch_std + EPS) * self.h).clamp(-1, 1)
            hot = self.onehot(labels, cos)
            g_angular = -self.m * scaler  # [B, 1]
            theta = cos.acos()
            cos = (theta + hot * g_angular).clamp(EPS, math.pi - EPS).cos()
            g_add = self.m + self.m * scaler
            return (cos - hot * g_add) * self.s

    class ArcFace(MarginHead):
        """ArcFace (Deng et al. 2019): additive angular margin, target s*cos(theta+m)."""

        def __init__(self, embedding_dim, num_classes, m, s, easy_margin):
            super().__init__(embedding_dim, num_classes, s)
            self.m, self.easy_margin = m, easy_margin
            self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

        def forward(self, emb, norms, labels):
            cos = self.cosine(emb)
            if labels is None:
                return cos * self.s
            sin = (1.0 - cos * cos).clamp_min(0).sqrt()
            phi = cos * math.cos(self.m) - sin * math.sin(self.m)  # cos(theta + m)
            if self.easy_margin:
                phi = torch.where(cos > 0, phi, cos)
            else:  # keep the target logit decreasing in theta beyond pi - m
                phi = torch.where(cos > self.th, phi, cos - self.mm)
            hot = self.onehot(labels, cos)
            return (hot * phi + (1 - hot) * cos) * self.s

    class CosFace(MarginHead):
        """CosFace (Wang et al. 2018): additive cosine margin, target s*(cos - m)."""

        def __init__(self, embedding_dim, num_classes, m, s):
            super().__init__(embedding_dim, num_classes, s)
            self.m = m

        def forward(self, emb, norms, labels):
            cos = self.cosine(emb)
            if labels is None:
                return cos * self.s
            return (cos - self.onehot(labels, cos) * self.m) * self.s

    class Softmax(nn.Module):
        """Plain linear classifier on the unnormalised embedding (emb * norm)."""

        def __init__(self, embedding_dim, num_classes, bias):
            super().__init__()
            self.num_classes = num_classes
            self.kernel = nn.Parameter(torch.empty(embedding_dim, num_classes))
            self.kernel.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
            self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

        def forward(self, emb, norms, labels):
            x = emb if norms is None else emb * norms.view(-1, 1)
            out = x @ self.kernel
            return out + self.bias if self.bias is not None else out

    return SimpleNamespace(AdaFace=AdaFace, ArcFace=ArcFace, CosFace=CosFace, Softmax=Softmax)


class AdaFaceConfig(ComponentConfig):
    m: float = Field(0.4, ge=0.0, le=1.5, description="Margin (AdaFace default 0.4).")
    h: float = Field(0.333, ge=0.0, le=2.0, description="Margin scaler concentration (AdaFace default 0.333).")
    s: float = Field(64.0, gt=0.0, le=256.0, description="Logit scale (AdaFace default 64).")
    t_alpha: float = Field(0.01, gt=0.0, le=1.0, description="EMA momentum of the batch feature-norm mean/std.")


class AdaFaceHead:
    """AdaFace: quality-adaptive margin from feature norms (CVPR 2022)."""

    name = "adaface"
    Config = AdaFaceConfig

    def __init__(self, config: AdaFaceConfig):
        self.config = config

    def build(self, embedding_dim: int, num_classes: int):
        c = self.config
        return torch_heads().AdaFace(embedding_dim, num_classes, c.m, c.h, c.s, c.t_alpha)


class ArcFaceConfig(ComponentConfig):
    m: float = Field(0.5, ge=0.0, le=1.5, description="Additive angular margin in radians (default 0.5).")
    s: float = Field(64.0, gt=0.0, le=256.0, description="Logit scale (default 64).")
    easy_margin: bool = Field(False, description="Apply the margin only where cos(theta) > 0.")


class ArcFaceHead:
    """ArcFace: additive angular margin, target logit s*cos(theta + m)."""

    name = "arcface"
    Config = ArcFaceConfig

    def __init__(self, config: ArcFaceConfig):
        self.config = config

    def build(self, embedding_dim: int, num_classes: int):
        c = self.config
        return torch_heads().ArcFace(embedding_dim, num_classes, c.m, c.s, c.easy_margin)


class CosFaceConfig(ComponentConfig):
    m: float = Field(0.35, ge=0.0, le=1.0, description="Additive cosine margin (default 0.35).")
    s: float = Field(64.0, gt=0.0, le=256.0, description="Logit scale (default 64).")


class CosFaceHead:
    """CosFace: additive cosine margin, target logit s*(cos(theta) - m)."""

    name = "cosface"
    Config = CosFaceConfig

    def __init__(self, config: CosFaceConfig):
        self.config = config

    def build(self, embedding_dim: int, num_classes: int):
        c = self.config
        return torch_heads().CosFace(embedding_dim, num_classes, c.m, c.s)


class SoftmaxConfig(ComponentConfig):
    bias: bool = Field(True, description="Learn a per-class bias.")


class SoftmaxHead:
    """Plain softmax classifier (linear layer + cross-entropy), no margin."""

    name = "softmax"
    Config = SoftmaxConfig

    def __init__(self, config: SoftmaxConfig):
        self.config = config

    def build(self, embedding_dim: int, num_classes: int):
        return torch_heads().Softmax(embedding_dim, num_classes, self.config.bias)


@hookimpl
def register_heads(register):
    register(AdaFaceHead)
    register(ArcFaceHead)
    register(CosFaceHead)
    register(SoftmaxHead)
