"""Torch parts of the ``diffusion`` generator (imported lazily by c4s_plugins.diffusion).

- :class:`CondDiffusion`: a diffusers ``UNet2DConditionModel`` in pixel space
  plus, per token conditioner, a learned projection ``Linear(dim, cross_attention_dim)``,
  a learned type embedding and a learned null token sequence (what a dropped
  condition is replaced by); spatial conditions join the input channels;
- :class:`EMA`: exponential moving average of the trainable weights;
- image <-> tensor helpers.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn


class CondDiffusion(nn.Module):
    """``conds``: per conditioner, ``("tokens", num_tokens, dim)`` or
    ``("spatial", channels)``. Token conditioners get a projection, a type
    embedding and null tokens (indexed over token conditioners only, so folders
    without spatial ones keep their parameter names); spatial ones a learned
    null value per channel, and their maps are concatenated to the UNet input
    (``unet_config["in_channels"]`` must count them)."""

    def __init__(self, unet_config: dict, conds: list[tuple], cross_attention_dim: int):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(**unet_config)
        c = cross_attention_dim
        self.tok_idx = [i for i, k in enumerate(conds) if k[0] == "tokens"]
        self.map_idx = [i for i, k in enumerate(conds) if k[0] == "spatial"]
        tok = [conds[i] for i in self.tok_idx]
        self.proj = nn.ModuleList(nn.Linear(dim, c) for _, _, dim in tok)
        self.type_emb = nn.Parameter(torch.randn(len(tok), c) * 0.02)
        self.null = nn.ParameterList(nn.Parameter(torch.randn(n, c) * 0.02) for _, n, _ in tok)
        self.null_map = nn.ParameterList(nn.Parameter(torch.zeros(conds[i][1])) for i in self.map_idx)
        # cross-attention needs a sequence: one learned token when every condition is spatial
        self.const = nn.Parameter(torch.randn(1, c) * 0.02) if not tok else None

    def context(self, tokens: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """``tokens[i]``: ``[B, n_i, dim_i]`` of the token conditioners; ``keep``:
        bool ``[B, k_tokens]`` (False: the conditioner's tokens become its null
        tokens). Returns ``[B, sum n_i, C]``."""
        if self.const is not None:
            return self.const.unsqueeze(0).expand(keep.shape[0], -1, -1)
        parts = []
        for i, tok in enumerate(tokens):
            h = self.proj[i](tok.to(self.type_emb.dtype)) + self.type_emb[i]
            null = self.null[i].unsqueeze(0).expand_as(h)
            parts.append(torch.where(keep[:, i, None, None], h, null))
        return torch.cat(parts, 1)

    def inputs(self, x: torch.Tensor, conds: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """``x`` with every spatial condition (kept, else its null value) as extra channels."""
        maps = [x]
        for j, i in enumerate(self.map_idx):
            m = conds[i].to(x.dtype)
            if m.shape[-2:] != x.shape[-2:]:
                m = nn.functional.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            null = self.null_map[j].to(x.dtype).view(1, -1, 1, 1).expand_as(m)
            maps.append(torch.where(keep[:, i, None, None, None], m, null))
        return torch.cat(maps, 1) if len(maps) > 1 else x

    def forward(self, x: torch.Tensor, t: torch.Tensor, conds: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """``conds``: one tensor per conditioner (tokens or maps); ``keep``: bool ``[B, k]``."""
        ctx = self.context([conds[i] for i in self.tok_idx], keep[:, self.tok_idx])
        return self.unet(self.inputs(x, conds, keep), t, encoder_hidden_states=ctx).sample


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
