"""One layer's context memory: sinks, the local window, and the evicted blocks with their summaries.

Tokens enter the local window; when it is full, the oldest tokens leave it: the first ``n_sink``
become permanent sinks, the rest leave in whole blocks that keep their full KV (second level)
and, for the scorers that read it, one summary key per KV head (first level). Keys are stored
without rotary position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import GrowableBlocks, KVBlocks, LayeredBlocks, StackedBlocks, as_blocks
from .digests import BlockDigests, BlockRotation, measure_bounds, measure_means
from .summaries import SummaryKeys, representative_keys


@dataclass
class EvictionPolicy:
    """What happens to tokens that leave the local window of one layer."""

    capacity: int | None      # local window size; None keeps every token (full attention)
    n_sink: int               # tokens kept forever as sinks
    block_size: int           # tokens per memory block
    keep_blocks: bool         # False: evicted tokens are dropped (streaming, sliding-window layers)
    repr_topk: int = 4
    keep_summaries: bool = True  # False: no summary keys (the method's scorer never reads them)

    def leaving(self, n_local: int, n_sink: int, incoming: int) -> tuple[int, int]:
        """What leaves a window of ``n_local`` tokens (``n_sink`` sinks kept so far) so that ``incoming``
        more fit: ``(to_sink, rest)``, the first ``to_sink`` becoming sinks and the next ``rest`` leaving
        as whole blocks (``keep_blocks``; else dropped). The one rule :meth:`LayerMemory.make_room`
        follows and the batched paths that plan evictions ahead (attention/chunk.py,
        attention/question_rows.py) restate through this method."""
        if self.capacity is None:
            return 0, 0
        need = n_local + incoming - self.capacity
        if need <= 0:
            return 0, 0
        to_sink = min(need, max(0, self.n_sink - n_sink))
        rest = need - to_sink
        if self.keep_blocks:
            rest = -(-rest // self.block_size) * self.block_size
        return to_sink, rest


class LayerMemory:
    def __init__(self, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 block_size: int, blocks: KVBlocks | None = None, summaries: SummaryKeys | None = None):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, torch.device(device)
        empty = torch.empty((kv_heads, 0, head_dim), dtype=dtype, device=self.device)
        self.sink_k, self.sink_v = empty, empty
        self._placed_sinks: tuple[torch.Tensor, torch.Tensor] | None = None  # (sink_k it was made from, placed)
        self.local_k, self.local_v = empty, empty
        self.local_score = torch.empty((kv_heads, 0), dtype=torch.float32, device=self.device)
        self.local_start = 0  # absolute position of the first token in the local window
        self.block_size = block_size
        self.blocks: KVBlocks = blocks if blocks is not None else GrowableBlocks(
            kv_heads, block_size, head_dim, dtype, self.device)
        self.summaries = summaries if summaries is not None else SummaryKeys(kv_heads, head_dim, dtype, self.device)
        # per kind ("bounds", "means") and positions mode ("fixed", "exact"): per-block digests, measured lazily
        self.digests: dict[tuple[str, str], BlockDigests] = {
            (kind, mode): BlockDigests(fn) for kind, fn in (("bounds", measure_bounds), ("means", measure_means))
            for mode in ("fixed", "exact")}

    def placed_sink_keys(self, place) -> torch.Tensor:
        """``place(sink_k)`` (e.g. the sink keys rotated at their true positions), computed once per set
        of sinks: they never change once full, so every later layer step reuses it (forks too)."""
        if self._placed_sinks is None or self._placed_sinks[0] is not self.sink_k:
            self._placed_sinks = (self.sink_k, place(self.sink_k))
        return self._placed_sinks[1]

    # -------------------------------------------------------------------- views
    @property
    def n_local(self) -> int:
        return self.local_k.shape[1]

    @property
    def n_sink(self) -> int:
        return self.sink_k.shape[1]

    @property
    def n_blocks(self) -> int:
        return self.blocks.n_blocks

    def bounds(self, mode: str, rotate: BlockRotation | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block key bounds ``(lo, hi)``, each ``[n_blocks, Hkv, d]``, for memory at ``mode``
        positions (``rotate`` brings keys to their true positions; None for the fixed angle)."""
        return self.digests["bounds", mode].get(self.blocks, self.n_blocks, self.device, rotate)

    def bound_parts(self, mode: str, rotate: BlockRotation | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`bounds` in consecutive parts (the document's blocks, then this session's own), without
        joining them into one copy."""
        return self.digests["bounds", mode].parts(self.blocks, self.n_blocks, self.device, rotate)

    def means(self, mode: str, rotate: BlockRotation | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block mean key and value ``(k_mean, v_mean)`` (ACRE's first level), as :meth:`bounds`."""
        return self.digests["means", mode].get(self.blocks, self.n_blocks, self.device, rotate)

    # -------------------------------------------------------------------- updates
    def make_room(self, incoming: int, policy: EvictionPolicy) -> None:
        """Evict the oldest local tokens so that ``incoming`` more fit in the window."""
        to_sink, rest = policy.leaving(self.n_local, self.n_sink, incoming)
        if not to_sink + rest:
            return
        if to_sink:
            self.sink_k = torch.cat([self.sink_k, self.local_k[:, :to_sink]], 1)
            self.sink_v = torch.cat([self.sink_v, self.local_v[:, :to_sink]], 1)
        if policy.keep_blocks and rest:
            self._evict_blocks(to_sink, rest, policy)
        self._drop_front(to_sink + rest)

    def leave_as_blocks(self, count: int, policy: EvictionPolicy) -> None:
        """The window's first ``count`` tokens (whole blocks; the sinks already full) leave as blocks,
        what :meth:`make_room` does once its sinks are full; for a caller that decides the count
        itself (the static decode step, whose window's newest tokens are held elsewhere)."""
        if not self._leaves_whole_blocks(count, policy):
            raise ValueError(f"{count} window tokens cannot leave as whole blocks here")
        self._evict_blocks(0, count, policy)
        self._drop_front(count)

    def _leaves_whole_blocks(self, count: int, policy: EvictionPolicy) -> bool:
        """Whether the window's first ``count`` tokens may leave as whole blocks (the sinks full)."""
        return (policy.keep_blocks and not count % policy.block_size and count <= self.n_local
                and self.n_sink >= policy.n_sink)

    def _drop_front(self, drop: int) -> None:
        self.local_k, self.local_v = self.local_k[:, drop:], self.local_v[:, drop:]
        self.local_score = self.local_score[:, drop:]
        self.local_start += drop

    def _evict_blocks(self, start: int, count: int, policy: EvictionPolicy) -> None:
        b = policy.block_size
        n = count // b
        sl = slice(start, start + count)
        k, v = as_blocks(self.local_k[:, sl], b), as_blocks(self.local_v[:, sl], b)   # [n, Hkv, B, d]
        if policy.keep_summaries:
            score = self.local_score[:, sl].reshape(self.kv_heads, n, b).transpose(0, 1)
            self.summaries.append(representative_keys(k, score, policy.repr_topk))
        self.blocks.append(k, v)   # views: each store copies them into its own layout

    def store_blocks(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Batched prefill (attention/chunk.py): the full KV ``[Hkv, n*B, d]`` of blocks that will leave
        the window during this chunk, stored ahead so its execution blocks can pick them; their
        summaries follow in :meth:`settle_chunk`."""
        b = self.block_size
        self.blocks.append(as_blocks(k, b).contiguous(), as_blocks(v, b).contiguous())

    def add_sinks(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Batched prefill: window tokens ``[Hkv, n, d]`` (the document's first ones) that leave as
        sinks during this chunk, stored ahead like :meth:`store_blocks`' blocks."""
        self.sink_k = torch.cat([self.sink_k, k], 1)
        self.sink_v = torch.cat([self.sink_v, v], 1)

    def settle_chunk(self, k: torch.Tensor, v: torch.Tensor, evicted: int) -> None:
        """Batched prefill (for methods without summary keys): of ``[window | chunk]`` keys and values
        ``[Hkv, L, d]``, the first ``evicted`` tokens left as sinks and blocks (stored by
        :meth:`add_sinks` and :meth:`store_blocks`); the rest is the new window, copied out: a view
        would keep the whole ``[window | chunk]`` alive with it (2 GiB over the 8B shape's 32 layers
        after a 16K-token chunk, held while answering; docs/benchmarks.md, twenty-fifth session)."""
        self.local_k, self.local_v = k[:, evicted:].clone(), v[:, evicted:].clone()
        self.local_score = self.local_score.new_zeros((self.kv_heads, k.shape[1] - evicted))
        self.local_start += evicted

    def append_local(self, k: torch.Tensor, v: torch.Tensor, score: torch.Tensor | None = None) -> None:
        """Add new tokens' unrotated keys and values ``[Hkv, t, d]`` to the window."""
        self.local_k = torch.cat([self.local_k, k.to(self.dtype)], 1)
        self.local_v = torch.cat([self.local_v, v.to(self.dtype)], 1)
        if score is None:
            score = torch.zeros((self.kv_heads, k.shape[1]), dtype=torch.float32, device=self.device)
        self.local_score = torch.cat([self.local_score, score], 1)

    def add_local_scores(self, score: torch.Tensor) -> None:
        """Accumulate attention mass ``[Hkv, n_local]`` received by the tokens in the window."""
        self.local_score = self.local_score + score

    def trim_local(self, keep: int) -> None:
        """Drop all but the last ``keep`` window tokens (sliding-window layers keep only their window)."""
        drop = max(0, self.n_local - keep)
        if drop:
            self.local_k, self.local_v = self.local_k[:, drop:], self.local_v[:, drop:]
            self.local_score = self.local_score[:, drop:]
            self.local_start += drop

    # -------------------------------------------------------------------- forking
    def fork(self, own: GrowableBlocks | None = None) -> "LayerMemory":
        """A copy for one question: blocks and summaries shared read-only, window and sinks its own
        (``own``: the store of the blocks the question adds; a new one if not given)."""
        if own is None:
            own = GrowableBlocks(self.kv_heads, self.block_size, self.head_dim, self.dtype, self.device, capacity=4)
        child = LayerMemory(self.kv_heads, self.head_dim, self.dtype, self.device, self.block_size,
                            blocks=StackedBlocks(self.blocks, own), summaries=self.summaries.fork())
        # tensors here are never written in place (only replaced), so sharing them is safe
        child.sink_k, child.sink_v = self.sink_k, self.sink_v
        child._placed_sinks = self._placed_sinks
        child.local_k, child.local_v, child.local_score = self.local_k, self.local_v, self.local_score
        child.local_start = self.local_start
        child.digests = {key: d.fork(self.n_blocks) for key, d in self.digests.items()}
        return child


def fork_layers(memories: list[LayerMemory]) -> list[LayerMemory]:
    """Every layer's :meth:`LayerMemory.fork`, the blocks the question adds kept in one
    :class:`LayeredBlocks` where the layers' blocks have one shape (else a store per layer), so that
    blocks leaving every layer at once are stored at once (:func:`leave_together`)."""
    shapes = {(m.kv_heads, m.block_size, m.head_dim, m.dtype, m.device) for m in memories}
    if len(shapes) != 1:
        return [m.fork() for m in memories]
    m = memories[0]
    own = LayeredBlocks(len(memories), m.kv_heads, m.block_size, m.head_dim, m.dtype, m.device)
    return [mem.fork(store) for mem, store in zip(memories, own.layers)]


def joint_own_store(memories: list[LayerMemory]) -> LayeredBlocks | None:
    """The one store holding every layer's own blocks, in this order (:func:`fork_layers`: a
    question's), or None where the layers' own blocks are not one joint store."""
    stores = [getattr(m.blocks, "own", None) for m in memories]
    joint = getattr(stores[0], "_joint", None)
    return joint if joint is not None and joint.layers == stores else None


def leave_together(memories: list[LayerMemory], count: int, policy: EvictionPolicy,
                   k: torch.Tensor, v: torch.Tensor) -> bool:
    """Every layer's first ``count`` window tokens leave as blocks at once, their keys and values given
    as ``[L, Hkv, count, d]`` (equal to each layer's ``local_k[:, :count]``, ``local_v``; the static
    decode step holds every layer's window in one buffer): what :meth:`LayerMemory.leave_as_blocks`
    does in each layer, with one copy into the layers' joint store (:func:`fork_layers`). Returns
    False, changing nothing, where the layers' own blocks are not one joint store in this order, a
    layer keeps summary keys (measured per layer) or the tokens cannot leave as whole blocks."""
    joint = joint_own_store(memories)
    if (joint is None or policy.keep_summaries
            or not all(m._leaves_whole_blocks(count, policy) for m in memories)):
        return False
    if not joint.append_all(as_blocks(k, policy.block_size), as_blocks(v, policy.block_size)):
        return False
    for m in memories:
        m._drop_front(count)
    return True
