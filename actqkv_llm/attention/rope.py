"""Rotary position embedding applied by us, not by the model: the model runs with identity
rotary so keys reach the memory unrotated, and positions are chosen per attention call."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``[..., T, d]`` by per-position ``cos``/``sin`` of shape ``[T, d]`` (float32 math)."""
    xf = x.float()
    return xf * cos + rotate_half(xf) * sin
