"""The device-side block cache: full blocks live in host memory (or on disk) and the ones retrieval
picks are copied into a bounded set of device slots, least recently used evicted first (InfLLM's
offload; the second level of ACRE's two-level memory)."""

from __future__ import annotations

import threading
from typing import Callable

import torch

from .blocks import GrowableBlocks
from .quantized import Int8Blocks

# Reads one KV head of each of some blocks from the slow tier: ``(blocks [u], heads [u], keys, values)``
# -> ``[u, B, d]`` keys and values on the host or already on the cache's device, each None where not
# asked for (block ids may repeat, e.g. several heads of one block).
UnitReader = Callable[[torch.Tensor, torch.Tensor, bool, bool],
                      tuple[torch.Tensor | None, torch.Tensor | None]]


class DeviceBlockCache:
    """A fixed number of device slots holding recently used blocks of one layer, one KV head of one
    block per slot (``capacity`` blocks' worth: ``capacity x Hkv`` slots).

    ``gather`` returns the requested blocks on the device; the (block, head) pairs not resident are
    read through ``reader`` (one batched read), copied into the least recently used slots, then
    indexed. A slot per head, not per block: with per-head selection each head asks for its own
    blocks, and a cache of whole blocks would hold (and copy) every head of each of them; the
    default's candidates (4x the picks, per head) then outgrew it and every decode step read them
    through again (docs/benchmarks.md, "offload"). Counters ``hits`` / ``misses`` count (block,
    head) pairs, to make its behaviour visible in benchmarks.

    The bookkeeping is a few host tensors, updated with whole-request tensor ops: a request names
    thousands of pairs (the rerank's candidates, per KV head), and a Python loop over them cost a
    reloaded document's first question more than its reads. ``_slot_of[unit]`` is the slot of
    pair ``unit = block * Hkv + head`` (-1: not resident), ``_unit_of[slot]`` the reverse (-1: free),
    ``_stamp[slot]`` when it was last used (-1: free), ``_has[part, slot]`` whether it holds its
    keys (part 0) / values (part 1).
    """

    def __init__(self, reader: UnitReader, n_blocks: int, shape: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device, capacity: int):
        self.reader, self.n_blocks = reader, n_blocks
        self.kv_heads, b, d = shape
        self.capacity, self.device = capacity, torch.device(device)
        self.units = capacity * self.kv_heads
        self._k = torch.empty((self.units, b, d), dtype=dtype, device=self.device)
        self._v = torch.empty_like(self._k)
        self._slot_of = torch.full((max(1, n_blocks) * self.kv_heads,), -1, dtype=torch.long)
        self._unit_of = torch.full((self.units,), -1, dtype=torch.long)
        self._stamp = torch.full((self.units,), -1, dtype=torch.long)
        # which part each slot holds: a keys-only request (the rerank's candidates) fills keys only
        self._has = torch.zeros((2, self.units), dtype=torch.bool)
        self._clock = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def resident(self) -> int:
        """(block, head) pairs held now."""
        return int((self._slot_of >= 0).sum())

    @property
    def free(self) -> int:
        """Slots holding no pair."""
        return int((self._unit_of < 0).sum())

    def _read(self, units: torch.Tensor, keys: bool = True, values: bool = True):
        return self.reader(units // self.kv_heads, units % self.kv_heads, keys, values)

    def _place(self, units: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Slots of ``units`` (distinct pairs, all of one request, at most ``self.units``; ``last``:
        where each is last named in it) and how many were missing. The missing ones are placed in
        free slots or, when none is left, in those used least recently by earlier requests (never
        one this request needs); every one is stamped as used at its last position in the
        request, so that later evictions follow request order."""
        if units.numel() == 0:
            return units, 0
        top = int(units.max())
        if top >= self._slot_of.numel():   # a store that grew since (HostBlocks)
            grown = torch.full((2 * (top + 1),), -1, dtype=torch.long)
            grown[:self._slot_of.numel()] = self._slot_of
            self._slot_of = grown
        slots = self._slot_of[units]
        miss = slots < 0
        n_miss = int(miss.sum())
        if n_miss:
            age = self._stamp.clone()
            age[slots[~miss]] = torch.iinfo(torch.long).max   # needed now: never evicted for it
            take = torch.topk(age, n_miss, largest=False, sorted=False).indices
            gone = self._unit_of[take]
            self._slot_of[gone[gone >= 0]] = -1
            self._unit_of[take] = units[miss]
            self._slot_of[units[miss]] = take
            self._has[:, take] = False
            slots[miss] = take
        self._stamp[slots] = self._clock + last
        self._clock += int(last.max()) + 1
        return slots, n_miss

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Blocks ``idx`` (``[n]`` for every head, or ``[Hkv, n]``) as ``[Hkv, n*B, d]`` keys and
        values on the device; a part left out (``keys=False`` / ``values=False``) is not read for
        pairs that do not hold it yet (their slot gets it when a later request asks)."""
        hkv = self.kv_heads
        ids = (idx if idx.dim() == 2 else idx[None].expand(hkv, -1)).cpu().long()
        n = ids.shape[1]
        units = (ids * hkv + torch.arange(hkv)[:, None]).flatten()   # head-major

        def shaped(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.view(hkv, n * x.shape[1], x.shape[2])

        uniq, at = torch.unique(units, return_inverse=True)            # each pair once
        if uniq.numel() > self.units:  # larger than the cache: read straight through
            k, v = self._read(units, keys, values)
            with self._lock:
                self.misses += units.numel()
            return (shaped(k.to(device)) if keys else None, shaped(v.to(device)) if values else None)
        with self._lock:
            last = torch.zeros_like(uniq).scatter_reduce_(0, at, torch.arange(units.numel()), "amax",
                                                           include_self=False)
            slots, missing = self._place(uniq, last)
            self.hits += units.numel() - missing
            self.misses += missing
            for part, store, asked in ((0, self._k, keys), (1, self._v, values)):
                lack = ~self._has[part, slots]
                if asked and lack.any():
                    got = self._read(uniq[lack], part == 0, part == 1)[part]
                    store[slots[lack].to(self.device)] = got.to(self.device, non_blocking=True)
                    self._has[part, slots[lack]] = True
            sel = slots[at].to(self.device)
            k = shaped(self._k.index_select(0, sel)) if keys else None
            v = shaped(self._v.index_select(0, sel)) if values else None
        return k, v


# How offloaded blocks are held in host memory (``RetrievalConfig.host_kv_dtype``): the store type.
HOST_STORES = {"model": GrowableBlocks, "int8": Int8Blocks}


class HostBlocks:
    """Blocks kept in host memory (as the model's dtype, or as int8: :class:`Int8Blocks`), served to
    the device through a :class:`DeviceBlockCache` (each read staged in pinned memory; int8 blocks
    travel as int8 and are dequantized on the device)."""

    def __init__(self, store: GrowableBlocks | Int8Blocks, device: torch.device, capacity: int):
        self.store = store
        self.cache = DeviceBlockCache(self._read, store.n_blocks, store.shape, store.dtype, device, capacity)

    @classmethod
    def new(cls, kind: str, kv_heads: int, block_size: int, head_dim: int, dtype: torch.dtype,
            device: torch.device, capacity: int) -> "HostBlocks":
        """An empty layer's blocks in host memory, held as ``kind`` (a key of ``HOST_STORES``)."""
        return cls(HOST_STORES[kind](kv_heads, block_size, head_dim, dtype, "cpu"), device, capacity)

    @property
    def n_blocks(self) -> int:
        return self.store.n_blocks

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """New blocks go to host memory; they reach the device when retrieval first asks for them."""
        self.store.append(k, v)

    def reserve(self, n: int) -> None:
        self.store.reserve(n)

    def device_parts(self, device: torch.device) -> None:
        """None: the blocks are in host memory."""

    def _read(self, blocks: torch.Tensor, heads: torch.Tensor, keys: bool = True,
              values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.store.read_units(blocks, heads, keys, values, device=self.cache.device)

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.cache.gather(idx, device, keys, values)
