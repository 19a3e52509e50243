"""Rotary positions applied to a batched chunk's (and a step's) queries and keys: the PyTorch
reference (:func:`.rope.rotate`, float32, then cast) or one Triton kernel that reads the tensor
once and writes it once (``rope_kernel.py``). ``Rotation`` picks one per session by the
``prefill_kernel`` option, as :class:`.block_gather.BlockGather` does for the blocks: ``"auto"``
computes both the first time for each device, dtype and head size, and keeps the kernel only if
its result is the reference's within one float32 rounding.
"""

from __future__ import annotations

import math

import torch

from ..devices import KernelChoice, kernel_agrees, tile_extent
from .rope import rotate, same_rotation

# positions per program: a [64, 128] tile of a head's rows
BLOCK_P = 64


def rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`.rope.rotate` (float32 math) cast to ``dtype``."""
    y = rotate(x, cos, sin)
    return y if y.dtype == dtype else y.to(dtype)


def rotate_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`rotate_reference` in one kernel. ``cos`` / ``sin`` ``[..., d]`` give the positions of
    ``x``'s trailing dimensions (broadcast where theirs are 1, e.g. one fixed angle for every
    token); every leading dimension of ``x`` is a row rotated the same way."""
    from . import rope_kernel as kern

    d = x.shape[-1]
    pos_shape = x.shape[x.dim() - cos.dim():-1]
    n_pos = math.prod(pos_shape)
    cos, sin = (t.expand(*pos_shape, d).reshape(n_pos, d) for t in (cos, sin))
    if cos.stride(1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    xv = x.reshape(-1, n_pos, d)
    if xv.stride(2) != 1:
        xv = xv.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    rows = xv.shape[0]
    if rows and n_pos:
        kern.rotate_rows_kernel[(rows, -(-n_pos // BLOCK_P))](
            xv, cos, sin, out, n_pos, xv.stride(0), xv.stride(1), cos.stride(0),
            BLOCK_P=BLOCK_P, D=d, D_PAD=tile_extent(d))
    return out


def kernel_takes(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether :func:`rotate_triton` takes ``x`` with tables ``cos``: the tables' positions are ``x``'s
    trailing ones, or 1 where one angle serves them all (the reference broadcasts either way)."""
    if x.dim() < cos.dim() or x.shape[-1] != cos.shape[-1]:
        return False
    pos = x.shape[x.dim() - cos.dim():-1]
    return all(c in (1, p) for c, p in zip(cos.shape[:-1], pos))


def rotations_agree(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, str]:
    """A kernel's rotation against the reference's (:func:`.rope.same_rotation`), and the largest
    difference for a warning."""
    diff = float((got.float() - want.float()).abs().max()) if want.numel() else 0.0
    return same_rotation(got, want), f"largest difference {diff:.3g}"


class Rotation(KernelChoice):
    """Which path rotates queries and keys (``prefill_kernel``): ``"torch"`` the reference;
    ``"triton"`` the kernel (an error where Triton cannot run); ``"auto"`` the kernel where it runs
    and, the first time for each device, dtype and head size, gives the reference's result (the
    check computes both; a mismatch warns and keeps the reference)."""

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``x`` ``[..., P..., d]`` rotated by ``cos`` / ``sin`` ``[P..., d]`` (float32, the sine signed),
        in ``dtype``."""
        if self.choice == "torch" or not kernel_takes(x, cos):
            return rotate_reference(x, cos, sin, dtype)
        key = (str(x.device), x.dtype, dtype, x.shape[-1])
        first = key not in self._verdicts
        want = rotate_reference(x, cos, sin, dtype) if first else None
        use = self._use_kernel(key, x.device, lambda: kernel_agrees(
            self.option, "rotation", "rotating queries and keys", lambda: rotate_triton(x, cos, sin, dtype),
            lambda got: rotations_agree(got, want)))
        if first:
            return want
        return rotate_triton(x, cos, sin, dtype) if use else rotate_reference(x, cos, sin, dtype)
