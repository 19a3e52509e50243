"""Full KV blocks of one layer.

A block is ``block_size`` consecutive tokens' keys (stored WITHOUT rotary position) and values,
laid out ``[n_blocks, kv_heads, block_size, head_dim]`` so one block of one layer is one
contiguous slice. Every store answers the same question: "give me these blocks on the compute
device" (:meth:`KVBlocks.gather`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..devices import staged


class KVBlocks(Protocol):
    """Anything that can hand out full KV blocks of one layer."""

    n_blocks: int

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Blocks ``idx`` as ``[kv_heads, n * block_size, head_dim]`` keys and values.

        ``idx`` is ``[n]`` (every KV head reads the same blocks) or ``[kv_heads, n]`` (each KV head its
        own blocks: per-head selection); ascending along the last dimension. ``keys=False`` /
        ``values=False`` leave that part out (``None``): scoring reads keys only, and attention
        reads only the values of blocks whose keys selection already holds.
        """
        ...

    def reserve(self, n: int) -> None:
        """Room for ``n`` blocks in all, taken now by a store that grows in place (a prefill that
        knows its length); a store that does not grow that way ignores it."""
        ...

    def device_parts(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Every block as ``(keys, values)`` ``[n_i, Hkv, B, d]`` tensors already on ``device``, in
        consecutive parts (for :func:`gather_parts`), or None where blocks come from elsewhere (host
        memory, a file)."""
        ...


def flatten_blocks(k: torch.Tensor) -> torch.Tensor:
    """[n, Hkv, B, d] -> [Hkv, n * B, d]."""
    n, h, b, d = k.shape
    return k.permute(1, 0, 2, 3).reshape(h, n * b, d)


def as_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Whole blocks of consecutive tokens, the inverse of :func:`flatten_blocks` (a view):
    ``[..., Hkv, n * B, d]`` -> ``[..., n, Hkv, B, d]``."""
    return x.unflatten(-2, (x.shape[-2] // block_size, block_size)).transpose(-4, -3)


def _grown(old: torch.Tensor, cap: int, n: int) -> torch.Tensor:
    """A store ``[..., capacity, Hkv, B, d]`` with room for ``cap`` blocks, its first ``n`` copied over."""
    new = old.new_empty(old.shape[:-4] + (cap,) + old.shape[-3:])
    new[..., :n, :, :, :] = old[..., :n, :, :, :]
    return new


class GrowableBlocks:
    """Blocks held in one growing tensor pair on a storage device (compute device or host)."""

    def __init__(self, kv_heads: int, block_size: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, capacity: int = 8, joint: "LayeredBlocks | None" = None):
        self.shape = (kv_heads, block_size, head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.n_blocks = 0
        # a layer of a LayeredBlocks: its tensors are views of the joint ones, which grow together
        self._joint = joint
        self._parts: tuple | None = None   # device_parts' views, with the count and tensor they were made of
        if joint is None:
            self._k = torch.empty((capacity, *self.shape), dtype=dtype, device=self.device)
            self._v = torch.empty_like(self._k)

    @classmethod
    def from_tensors(cls, k: torch.Tensor, v: torch.Tensor) -> "GrowableBlocks":
        store = cls(k.shape[1], k.shape[2], k.shape[3], k.dtype, k.device, capacity=max(1, k.shape[0]))
        store._k[: k.shape[0]] = k
        store._v[: v.shape[0]] = v
        store.n_blocks = k.shape[0]
        return store

    @property
    def keys(self) -> torch.Tensor:
        return self._k[: self.n_blocks]

    @property
    def values(self) -> torch.Tensor:
        return self._v[: self.n_blocks]

    def reserve(self, n: int) -> None:
        """Room for ``n`` blocks in all, allocated now: a prefill that knows its length grows the
        store once instead of doubling (doubling left up to half the store unused and, while it
        copied, held the old store beside the new one: 53 GiB peak at 128K tokens on the 8B shape
        against 40 GiB; docs/benchmarks.md)."""
        if n > self._k.shape[0]:
            self._grow(n)

    def _grow(self, cap: int) -> None:
        if self._joint is not None:
            self._joint.grow(cap)
            return
        self._k, self._v = _grown(self._k, cap, self.n_blocks), _grown(self._v, cap, self.n_blocks)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append blocks given as ``[n, Hkv, B, d]``."""
        n = k.shape[0]
        if self.n_blocks + n > self._k.shape[0]:
            self._grow(max(2 * self._k.shape[0], self.n_blocks + n))
        self._k[self.n_blocks: self.n_blocks + n] = k.to(self.device, self.dtype)
        self._v[self.n_blocks: self.n_blocks + n] = v.to(self.device, self.dtype)
        self.n_blocks += n

    def device_parts(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if self.device != torch.device(device):
            return None
        # the same views until a block is added or the store grows (a decode step that scores again
        # asks for them in every layer: two slicing calls each time otherwise)
        made = self._parts
        if made is None or made[0] != self.n_blocks or made[1] is not self._k:
            made = self._parts = (self.n_blocks, self._k, [(self.keys, self.values)])
        return made[2]

    def read_units(self, blocks: torch.Tensor, heads: torch.Tensor, keys: bool = True, values: bool = True,
                   device: torch.device | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One KV head of each of some blocks: ``[u, B, d]`` keys and values (None where not asked),
        on ``device`` (default: the store's)."""
        def take(store: torch.Tensor) -> torch.Tensor:
            got = store[blocks, heads]
            return got if device is None else staged(got, device)
        return (take(self.keys) if keys else None), (take(self.values) if values else None)

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        idx = idx.to(self.device)
        if idx.dim() == 2:  # each KV head its own blocks: [Hkv, n] -> [Hkv, n*B, d] in one index_select
            hkv, n = idx.shape   # over (block, head) pairs: a third or less of advanced indexing's time on the CPU
            # (docs/results/cpu-rerank-session17/index_select.txt)
            pairs = (idx * hkv + torch.arange(hkv, device=self.device)[:, None]).flatten()

            def take(store: torch.Tensor) -> torch.Tensor:
                got = store[: self.n_blocks].flatten(0, 1).index_select(0, pairs)       # [Hkv*n, B, d]
                return got.view(hkv, n * got.shape[1], got.shape[2]).to(device, non_blocking=True)
        else:
            def take(store: torch.Tensor) -> torch.Tensor:
                return flatten_blocks(store.index_select(0, idx)).to(device, non_blocking=True)
        return (take(self._k) if keys else None), (take(self._v) if values else None)


class LayeredBlocks:
    """The growable stores of several layers in one pair of tensors ``[L, capacity, Hkv, B, d]``:
    each layer's store (:attr:`layers`, a :class:`GrowableBlocks`) is a view of them and appends on
    its own, and blocks leaving every layer's window at the same step (the static decode step's
    eviction) are stored by one copy each for keys and values (:meth:`append_all`) instead of one
    per layer. A question's own blocks: few, and on the compute device."""

    def __init__(self, n_layers: int, kv_heads: int, block_size: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, capacity: int = 4):
        self.shape = (kv_heads, block_size, head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self._k = torch.empty((n_layers, capacity, *self.shape), dtype=dtype, device=self.device)
        self._v = torch.empty_like(self._k)
        self.layers = [GrowableBlocks(kv_heads, block_size, head_dim, dtype, device, joint=self)
                       for _ in range(n_layers)]
        self._point()

    def _point(self) -> None:
        for i, store in enumerate(self.layers):
            store._k, store._v = self._k[i], self._v[i]

    def grow(self, cap: int) -> None:
        """Room for ``cap`` blocks in every layer (what each layer holds copied over)."""
        if cap <= self._k.shape[1]:
            return
        n = max(store.n_blocks for store in self.layers)
        self._k, self._v = _grown(self._k, cap, n), _grown(self._v, cap, n)
        self._point()

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's first ``n`` blocks, keys and values ``[L, n, Hkv, B, d]`` (views)."""
        return self._k[:, :n], self._v[:, :n]

    def append_all(self, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Append blocks ``[L, n, Hkv, B, d]`` to every layer at once (layer ``i`` gets ``k[i]``), where
        every layer holds as many blocks; returns whether it did (else nothing is written)."""
        n0 = self.layers[0].n_blocks
        if any(store.n_blocks != n0 for store in self.layers) or k.shape[0] != len(self.layers):
            return False
        n = k.shape[1]
        if n0 + n > self._k.shape[1]:
            self.grow(max(2 * self._k.shape[1], n0 + n))
        self._k[:, n0:n0 + n] = k
        self._v[:, n0:n0 + n] = v
        for store in self.layers:
            store.n_blocks += n
        return True


class StackedBlocks:
    """A read-only base (the document's blocks) plus blocks a question session adds on top.

    Forking a document for a question must not copy its memory, and the question's own
    tokens must never leak into the document: new blocks go to ``own`` only.
    """

    def __init__(self, base: KVBlocks, own: GrowableBlocks):
        self.base, self.own = base, own

    @property
    def n_blocks(self) -> int:
        return self.base.n_blocks + self.own.n_blocks

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.own.append(k, v)

    def reserve(self, n: int) -> None:
        """Nothing: a question's own blocks are few and grow as they come."""

    def device_parts(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        base, own = self.base.device_parts(device), self.own.device_parts(device)
        return None if base is None or own is None else base + own

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        nb = self.base.n_blocks
        if self.own.n_blocks == 0:
            return self.base.gather(idx, device, keys, values)
        if nb == 0:
            return self.own.gather(idx, device, keys, values)
        # Without asking the device where idx crosses nb (a sync per layer and step): ids ascend, so
        # at most the last r = own.n_blocks picks of a row are the question's own; gather every
        # pick from the base (clamped), the last r from the own store, and keep the right ones.
        r, b = min(idx.shape[-1], self.own.n_blocks), self.own.shape[1]
        base = self.base.gather(idx.clamp(max=nb - 1), device, keys, values)  # fresh tensors: written below
        tail = idx[..., -r:]
        own = self.own.gather((tail - nb).clamp(min=0), device, keys, values)
        mine = (tail >= nb).to(device).repeat_interleave(b, dim=-1)
        mine = mine[None, :, None] if mine.dim() == 1 else mine[:, :, None]
        for x, o in zip(base, own):
            if x is not None:
                x[:, -r * b:] = torch.where(mine, o, x[:, -r * b:])
        return base


def gather_rows(blocks: "StackedBlocks", idx: torch.Tensor, device: torch.device, keys: bool = True,
                values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Blocks ``idx`` ``[E, Hkv, m]`` of a question's store for ``E`` rows at once (questions on one
    document read as one batch, attention/question_rows.py; every row's ids ascending): ``[E, Hkv, m*B, d]``,
    row ``e`` what :meth:`StackedBlocks.gather` gives for ``idx[e]``, in one read of each store. The
    rows' sessions hold the same blocks; ``blocks`` is any one's."""
    e, hkv, m = idx.shape

    def read(store: KVBlocks, ids: torch.Tensor) -> list[torch.Tensor | None]:
        got = store.gather(ids.transpose(0, 1).reshape(hkv, -1), device, keys, values)
        return [None if x is None else x.view(hkv, e, -1, x.shape[-1]).transpose(0, 1) for x in got]

    nb, n_own = blocks.base.n_blocks, blocks.own.n_blocks
    if n_own == 0 or nb == 0:
        return tuple(read(blocks.base if n_own == 0 else blocks.own, idx))
    # as StackedBlocks.gather: every pick from the base (clamped), the last r of each row from the
    # question's own store, kept where they are the question's
    r, b = min(m, n_own), blocks.own.shape[1]
    base = read(blocks.base, idx.clamp(max=nb - 1))
    tail = idx[..., -r:]
    own = read(blocks.own, (tail - nb).clamp(min=0))
    mine = (tail >= nb).to(device).repeat_interleave(b, dim=-1)[..., None]
    for x, o in zip(base, own):
        if x is not None:
            x[:, :, -r * b:] = torch.where(mine, o, x[:, :, -r * b:])
    return tuple(base)


def gather_parts(idx: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks ``idx`` ``[rows, m]`` of stores given in parts (:meth:`KVBlocks.device_parts`: ids count
    the parts' blocks in order, ascending along a row; one row for every KV head, or one per head)
    as keys and values ``[Hkv, m*B, d]``: the values :meth:`KVBlocks.gather` gives, in one read of
    each store (a decode step's new scoring, ``block_gather.candidate_reads``). A later part can
    hold only a row's last picks, so only those are read from it."""
    hkv, m = parts[0][0].shape[1], idx.shape[-1]
    ids = idx.expand(hkv, m)
    heads = torch.arange(hkv, device=idx.device)[:, None]
    out = []
    for which in (0, 1):
        x, start = None, 0
        for part in parts:
            store = part[which]
            n = store.shape[0]
            if n == 0:
                continue
            if x is None:
                x = store[ids.clamp(max=n - 1), heads]                      # [Hkv, m, B, d]
            else:
                r = min(m, n)
                tail = ids[:, m - r:]
                got = store[(tail - start).clamp(0, n - 1), heads]
                x[:, m - r:] = torch.where((tail >= start)[..., None, None], got, x[:, m - r:])
            start += n
        out.append(x.flatten(1, 2))
    return out[0], out[1]


def range_of_parts(parts: list[tuple[torch.Tensor, torch.Tensor]], a: int, b: int,
                   values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Blocks ``a .. b-1`` of stores given in parts (:meth:`KVBlocks.device_parts`) as keys and values
    ``[Hkv, (b-a)*B, d]`` (values None unless asked for): what :meth:`KVBlocks.gather` gives for
    ``arange(a, b)``, by slicing (measuring a new block's digests reads one block of a question's
    own store this way in a few calls instead of a gather that mixes both stores)."""
    out = []
    for which in (0, 1) if values else (0,):
        pieces, start = [], 0
        for part in parts:
            store = part[which]
            lo, hi = max(a - start, 0), min(b - start, store.shape[0])
            if lo < hi:
                pieces.append(store[lo:hi])
            start += store.shape[0]
        out.append(flatten_blocks(pieces[0] if len(pieces) == 1 else torch.cat(pieces)))
    return out[0], (out[1] if values else None)
