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


def same_rotation(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether ``got`` holds ``want``'s rotated keys or queries within one rounding of the same float32
    math (a fused multiply-add or not), in ``want``'s dtype: how a kernel's rotation is held to
    :func:`rotate`'s."""
    tol = 1e-5 if want.dtype == torch.float32 else 1e-2
    return got.dtype == want.dtype and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)


def block_positions(ids: torch.Tensor, n_sink: int, block_size: int) -> torch.Tensor:
    """True positions ``[rows, n*B]`` of the tokens of blocks ``ids`` (``[n]`` or ``[rows, n]``): block
    ``i`` holds the tokens from ``n_sink + i * block_size`` on."""
    rows = ids if ids.dim() == 2 else ids[None]
    return (n_sink + rows[..., None] * block_size + torch.arange(block_size, device=ids.device)).flatten(-2)


def blocks_at_true_positions(k: torch.Tensor, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             n_sink: int) -> torch.Tensor:
    """Gathered keys ``[Hkv, n*B, d]`` of blocks ``ids`` (``[n]`` or ``[Hkv, n]``) rotated at their
    true positions (float32)."""
    pos = block_positions(ids, n_sink, k.shape[1] // ids.shape[-1]).to(cos.device)
    return rotate(k, cos[pos], sin[pos])


def sinks_at_true_positions(adapter, rope_type: str, mem) -> torch.Tensor:
    """A layer memory's sink keys rotated at their own positions ``0 .. n_sink-1`` (memory at exact
    positions), in the memory's dtype; rotated once per set of sinks (:meth:`LayerMemory.placed_sink_keys`)."""
    def place(k: torch.Tensor) -> torch.Tensor:
        n = k.shape[1]
        cos, sin = adapter.rope_table(rope_type, n)
        return rotate(k, cos[:n], sin[:n]).to(k.dtype)

    return mem.placed_sink_keys(place)
