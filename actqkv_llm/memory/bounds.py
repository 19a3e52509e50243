"""Block digests: per memory block and KV head, the smallest and largest key per channel (Quest's
bounds) and the block's mean key and mean value (ACRE's first-level entry).

A query's dot product with any key of the block is at most ``sum_c max(q_c * lo_c, q_c * hi_c)``,
so the two bound vectors per block and head bound the best attention logit the block can offer.

Bounds are derived data: they are measured from the blocks' keys the first time a scorer asks
and kept (a block never changes). A question's session asks its document's bounds for the
document's blocks (measured once per document, shared by every question) and keeps its own for
the blocks the question adds.

Keys are stored without rotary position. With memory at the fixed angle the bounds are taken on
those unrotated keys; with memory at true positions they are taken on keys rotated at their
absolute positions (``rotate``), so the bound matches the logit the attention will compute.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from .blocks import KVBlocks

# Rotates flattened keys ``[Hkv, n*B, d]`` of blocks ``first .. first+n-1`` to their true positions.
KeyRotation = Callable[[torch.Tensor, int], torch.Tensor]
# Blocks measured per read (bounds a read's memory when a long document is measured at once).
READ_BLOCKS = 256


class BlockBounds:
    """Growing ``lo``/``hi``/``k_mean``/``v_mean`` tensors ``[n, Hkv, d]`` (float32) on the compute device."""

    def __init__(self, parent: "BlockBounds | None" = None, n_parent: int = 0):
        self.parent, self.n_parent = parent, n_parent
        self._own: tuple[torch.Tensor, ...] | None = None   # (lo, hi, k_mean, v_mean) of own blocks
        self._joined: tuple[int, tuple[torch.Tensor, ...]] | None = None  # last answer with a parent
        self._lock = threading.Lock()

    @property
    def n_known(self) -> int:
        return 0 if self._own is None else self._own[0].shape[0]

    @staticmethod
    def _measure(blocks: KVBlocks, a: int, b: int, device: torch.device,
                 rotate: KeyRotation | None) -> tuple[torch.Tensor, ...]:
        parts: list[list[torch.Tensor]] = [[], [], [], []]
        for s in range(a, b, READ_BLOCKS):
            e = min(b, s + READ_BLOCKS)
            k, v = blocks.gather(torch.arange(s, e, device=device), device)  # [Hkv, n*B, d]
            if rotate is not None:
                k = rotate(k, s)
            h, nb, d = k.shape
            k = k.float().view(h, e - s, nb // (e - s), d)
            v = v.float().view(h, e - s, nb // (e - s), d)
            for out, x in zip(parts, (k.amin(2), k.amax(2), k.mean(2), v.mean(2))):
                out.append(x.transpose(0, 1))
        return tuple(torch.cat(p) for p in parts)

    def get(self, blocks: KVBlocks, n_blocks: int, device: torch.device,
            rotate: KeyRotation | None = None) -> tuple[torch.Tensor, ...]:
        """``(lo, hi, k_mean, v_mean)`` of blocks ``0 .. n_blocks-1`` of ``blocks``, each
        ``[n_blocks, Hkv, d]``, measuring the blocks not seen yet (``rotate`` must be the same at
        every call on one object)."""
        with self._lock:
            if self._joined is not None and self._joined[0] == n_blocks:
                return self._joined[1]
            base = None
            if self.parent is not None and self.n_parent:
                base = self.parent.get(blocks, self.n_parent, device, rotate)
            own_needed = n_blocks - self.n_parent
            if own_needed > self.n_known:
                new = self._measure(blocks, self.n_parent + self.n_known, n_blocks, device, rotate)
                self._own = new if self._own is None else tuple(torch.cat([a, b]) for a, b in zip(self._own, new))
            if own_needed <= 0:
                return tuple(t[:n_blocks] for t in base)
            own = tuple(t[:own_needed] for t in self._own)
            if base is None:
                return own
            self._joined = (n_blocks, tuple(torch.cat([a, b]) for a, b in zip(base, own)))
            return self._joined[1]

    def fork(self, n_blocks: int) -> "BlockBounds":
        """Digests for a question's session: this document's blocks shared, new ones its own."""
        return BlockBounds(self, n_blocks)
