"""The device-side block cache: full blocks live in host memory (or on disk) and the ones retrieval
picks are copied into a bounded set of device slots, least recently used evicted first (InfLLM's
offload; the second level of ACRE's two-level memory)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch

from .blocks import GrowableBlocks

# Reads one KV head of each of some blocks from the slow tier: ``(blocks [u], heads [u], keys, values)``
# -> host ``[u, B, d]`` keys and values, each None where not asked for (block ids may repeat, e.g.
# several heads of one block).
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
    """

    def __init__(self, reader: UnitReader, n_blocks: int, shape: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device, capacity: int):
        self.reader, self.n_blocks = reader, n_blocks
        self.kv_heads, b, d = shape
        self.capacity, self.device = capacity, torch.device(device)
        self.units = capacity * self.kv_heads
        self._k = torch.empty((self.units, b, d), dtype=dtype, device=self.device)
        self._v = torch.empty_like(self._k)
        self._slot: OrderedDict[int, int] = OrderedDict()  # block * Hkv + head -> slot, LRU first
        self._free = list(range(self.units))
        # which part each slot holds: a keys-only request (the rerank's candidates) fills keys only
        self._has = [[False, False] for _ in range(self.units)]
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _read(self, units: list[int], keys: bool = True, values: bool = True):
        u = torch.tensor(units)
        return self.reader(u // self.kv_heads, u % self.kv_heads, keys, values)

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Blocks ``idx`` (``[n]`` for every head, or ``[Hkv, n]``) as ``[Hkv, n*B, d]`` keys and
        values on the device; a part left out (``keys=False`` / ``values=False``) is not read for
        pairs that do not hold it yet (their slot gets it when a later request asks)."""
        hkv = self.kv_heads
        ids = (idx if idx.dim() == 2 else idx[None].expand(hkv, -1)).cpu()
        n = ids.shape[1]
        units = (ids * hkv + torch.arange(hkv)[:, None]).flatten().tolist()   # head-major

        def shaped(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.view(hkv, n * x.shape[1], x.shape[2])

        wanted = set(units)
        if len(wanted) > self.units:  # larger than the cache: read straight through
            k, v = self._read(units, keys, values)
            self.misses += len(units)
            return (shaped(k.to(device)) if keys else None, shaped(v.to(device)) if values else None)
        with self._lock:
            unique = list(dict.fromkeys(units))                                      # each pair once
            missing = [u for u in unique if u not in self._slot]
            self.hits += len(units) - len(missing)
            self.misses += len(missing)
            for u in units:
                if u in self._slot:
                    self._slot.move_to_end(u)
            for u in missing:
                if self._free:
                    slot = self._free.pop()
                else:  # evict the least recently used pair not needed now
                    slot = self._slot.pop(next(x for x in self._slot if x not in wanted))
                self._has[slot] = [False, False]
                self._slot[u] = slot
            for part, store, asked in ((0, self._k, keys), (1, self._v, values)):
                if not asked:
                    continue
                lack = [u for u in unique if not self._has[self._slot[u]][part]]
                if lack:
                    got = self._read(lack, part == 0, part == 1)[part]
                    s = torch.tensor([self._slot[u] for u in lack], device=self.device)
                    store[s] = got.to(self.device, non_blocking=True)
                    for u in lack:
                        self._has[self._slot[u]][part] = True
            sel = torch.tensor([self._slot[u] for u in units], device=self.device)
            k = shaped(self._k.index_select(0, sel)) if keys else None
            v = shaped(self._v.index_select(0, sel)) if values else None
        return k, v


class HostBlocks:
    """Blocks kept in (pinned) host memory, served to the device through a :class:`DeviceBlockCache`."""

    def __init__(self, store: GrowableBlocks, device: torch.device, capacity: int):
        self.store = store
        self.cache = DeviceBlockCache(self._read, store.n_blocks, store.shape, store.dtype, device, capacity)

    @property
    def n_blocks(self) -> int:
        return self.store.n_blocks

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """New blocks go to host memory; they reach the device when retrieval first asks for them."""
        self.store.append(k, v)

    def _read(self, blocks: torch.Tensor, heads: torch.Tensor, keys: bool = True,
              values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        pin = torch.cuda.is_available() and self.cache.device.type == "cuda"
        out = []
        for asked, src in ((keys, self.store.keys), (values, self.store.values)):
            x = src[blocks, heads] if asked else None
            out.append(x.pin_memory() if x is not None and pin else x)
        return out[0], out[1]

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.cache.gather(idx, device, keys, values)
