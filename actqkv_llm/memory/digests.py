"""Block digests: per memory block and KV head, the smallest and largest key per channel (Quest's
bounds) and the block's mean key and mean value (ACRE's first-level entry).

A query's dot product with any key of the block is at most ``sum_c max(q_c * lo_c, q_c * hi_c)``,
so the two bound vectors per block and head bound the best attention logit the block can offer.

Digests are derived data: they are measured from the blocks' keys the first time a scorer asks
and kept (a block never changes); a saved document keeps its bounds (reading every block again
on reload would cost a long document's first answer a full read of its KV). A question's session asks its document's digests for the
document's blocks (measured once per document, shared by every question) and keeps its own for
the blocks the question adds.

Keys are stored without rotary position. With memory at the fixed angle the digests are taken on
those unrotated keys; with memory at exact positions on keys rotated at their true positions
(``rotate``), so a bound is a bound of the logit the attention will compute.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from .blocks import KVBlocks, range_of_parts

# Gathered keys ``[Hkv, n*B, d]`` of block ids ``[n]`` -> the same keys at their true positions.
BlockRotation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Blocks measured per read (bounds a read's memory when a long document is measured at once).
READ_BLOCKS = 256


def _read(blocks: KVBlocks, a: int, b: int, device: torch.device, rotate: BlockRotation | None,
          values: bool = True):
    """Blocks ``a .. b-1`` as float32 ``([Hkv, n, B, d] keys, values)``, ``READ_BLOCKS`` at a time
    (values None unless asked for: key bounds read only keys, half the bytes from a reloaded file)."""
    parts = blocks.device_parts(device)   # blocks already on the device are sliced, not gathered
    for s in range(a, b, READ_BLOCKS):
        e = min(b, s + READ_BLOCKS)
        ids = torch.arange(s, e, device=device)
        k, v = range_of_parts(parts, s, e, values) if parts is not None else \
            blocks.gather(ids, device, values=values)  # [Hkv, n*B, d]
        if rotate is not None:
            k = rotate(k, ids)
        h, nb, d = k.shape
        shaped = (h, ids.numel(), nb // ids.numel(), d)
        yield k.float().view(shaped), (v.float().view(shaped) if v is not None else None)


def outward_bf16(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lo`` rounded down and ``hi`` rounded up to bf16 (kept in bf16: half the device memory of
    float32, and exactly what a cache stores, so a reloaded document scores its blocks as the
    prefilled one did)."""
    def down(x, toward):
        b = x.to(torch.bfloat16)
        step = torch.nextafter(b, torch.full_like(b, toward))
        return torch.where((b.float() > x) if toward < 0 else (b.float() < x), step, b)
    return down(lo, float("-inf")), down(hi, float("inf"))


def _measure(blocks: KVBlocks, a: int, b: int, device: torch.device, rotate: BlockRotation | None,
             reduce: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
             values: bool = True):
    """``reduce(k, v)`` over each read of blocks ``a .. b-1`` (``[Hkv, n, B, d]`` -> two ``[Hkv, n, d]``),
    as two float32 ``[b - a, Hkv, d]`` tensors."""
    parts = [reduce(k, v) for k, v in _read(blocks, a, b, device, rotate, values)]
    return tuple(torch.cat([p[i].transpose(0, 1) for p in parts]) for i in range(2))


def key_bounds(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel minima and maxima over each block's tokens: float32 keys ``[..., n, B, d]`` ->
    two ``[..., n, d]`` (before :func:`outward_bf16`)."""
    return k.amin(-2), k.amax(-2)


def measure_bounds(blocks: KVBlocks, a: int, b: int, device: torch.device,
                   rotate: BlockRotation | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quest's key bounds ``(lo, hi)``, each bf16 ``[b - a, Hkv, d]`` (rounded outward)."""
    return outward_bf16(*_measure(blocks, a, b, device, rotate, lambda k, v: key_bounds(k), values=False))


def measure_means(blocks: KVBlocks, a: int, b: int, device: torch.device,
                  rotate: BlockRotation | None) -> tuple[torch.Tensor, torch.Tensor]:
    """ACRE's first-level entry ``(k_mean, v_mean)``, each float32 ``[b - a, Hkv, d]``."""
    return _measure(blocks, a, b, device, rotate, lambda k, v: (k.mean(2), v.mean(2)))


Measure = Callable[[KVBlocks, int, int, torch.device, "BlockRotation | None"], tuple[torch.Tensor, ...]]


class BlockDigests:
    """A growing pair of float32 ``[n, Hkv, d]`` tensors per block (bounds or means) on the compute device."""

    def __init__(self, measure: Measure, parent: "BlockDigests | None" = None, n_parent: int = 0):
        self.measure = measure
        self.parent, self.n_parent = parent, n_parent
        self._own: tuple[torch.Tensor, ...] | None = None   # of own blocks
        self._joined: tuple[int, tuple[torch.Tensor, ...]] | None = None  # last answer with a parent
        self._lock = threading.Lock()

    @property
    def n_known(self) -> int:
        return 0 if self._own is None else self._own[0].shape[0]

    @property
    def known(self) -> tuple[torch.Tensor, ...] | None:
        """The digests measured so far for this object's own blocks (a document's, for saving)."""
        return self._own

    def forget(self) -> None:
        """Drop every digest measured for this object's own blocks (they are measured again when
        asked for); the parent's stay."""
        with self._lock:
            self._own, self._joined = None, None

    def preload(self, *digests: torch.Tensor) -> None:
        """Digests of the first blocks, measured before (a reloaded document's)."""
        self._own, self._joined = tuple(digests), None

    def extend(self, n_before: int, *new: torch.Tensor) -> bool:
        """Add the digests ``new`` (each ``[n, Hkv, d]``) of the blocks from ``n_before`` on, measured
        by the caller as :attr:`measure` would (the static decode step measures a block leaving
        every layer's window at once), where this object knows every block before them; else
        nothing (they are measured when asked for). Returns whether they were added."""
        with self._lock:
            if self.n_parent + self.n_known != n_before:
                return False
            self._own = tuple(new) if self._own is None else tuple(torch.cat([a, b]) for a, b in zip(self._own, new))
            return True

    def get(self, blocks: KVBlocks, n_blocks: int, device: torch.device,
            rotate: BlockRotation | None = None) -> tuple[torch.Tensor, ...]:
        """The digests of blocks ``0 .. n_blocks-1`` of ``blocks``, each ``[n_blocks, Hkv, d]``,
        measuring the blocks not seen yet (``rotate`` must be the same at every call on one object).
        A question's session joins its document's digests and its own into one copy (kept until it
        adds a block): :meth:`parts` gives them without the copy."""
        with self._lock:
            if self._joined is not None and self._joined[0] == n_blocks:
                return self._joined[1]
            parts = self._parts(blocks, n_blocks, device, rotate)
            if len(parts) == 1:
                return parts[0]
            self._joined = (n_blocks, tuple(torch.cat(ts) for ts in zip(*parts)))
            return self._joined[1]

    def parts(self, blocks: KVBlocks, n_blocks: int, device: torch.device,
              rotate: BlockRotation | None = None) -> list[tuple[torch.Tensor, ...]]:
        """The digests of blocks ``0 .. n_blocks-1`` in consecutive parts (the document's, then the
        session's own), each part a tuple of ``[n_part, Hkv, d]`` tensors: what :meth:`get` joins,
        without copying the document's digests into every question's session (at 128K tokens on
        the Llama-3.1-8B shape, 0.5 GiB of bounds per session)."""
        with self._lock:
            return self._parts(blocks, n_blocks, device, rotate)

    def _parts(self, blocks, n_blocks, device, rotate) -> list[tuple[torch.Tensor, ...]]:
        parts = []
        if self.parent is not None and self.n_parent:
            parts = self.parent.parts(blocks, min(n_blocks, self.n_parent), device, rotate)
        own_needed = n_blocks - self.n_parent
        if own_needed > self.n_known:
            new = self.measure(blocks, self.n_parent + self.n_known, n_blocks, device, rotate)
            self._own = new if self._own is None else tuple(torch.cat([a, b]) for a, b in zip(self._own, new))
        if own_needed > 0:   # all of them as they are, or the first ones (no slice of the whole)
            parts.append(self._own if own_needed == self._own[0].shape[0] else tuple(t[:own_needed] for t in self._own))
        return parts

    def fork(self, n_blocks: int) -> "BlockDigests":
        """Digests for a question's session: this document's blocks shared, new ones its own."""
        return BlockDigests(self.measure, self, n_blocks)
