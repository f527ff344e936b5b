"""Torch parts of the ``diffusion`` generator (imported lazily by c4s_plugins.diffusion).

- :class:`CondDiffusion`: a diffusers ``UNet2DConditionModel`` in pixel space
  plus, per conditioner, a learned projection ``Linear(dim, cross_attention_dim)``,
  a learned type embedding and a learned null token sequence (what a dropped
  condition is replaced by);
- :class:`EMA`: exponential moving average of the trainable weights;
- image <-> tensor helpers.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn


class CondDiffusion(nn.Module):
    def __init__(self, unet_config: dict, cond_shapes: list[tuple[int, int]], cross_attention_dim: int):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(**unet_config)
        c = cross_attention_dim
        self.proj = nn.ModuleList(nn.Linear(dim, c) for _, dim in cond_shapes)
        self.type_emb = nn.Parameter(torch.randn(len(cond_shapes), c) * 0.02)
        self.null = nn.ParameterList(nn.Parameter(torch.randn(n, c) * 0.02) for n, _ in cond_shapes)

    def context(self, tokens: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """``tokens[i]``: ``[B, n_i, dim_i]``; ``keep``: bool ``[B, k]`` (False: the
        conditioner's tokens become its null tokens). Returns ``[B, sum n_i, C]``."""
        parts = []
        for i, tok in enumerate(tokens):
            h = self.proj[i](tok.to(self.type_emb.dtype)) + self.type_emb[i]
            null = self.null[i].unsqueeze(0).expand_as(h)
            parts.append(torch.where(keep[:, i, None, None], h, null))
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.context(tokens, keep)).sample


class EMA:
    """Shadow copy of trainable parameters: ``s <- d*s + (1-d)*p`` with the
    warm-up ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module, n_updates: int) -> None:
        d = min(self.decay, (1 + n_updates) / (10 + n_updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """Run with the EMA weights in ``model``; the raw weights come back after."""
        params = dict(model.named_parameters())
        saved = {k: params[k].detach().clone() for k in self.shadow}
        with torch.no_grad():
            for k, v in self.shadow.items():
                params[k].copy_(v.to(params[k].dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[N, 3, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, 3]``."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
