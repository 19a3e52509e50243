"""A decode step's new scoring of every block with static shapes, so that it can be captured as CUDA
graphs like the rest of the static decode step (static_decode.py).

The reference scores a decode step's query against the key bounds of every block (the document's,
then the session's own), takes the ``n_candidates`` best (the first and last block pinned where
edges are kept) and reads their keys and values into the row's candidate slots
(``BlockRetrieval.rescore``). Those calls are cheap on the GPU but ~120 per layer from Python: a step
that scores again took 29-49 ms on the Llama-3.1-8B shape on an H100 against ~9 ms for a graph step
(docs/benchmarks.md, thirtieth session). Here the same work reads only tensors at fixed addresses:

* the document's block store and key bounds (fixed for as long as the document lives: a
  :class:`DocumentScoring` is made per document and positions mode, its graphs captured once);
* each row's own blocks and bounds in a padded store of :data:`OWN_BLOCKS` blocks
  (:class:`RowOwnBlocks`), kept in step with the session's as blocks leave the window;
* each row's block count as a device tensor: blocks past it are masked to ``-inf`` before the
  softmax, and the entropy and the pinned last block read the count from the device.

The arithmetic is the reference's (the same functions on the same operands, the own part padded),
so the candidates are the reference's up to float rounding of sums over a longer, zero-padded row.
Per layer the scoring is one CUDA graph replayed between the step's segments (captured after the
first step of a document that scored this way eagerly, so that every kernel is compiled and
initialised before the capture); on the CPU it runs eagerly inside the step (tests).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..memory.blocks import as_blocks
from ..memory.layer_memory import joint_own_store
from ..retrieval.budget import normalized_entropy
from ..retrieval.methods import BoundScorer, best_ids, pin_edges
from ..retrieval.score import bound_logits_parts, reduce_tokens
from .block_gather import candidate_reads, gather_parts_triton

if TYPE_CHECKING:
    from ..session import Session
    from .static_decode import DecodeGraph

# blocks a row holds of its session's own (the question's tokens past the window, then the
# answer's): 64 blocks of 32 tokens, 2,048 tokens, ~268 MiB per row on the Llama-3.1-8B shape in bf16.
# A session with more scores again eagerly, as before.
OWN_BLOCKS = 64
NEG_INF = float("-inf")


def scores_statically(method) -> bool:
    """Whether a method's decode scoring has a static form here: Quest's key bounds reduced by a
    softmax over blocks (the default's scorer), one count of candidates for every layer."""
    scorer = getattr(method, "scorer", None)
    return isinstance(scorer, BoundScorer) and scorer.mass and getattr(method, "n_candidates", 0) > 0


def own_count(s: "Session") -> int | None:
    """How many blocks ``s`` added to its document's (None: its memory is not a document's plus its
    own, e.g. a session that read its text itself)."""
    own = getattr(s.memory[0].blocks, "own", None)
    return None if own is None else own.n_blocks


class RowOwnBlocks:
    """Each row's copy of its session's own blocks (keys and values as stored) and their key bounds,
    padded to :data:`OWN_BLOCKS`: fixed tensors that a captured scoring reads beside the document's."""

    def __init__(self, n_layers: int, n_rows: int, kv_heads: int, block_size: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (n_layers, n_rows, OWN_BLOCKS, kv_heads)
        self.k = torch.zeros(shape + (block_size, head_dim), dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        # key bounds are kept in bf16 (memory/digests.py: outward_bf16)
        self.lo = torch.zeros(shape + (head_dim,), dtype=torch.bfloat16, device=device)
        self.hi = torch.zeros_like(self.lo)
        self.block_size = block_size
        # per row: whose blocks it holds and how many (None: none yet, or no longer in step)
        self.holds: list[tuple[weakref.ReferenceType, int] | None] = [None] * n_rows

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.lo, self.hi))

    def synced(self, s: "Session", r: int) -> bool:
        """Whether row ``r`` holds all of ``s``'s own blocks."""
        held = self.holds[r]
        return held is not None and held[0]() is s and held[1] == own_count(s)

    def sync(self, s: "Session", r: int, mode: str, rotate_for, measure_all) -> bool:
        """Row ``r`` holding ``s``'s own blocks and their bounds for ``mode`` (measured first where the
        session has not measured them: ``measure_all(keys, n_before)`` measures every layer's at once,
        as ``DecodeGraph._bound_left_blocks``, where they are one joint store; else
        ``rotate_for(layer)`` gives each layer's rotation). False where they do not fit or are not on the device as
        one store per part (the row then scores eagerly)."""
        if self.synced(s, r):
            return True
        n = own_count(s)
        self.holds[r] = None
        if n is None or n > OWN_BLOCKS:
            return False
        if n and self._sync_joint(s, r, n, mode, measure_all):
            return True
        for layer, mem in enumerate(s.memory):
            parts = mem.blocks.device_parts(self.k.device)
            if parts is None or (n and len(parts) != 2):   # none of its own yet: the store may be absent
                return False
            if not n:
                continue
            d = mem.digests["bounds", mode]
            if d.n_known < n:
                mem.bound_parts(mode, rotate_for(layer))
            lo, hi = d.known
            if lo.dtype != self.lo.dtype or d.n_known < n:
                return False
            self.k[layer, r, :n] = parts[1][0]
            self.v[layer, r, :n] = parts[1][1]
            self.lo[layer, r, :n] = lo[:n]
            self.hi[layer, r, :n] = hi[:n]
        self.holds[r] = (weakref.ref(s), n)
        return True

    def _sync_joint(self, s: "Session", r: int, n: int, mode: str, measure_all) -> bool:
        """:meth:`sync` in a few calls where every layer's own blocks are one joint store
        (``LayeredBlocks``, a question's): the blocks copied once for all layers, the bounds every layer
        knows stacked from their digests, and the ones none knows yet measured for all layers at once
        (the usual first step of an answer: the question measured its own blocks, the step's eviction
        by the reference's rule left one more unmeasured); rather than a lookup, perhaps a measurement
        and four copies per layer (15-26 ms per row on the 8B shape, H100, thirty-second session).
        False, changing nothing in the row, where the layers know different numbers of them."""
        joint = joint_own_store(s.memory)
        if joint is None or any(st.n_blocks != n for st in joint.layers) \
                or joint.device != self.k.device or joint.dtype != self.k.dtype:
            return False
        digests = [mem.digests["bounds", mode] for mem in s.memory]
        known = {min(d.n_known, n) for d in digests}
        if len(known) != 1 or any(d.n_known and d.known[0].dtype != self.lo.dtype for d in digests):
            return False
        have = known.pop()
        k, v = joint.first(n)                                                    # [L, n, Hkv, B, d]
        # the rest measured as the layers' scorers would and handed to their digests: then all know n
        if have < n and measure_all(k[:, have:].permute(0, 2, 1, 3, 4).flatten(2, 3),
                                    digests[0].n_parent + have) is None:
            return False
        lo = torch.stack([d.known[0][:n] for d in digests])
        hi = torch.stack([d.known[1][:n] for d in digests])
        self._put(r, 0, k, v, lo, hi)
        self.holds[r] = (weakref.ref(s), n)
        return True

    def _put(self, r: int, at: int, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Row ``r``'s blocks from ``at`` on: keys and values ``[L, n, Hkv, B, d]``, bounds ``[L, n, Hkv, d]``."""
        n = k.shape[1]
        self.k[:, r, at:at + n] = k
        self.v[:, r, at:at + n] = v
        self.lo[:, r, at:at + n] = lo
        self.hi[:, r, at:at + n] = hi

    def append(self, s: "Session", r: int, before: int | None, k: torch.Tensor, v: torch.Tensor,
               lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Blocks that just left every layer's window of ``s`` (its own blocks ``before ..``): keys and
        values ``[L, Hkv, n*B, d]`` as stored, bounds ``[L, n, Hkv, d]``, added where row ``r`` holds
        the blocks before them (else the row is synced in full when it next scores this way)."""
        held = self.holds[r]
        n = k.shape[2] // self.block_size
        if held is None or held[0]() is not s or held[1] != before or before + n > OWN_BLOCKS:
            self.holds[r] = None
            return
        self._put(r, before, as_blocks(k, self.block_size), as_blocks(v, self.block_size), lo, hi)
        self.holds[r] = (held[0], before + n)


@dataclass
class DocumentScoring:
    """The fixed inputs and outputs of a static scoring over one document's blocks at one positions
    mode: per layer the document's store ``(k, v)`` ``[n_doc, Hkv, B, d]`` and key bounds ``(lo, hi)``
    ``[n_doc, Hkv, d]``; per layer and row the candidates ``[sel, m]``, the evidence over every block
    ``[sel, n_doc + OWN_BLOCKS]`` and its normalized entropy, which the host reads after the step;
    the captured scoring of each layer per ``(rows, track, rows that score)`` once a step has run it
    eagerly."""

    key: tuple
    exact: bool
    n_doc: int
    blocks: list
    bounds: list
    cand: torch.Tensor
    evidence: torch.Tensor
    entropy: torch.Tensor
    hidden: torch.Tensor          # [R, N]: blocks past each row's count
    positions: torch.Tensor       # [N]
    graphs: dict = field(default_factory=dict)

    @classmethod
    def key_for(cls, s: "Session", mode: str, device: torch.device):
        """What identifies ``s``'s document's blocks and bounds at ``mode`` (their tensors' addresses
        and the count), with those tensors; None where they are not fixed device tensors."""
        blocks, bounds, n_doc = [], [], None
        for mem in s.memory:
            base = getattr(mem.blocks, "base", None)
            d = mem.digests["bounds", mode]
            parts = base.device_parts(device) if base is not None else None
            parent = d.parent
            if parts is None or len(parts) != 1 or parent is None or parent.parent is not None:
                return None
            n = base.n_blocks
            if d.n_parent != n or parent.n_known < n or (n_doc is not None and n != n_doc):
                return None
            lo, hi = parent.known
            if lo.dtype != torch.bfloat16:
                return None
            n_doc = n
            blocks.append(parts[0])
            bounds.append((lo if lo.shape[0] == n else lo[:n], hi if hi.shape[0] == n else hi[:n]))
        ptrs = tuple(t.data_ptr() for pair in blocks + bounds for t in pair)
        return (mode, n_doc, ptrs), blocks, bounds

    @classmethod
    def make(cls, key: tuple, blocks: list, bounds: list, graph: "DecodeGraph") -> "DocumentScoring":
        mode, n_doc, _ = key
        L, R, dev = len(blocks), graph.n_rows, graph.device
        n = n_doc + OWN_BLOCKS
        graph._filled_masks(graph.m_cap)   # made here, never first inside a capture
        return cls(key, mode == "exact", n_doc, blocks, bounds,
                   cand=torch.zeros((L, R, graph.sel_rows, graph.m_cap), dtype=torch.long, device=dev),
                   evidence=torch.zeros((L, R, graph.sel_rows, n), dtype=torch.float32, device=dev),
                   entropy=torch.zeros((L, R), dtype=torch.float32, device=dev),
                   hidden=torch.ones((R, n), dtype=torch.bool, device=dev),
                   positions=torch.arange(n, device=dev))


def score_layer(g: "DecodeGraph", sc: DocumentScoring, layer: int, qm: torch.Tensor, scaling: float,
                rows: tuple[int, ...]) -> None:
    """Layer ``layer``'s new scoring for rows ``rows`` with static shapes: each row's query at the
    memory's rotation (``qm`` ``[n_r * Hkv, G, d]``) against the document's bounds and the row's own,
    the ``m_cap`` best blocks (edges pinned where kept), their keys and values read into the row's
    candidate slots, and the candidates, evidence and entropy left in ``sc`` for the host."""
    method = g.method
    hkv, g_heads, d = g.hkv, g.g_heads, g.d
    own = g.own
    rope_type = g.adapter.kinds[layer].rope_type
    m = g.m_cap
    doc_bounds, doc_blocks = sc.bounds[layer], sc.blocks[layer]
    slots_filled, cands_filled, ends = g._filled_masks(m)
    for r in rows:
        q = qm[r * hkv:(r + 1) * hkv].reshape(hkv * g_heads, 1, d)                     # [H, 1, d]
        u = bound_logits_parts(q, [doc_bounds, (own.lo[layer, r], own.hi[layer, r])], doc_blocks[0].dtype)
        u.masked_fill_(sc.hidden[r], NEG_INF)
        ev = reduce_tokens(u, None, hkv, "softmax", scaling)                              # [Hkv, N]
        if not method.per_head:
            ev = ev.sum(0, keepdim=True)
        n_all = g.n_all[r:r + 1]
        sc.entropy[layer, r] = normalized_entropy(ev, mass=True, n_valid=n_all).mean()
        sc.evidence[layer, r] = ev
        ranked = ev.masked_fill(sc.hidden[r], NEG_INF)
        if method.keep_edges:
            ranked = pin_edges(ranked, n_all)
        cand = best_ids(ranked, m)                                                       # [sel, m]
        sc.cand[layer, r] = cand
        keys, values, visible, ok, edge = g._slots[layer][r]
        parts = [doc_blocks, (own.k[layer, r], own.v[layer, r])]
        if g.gather_kernel:
            gather_parts_triton(parts, cand, g.tables[rope_type] if sc.exact else None, g.n_sink,
                                keys[None], values[None])
        else:
            k, v = candidate_reads(cand, parts, g.block_tables[rope_type] if sc.exact else None, g.dtype)
            keys.copy_(k)
            values.copy_(v)
        visible.copy_(slots_filled)
        ok.copy_(cands_filled)
        if method.keep_edges:
            edge.copy_(ends)
        else:
            edge.zero_()


__all__ = ["OWN_BLOCKS", "DocumentScoring", "RowOwnBlocks", "own_count", "score_layer", "scores_statically"]
