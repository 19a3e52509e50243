"""A prefill chunk's execution blocks at one layer, all at once.

The reference step (:mod:`.step`) walks a chunk's execution blocks one by one: make room, score,
pick, gather, attend, append. Here the same work is one batch per layer: the window tokens and
the chunk form one sequence ``X``; the blocks that leave the window during the chunk are stored
first; every execution block's queries score every block at once (a block that has not left the
window yet before execution block ``e`` is masked out of ``e``'s choice); one top-k, one gather
and one attention call over ``[sinks | picked blocks | local window]`` for all of them.

It gives the reference's result (up to float rounding) when selection does not read the blocks'
summary keys (which depend on the attention mass tokens receive while in the window: sequential
by nature). With memory at exact positions the window's keys are rotated at their absolute
positions like the memory's, so one query serves both and PyTorch's fused attention runs it;
at the fixed angle, memory and window see differently rotated queries and share one softmax by
hand. :func:`chunk_plan` says when the batch applies; otherwise the reference loop runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from ..devices import device_tensor
from ..memory.blocks import StackedBlocks
from ..retrieval.budget import normalized_entropy
from ..retrieval.methods import pin_edges
from .rope import sinks_at_true_positions

if TYPE_CHECKING:
    from .step import StepContext

# Largest score matrix one attention call materialises (elements); execution blocks are split to fit.
MAX_SCORE_ELEMENTS = 1 << 27


@dataclass(frozen=True)
class ChunkPlan:
    """Where each execution block's window lies in ``X = [window at the chunk's start | chunk]``.

    Host integers, the same for every memory layer of the pass (they all hold the same tokens).
    """

    size: int               # S, queries per execution block (the last one may have fewer)
    first_slot: int         # the pass's execution-block index of the first one (the budget's slot)
    sizes: tuple[int, ...]  # t_e
    win_start: tuple[int, ...]  # a_e: first key of execution block e's window, an index into X
    n_loc: tuple[int, ...]  # window keys before e's own queries
    n_blocks: tuple[int, ...]   # memory blocks e may pick from
    n_sinks: tuple[int, ...]    # sinks e sees (fewer than the policy's until a document's window first overflows)
    to_sink: int            # tokens of X (its first) that leave as sinks during the chunk
    evicted: int            # tokens of X that leave as sinks or blocks during the chunk

    @property
    def width(self) -> tuple[int, ...]:
        """Window length of each execution block (its old keys and its own)."""
        return tuple(n + t for n, t in zip(self.n_loc, self.sizes))


def batches_on(setting: bool | str, device: torch.device) -> bool:
    """Whether ``batch_prefill`` batches on ``device``: "auto" on accelerators only (on the CPU the
    reference loop measured faster: the batch pads every execution block to the largest pick)."""
    return device.type != "cpu" if setting == "auto" else bool(setting)


def chunk_plan(ctx: "StepContext", layer: int, t_all: int, first_slot: int = 0) -> ChunkPlan | None:
    """The batch's plan for this layer, or None where the reference loop must run. ``first_slot``:
    execution blocks of this pass already run by the loop (a chunk that crosses the native window
    runs the crossing execution block there, and the rest as a batch).

    Tokens leave the window as :meth:`LayerMemory.make_room` has them leave: the document's first
    ones as sinks until the policy's count is reached, the rest as whole blocks; an execution block
    sees the sinks and blocks formed up to its own turn.

    A question's session (its own blocks stacked on the document's) runs the loop: a stacked
    store gathers ids that ascend, and a chunk's flattened picks ascend only per execution block.
    """
    s = ctx.session
    cfg, method, kind = s.config, s.method, s.adapter.kinds[layer]
    mem = s.memory[layer]
    step = cfg.exec_block
    if (t_all <= step or not method.batchable
            or not batches_on(cfg.batch_prefill, s.adapter.device) or not kind.memory or kind.window is not None
            or s.policy.keep_summaries or s.meter is not None or s.track_sources
            or isinstance(mem.blocks, StackedBlocks)):
        return None
    if method.positions == "auto":
        # a chunk crossing the native window: this batch is its execution blocks that end inside it
        # (exact positions, StepContext.memory_query's rule); the caller batches the rest after
        inside = (s.adapter.native_window - (mem.local_start + mem.n_local)) // step * step
        if 0 < inside < t_all:
            t_all = inside
    b = cfg.block_size
    sizes = tuple(min(step, t_all - a) for a in range(0, t_all, step))
    n_loc, a, nb, sinks = mem.n_local, 0, mem.n_blocks, mem.n_sink
    starts, locs, blocks, seen_sinks = [], [], [], []
    for t in sizes:
        to_sink, rest = s.policy.leaving(n_loc, sinks, t)
        if to_sink + rest:
            drop = to_sink + rest
            # sinks are X's first tokens: every token that left before them in this chunk was one too
            if drop > n_loc or (to_sink and a != sinks - mem.n_sink):
                return None
            n_loc, a, nb, sinks = n_loc - drop, a + drop, nb + (drop - to_sink) // b, sinks + to_sink
        starts.append(a)
        locs.append(n_loc)
        blocks.append(nb)
        seen_sinks.append(sinks)
        n_loc += t
    return ChunkPlan(step, first_slot, sizes, tuple(starts), tuple(locs), tuple(blocks), tuple(seen_sinks),
                     sinks - mem.n_sink, a)


def attend_chunk(ctx: "StepContext", layer: int, plan: ChunkPlan, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, scaling: float, softcap: float | None) -> torch.Tensor:
    """q ``[H, T, d]``, k/v ``[Hkv, T, d]`` unrotated -> attention output ``[H, T, d]``."""
    s = ctx.session
    cfg, method, kind = s.config, s.method, s.adapter.kinds[layer]
    mem, rstate = s.memory[layer], s.retrieval[layer]
    h, t_all, d = q.shape
    hkv, b, n_e, size = mem.kv_heads, cfg.block_size, len(plan.sizes), plan.size
    dev = q.device

    # ---- the sequence X; the sinks and blocks that leave the window during the chunk are stored first
    x_k = torch.cat([mem.local_k, k.to(mem.dtype)], 1)
    x_v = torch.cat([mem.local_v, v.to(mem.dtype)], 1)
    n_old = mem.n_local
    if plan.to_sink:
        mem.add_sinks(x_k[:, :plan.to_sink], x_v[:, :plan.to_sink])
    if plan.evicted > plan.to_sink:
        mem.store_blocks(x_k[:, plan.to_sink:plan.evicted], x_v[:, plan.to_sink:plan.evicted])
    mq = ctx.memory_query(kind, mem, n_old, t_all, scaling)

    # ---- probe: every query token votes, weighted per execution block
    pad = n_e * size - t_all
    weights = method.probe.chunk_weights(q, rstate, plan.sizes)        # [E, S], zero on padding

    # ---- scores -> budget -> blocks (for the execution blocks that have blocks to pick from, as the
    # loop selects only then: the first ones of a document have none)
    q_mem = _pad_blocks(mq.at_memory(q), n_e, size, pad)               # [H, E, S, d]
    n_avail = device_tensor(plan.n_blocks, dev)
    counts, kmax = [0] * n_e, 0
    choosing = sum(1 for n in plan.n_blocks if n)                      # a suffix: n_blocks only grows
    if choosing:
        evidence = method.chunk_evidence(q_mem, weights, mem, mq, n_avail)  # [E, rows, N]
        ents = normalized_entropy(evidence, mass=method.scorer.mass, n_valid=n_avail[:, None]).mean(-1)  # [E]
        rstate.observe_entropies(ents[n_e - choosing:])
        counts = [ctx.budget.blocks_for(plan.first_slot + e, layer, plan.n_blocks[e], None) if plan.n_blocks[e]
                  else 0 for e in range(n_e)]
        kmax = max(counts)

    # ---- one key and one value buffer per execution block: [sinks | picked blocks (| its window)]
    width = plan.width
    w_max = max(width)
    fused = not softcap and mq.mode == "exact"      # the window joins the buffer: one fused attention
    n_s = mem.n_sink
    m = n_s + kmax * b
    k_buf = torch.empty((n_e, hkv, m + (w_max if fused else 0), d), dtype=mem.dtype, device=dev)
    v_buf = torch.empty_like(k_buf)
    k_buf[:, :, :n_s] = sinks_at_true_positions(s.adapter, kind.rope_type, mem) if mq.mode == "exact" else mem.sink_k
    v_buf[:, :, :n_s] = mem.sink_v
    mem_ok = torch.ones((n_e, m), dtype=torch.bool, device=dev)
    if min(plan.n_sinks) < n_s:   # execution blocks before the sinks were full see the ones formed by then
        mem_ok[:, :n_s] = torch.arange(n_s, device=dev)[None] < device_tensor(plan.n_sinks, dev)[:, None]
    first = mem.local_start
    if mq.mode == "exact":   # true positions up to the chunk's last key: the blocks' and the window's
        cos, sin = s.adapter.rope_table(kind.rope_type, first + x_k.shape[1])
    if kmax:
        ranked = pin_edges(evidence, n_avail) if method.keep_edges else evidence
        ids, ok = _pick(ranked, n_avail, counts, kmax)                 # [E, Hkv, kmax], [E, kmax]
        flat = ids.expand(-1, hkv, -1).permute(1, 0, 2).reshape(hkv, n_e * kmax)
        table = (cos, sin) if mq.mode == "exact" else None             # the blocks at their true positions
        s.block_gather(mem.blocks, flat, table, cfg.n_sink, k_buf[:, :, n_s:m], v_buf[:, :, n_s:m])
        mem_ok[:, n_s:] = ok.repeat_interleave(b, 1)                   # [E, kmax*B]

    # ---- the local windows, and one softmax over [memory | window] per execution block
    cols = torch.arange(w_max, device=dev)
    idx = (device_tensor(plan.win_start, dev)[:, None] + cols).clamp_(max=x_k.shape[1] - 1)  # [E, W]
    last = device_tensor(plan.sizes, dev)[:, None] - 1
    qpos = device_tensor(plan.n_loc, dev)[:, None] + torch.minimum(torch.arange(size, device=dev)[None], last)
    loc_hidden = cols[None, None] > qpos[:, :, None]                    # [E, S, W]: query j sees window key i
    if not fused:
        # window keys at relative positions 0 .. width-1, queries at n_loc + j (as the reference)
        v_loc = x_v[:, idx].transpose(0, 1)
        cos, sin = s.adapter.rope_table(kind.rope_type, max(w_max, cfg.n_local + 1))
        k_loc = s.rotation(x_k[:, idx], cos[:w_max], sin[:w_max], mem.dtype).transpose(0, 1)   # [E, Hkv, W, d]
        q_loc = s.rotation(_pad_blocks(q, n_e, size, pad), cos[qpos], sin[qpos], q.dtype)
        out = _attend(q_mem, q_loc, k_buf, v_buf, mem_ok, k_loc, v_loc, loc_hidden, scaling, softcap)
    else:  # memory at exact positions: the window rotated at its absolute positions, one fused call
        span = slice(first, first + x_k.shape[1])
        k_abs = s.rotation(x_k, cos[span], sin[span], mem.dtype)
        k_buf[:, :, m:] = k_abs[:, idx].transpose(0, 1)
        v_buf[:, :, m:] = x_v[:, idx].transpose(0, 1)
        aligned = (aligned_from(plan, counts, kmax, n_s, w_max), m + plan.n_loc[-1] + size)   # (from, keys)
        out = _attend_fused(q_mem, k_buf, v_buf, mem_ok, loc_hidden, scaling, aligned)

    # ---- bookkeeping: the blocks that left were stored above; the rest is the new window
    mem.settle_chunk(x_k, x_v, plan.evicted)
    for e in range(n_e):
        s.note_kv(plan.first_slot + e, layer, plan.n_sinks[e] + counts[e] * b + width[e])
    return out.reshape(h, n_e * size, d)[:, :t_all].to(q.dtype)


def _pad_blocks(x: torch.Tensor, n_e: int, size: int, pad: int) -> torch.Tensor:
    """``[H, T, d]`` -> ``[H, E, S, d]``, the last execution block padded with zeros."""
    if pad:
        x = torch.cat([x, x.new_zeros((x.shape[0], pad, x.shape[2]))], 1)
    return x.view(x.shape[0], n_e, size, x.shape[2])


def _pick(evidence: torch.Tensor, n_avail: torch.Tensor, counts: list[int], kmax: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``counts[e]`` blocks per execution block and row, ascending; padded to ``kmax``.

    Returns ids ``[E, Hkv or 1 -> rows, kmax]`` (0 in padded slots) and ``[E, kmax]`` slot validity."""
    n = evidence.shape[-1]
    hidden = torch.arange(n, device=evidence.device)[None, None] >= n_avail[:, None, None]
    top = evidence.masked_fill(hidden, float("-inf")).topk(kmax, -1).indices    # [E, rows, kmax]
    ok = torch.arange(kmax, device=evidence.device)[None] < device_tensor(counts, evidence.device)[:, None]
    top = torch.where(ok[:, None], top, n).sort(-1).values
    return torch.where(ok[:, None], top, 0), ok


def aligned_from(plan: ChunkPlan, counts: list[int], kmax: int, n_sink: int, w_max: int) -> int:
    """The first execution block from which on every one sees all ``n_sink`` sinks, ``kmax`` blocks
    and a window as long as the last one's: for those, a causal mask aligned to the end of their
    first ``sinks + blocks + window + S`` keys is the whole mask. A document's first execution blocks
    (sinks forming, the window filling, fewer blocks to pick from) come before it; ``len(sizes)``
    where the last one does not qualify, or where the buffers' window (``w_max`` keys) is shorter
    than the last one's old keys and a full execution block (a chunk ending in a short one)."""
    n_e, n_loc = len(plan.sizes), plan.n_loc[-1]
    if n_loc + plan.size > w_max:
        return n_e
    a = n_e
    while a and plan.n_sinks[a - 1] == n_sink and counts[a - 1] == kmax and plan.n_loc[a - 1] == n_loc:
        a -= 1
    return a


def _attend_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem_ok: torch.Tensor,
                  loc_hidden: torch.Tensor, scaling: float,
                  aligned: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`_attend` without the mass, for memory at exact positions: the window's keys rotated at
    their absolute positions like the memory's (dot products depend only on the distance), so one
    query serves both parts and PyTorch's fused attention (``scaled_dot_product_attention``, one
    softmax over ``[memory | window]``) does it.

    q ``[H, E, S, d]`` at absolute positions; k/v ``[E, Hkv, M+W, d]`` (memory, then the window);
    ``mem_ok [E, M]``, ``loc_hidden [E, S, W]``. Returns out ``[H, E, S, d]``.

    ``aligned = (a, K)``: execution blocks from ``a`` on (:func:`aligned_from`) see every memory slot
    and a window of equal length whose last keys are their own: their mask is a causal one aligned to
    the end of their first ``K`` keys, given as such (:func:`_attend_aligned`, no mask built) where
    PyTorch's flash kernel takes the inputs (and on the CPU); the execution blocks before them, or
    all where flash does not run, get a built mask (:func:`_attend_masked`)."""
    n_e = q.shape[1]
    a, keys = (n_e, 0) if aligned is None else aligned
    if a < n_e:
        qh = q[:, a:].transpose(0, 1).to(k.dtype)                                # [E', H, S, d]
        if not (qh.device.type == "cpu" or _flash_takes(qh, k[a:, :, :keys], v[a:, :, :keys], k.shape[1] < q.shape[0])):
            a = n_e
    parts = []
    if a:
        parts.append(_attend_masked(q[:, :a], k[:a], v[:a], mem_ok[:a], loc_hidden[:a], scaling))
    if a < n_e:
        parts.append(_attend_aligned(qh, k[a:, :, :keys], v[a:, :, :keys], scaling))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _attend_aligned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """q ``[E, H, S, d]``; k/v ``[E, Hkv, K, d]`` whose last ``S`` keys are the queries' own: query
    ``j`` sees the first ``K - S + j + 1`` keys (``causal_lower_right``), a KV head's query heads
    grouped over it (``enable_gqa``). Returns ``[H, E, S, d]``."""
    causal = causal_lower_right(q.shape[2], k.shape[2])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=scaling, enable_gqa=k.shape[1] < q.shape[1])
    return out.transpose(0, 1)


def _attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem_ok: torch.Tensor,
                   loc_hidden: torch.Tensor, scaling: float) -> torch.Tensor:
    """The fused call with its mask built: a KV head's query heads folded into the query axis
    (``[E, Hkv, G*S, d]``) rather than its keys and values copied G times."""
    h, n_e, size, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    seen = torch.cat([mem_ok[:, None].expand(-1, size, -1), ~loc_hidden], 2)      # [E, S, M+W]
    seen = seen[:, None, None].expand(-1, 1, g, -1, -1).reshape(n_e, 1, g * size, -1)
    qg = q.reshape(hkv, g, n_e, size, d).permute(2, 0, 1, 3, 4).reshape(n_e, hkv, g * size, d)
    out = F.scaled_dot_product_attention(qg.to(k.dtype), k, v, attn_mask=seen, scale=scaling)
    return out.view(n_e, hkv, g, size, d).permute(1, 2, 0, 3, 4).reshape(h, n_e, size, d)


def _flash_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> bool:
    """Whether PyTorch's flash attention runs these inputs (a CUDA device, half precision, the head
    size ...): where it does not, a causal mask aligned to the keys' end would be materialised for
    the math kernel, and the built mask with the memory-efficient kernel serves better."""
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    return can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, False, gqa))


def _attend(q_mem: torch.Tensor, q_loc: torch.Tensor, k_mem: torch.Tensor, v_mem: torch.Tensor,
            mem_ok: torch.Tensor, k_loc: torch.Tensor, v_loc: torch.Tensor, loc_hidden: torch.Tensor,
            scaling: float, softcap: float | None) -> torch.Tensor:
    """One softmax over ``[memory | local]`` for every execution block, memory and window each with
    their own rotation of the queries (memory at the fixed angle).

    q_mem/q_loc ``[H, E, S, d]``; k/v_mem ``[E, Hkv, M, d]`` with ``mem_ok [E, M]``; k/v_loc
    ``[E, Hkv, W, d]`` with ``loc_hidden [E, S, W]``. Products in the inputs' dtype, softmax in
    float32. Returns out ``[H, E, S, d]`` (float32).
    """
    h, n_e, size, d = q_loc.shape
    hkv, m, w = k_mem.shape[1], k_mem.shape[2], k_loc.shape[2]
    g = h // hkv
    step = max(1, MAX_SCORE_ELEMENTS // max(1, h * size * (m + w)))
    outs = []
    for a in range(0, n_e, step):
        e = slice(a, min(n_e, a + step))
        ne = e.stop - e.start

        def grouped(x):  # [H, E', S, d] -> [E', Hkv, G*S, d]
            return x[:, e].reshape(hkv, g, ne, size, d).permute(2, 0, 1, 3, 4).reshape(ne, hkv, g * size, d)

        qm, ql = grouped(q_mem), grouped(q_loc)
        s_mem = torch.matmul(qm, k_mem[e].transpose(-1, -2).to(qm.dtype)).float() * scaling
        s_loc = torch.matmul(ql, k_loc[e].transpose(-1, -2).to(ql.dtype)).float() * scaling
        if softcap:
            s_mem = torch.tanh(s_mem / softcap) * softcap
            s_loc = torch.tanh(s_loc / softcap) * softcap
        s_mem.masked_fill_(~mem_ok[e, None, None], float("-inf"))
        s_loc.masked_fill_(loc_hidden[e, None].repeat(1, 1, g, 1), float("-inf"))
        row_max = torch.maximum(s_mem.amax(-1, keepdim=True), s_loc.amax(-1, keepdim=True))
        e_mem, e_loc = s_mem.sub_(row_max).exp_(), s_loc.sub_(row_max).exp_()
        inv_z = (e_mem.sum(-1, keepdim=True) + e_loc.sum(-1, keepdim=True)).reciprocal_()
        dt = v_loc.dtype
        out = torch.matmul(e_mem.to(dt), v_mem[e]).float() + torch.matmul(e_loc.to(dt), v_loc[e]).float()
        out = out * inv_z                                               # [E', Hkv, G*S, d]
        outs.append(out.view(ne, hkv, g, size, d).permute(1, 2, 0, 3, 4).reshape(h, ne, size, d))
    return torch.cat(outs, 1)
