"""The device-side block cache: full blocks live in host memory (or on disk) and the ones retrieval
picks are copied into a bounded set of device slots, least recently used evicted first (InfLLM's
offload; the second level of ACRE's two-level memory)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch

from .blocks import GrowableBlocks, flatten_blocks, per_head

# Reads blocks (ascending ids) from the slow tier: returns [n, Hkv, B, d] keys and values on the host.
BlockReader = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]


class DeviceBlockCache:
    """A fixed number of device slots holding recently used blocks of one layer.

    ``gather`` returns the requested blocks on the device; blocks not resident are read through
    ``reader`` (one batched read), copied into the least recently used slots, then indexed.
    Counters ``hits`` / ``misses`` make its behaviour visible in benchmarks.
    """

    def __init__(self, reader: BlockReader, n_blocks: int, shape: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device, capacity: int):
        self.reader, self.n_blocks = reader, n_blocks
        self.capacity, self.device = capacity, torch.device(device)
        self._k = torch.empty((capacity, *shape), dtype=dtype, device=self.device)
        self._v = torch.empty_like(self._k)
        self._slot: OrderedDict[int, int] = OrderedDict()  # block id -> slot, LRU first
        self._free = list(range(capacity))
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Blocks ``idx`` on the device; leaving keys or values out still fills whole blocks (a slot
        holds both)."""
        if idx.dim() == 2:
            return per_head(self.gather, idx, device, keys, values)
        ids = idx.tolist()
        if len(ids) > self.capacity:  # larger than the cache: read straight through
            k, v = self.reader(ids)
            self.misses += len(ids)
            return (flatten_blocks(k.to(device)) if keys else None,
                    flatten_blocks(v.to(device)) if values else None)
        with self._lock:
            missing = list(dict.fromkeys(i for i in ids if i not in self._slot))  # each block once
            self.hits += len(ids) - len(missing)
            self.misses += len(missing)
            wanted = set(ids)
            for i in ids:
                if i in self._slot:
                    self._slot.move_to_end(i)
            if missing:
                k, v = self.reader(missing)
                slots = []
                for _ in missing:
                    if self._free:
                        slots.append(self._free.pop())
                    else:  # evict the least recently used block not needed now
                        victim = next(b for b in self._slot if b not in wanted)
                        slots.append(self._slot.pop(victim))
                s = torch.tensor(slots, device=self.device)
                self._k[s] = k.to(self.device, non_blocking=True)
                self._v[s] = v.to(self.device, non_blocking=True)
                for i, slot in zip(missing, slots):
                    self._slot[i] = slot
            sel = torch.tensor([self._slot[i] for i in ids], device=self.device)
            k = flatten_blocks(self._k.index_select(0, sel)) if keys else None
            v = flatten_blocks(self._v.index_select(0, sel)) if values else None
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

    def _read(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.tensor(ids)
        k, v = self.store.keys.index_select(0, i), self.store.values.index_select(0, i)
        if torch.cuda.is_available() and self.cache.device.type == "cuda":
            k, v = k.pin_memory(), v.pin_memory()
        return k, v

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.cache.gather(idx, device, keys, values)
