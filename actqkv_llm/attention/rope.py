"""Rotary position embedding applied by us, not by the model: the model runs with identity
rotary so keys reach the memory unrotated, and positions are chosen per attention call."""

from __future__ import annotations

import torch


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated, so that ``rotate_half(x) * sin == x.roll(d/2) * signed``.

    Hugging Face rotary tables repeat the frequencies over both halves of the head dimension.
    """
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], -1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate ``[..., T, d]`` by per-position ``cos`` and :func:`signed_sin` tables ``[T, d]`` (float32).

    ``x * cos + rotate_half(x) * sin`` written as one roll and one fused multiply-add.
    """
    xf = x.float()
    return torch.addcmul(xf * cos, xf.roll(x.shape[-1] // 2, -1), sin_signed)
