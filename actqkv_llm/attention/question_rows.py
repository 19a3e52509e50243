"""Several questions on one document read as rows of one batch, with one set of calls per layer.

``Engine.answer_many`` starts every answer by reading its question on a fresh fork of the
document. One by one, a read is some 500 small PyTorch calls per layer (probe, scoring, candidates,
rerank, gather, attention), and on a GPU its time is the host's (docs/benchmarks.md, thirty-third
session). The forks hold the same memory when their questions are read: the same window, sinks,
blocks and running entropies. So the rows' queries can score the same blocks in one product, take
their candidates in one sort, read their keys in one gather, rerank them in one pass and attend in
one call, the rows folded into the KV-head axis, each row padded to the longest question (its padding
weighs nothing in the probe, the rerank or the attention mass, and no real query sees it).

The arithmetic is the reference's (:meth:`StepContext._exec_block` with ``BlockRetrieval.select``):
the same functions on the same operands with a row axis, so each row picks the blocks its own read
picks up to float rounding of longer, zero-padded sums. What differs between rows stays per row: the
activation statistics (each observes its own question), the window each question's keys join, the
held candidates and the source tally.

:class:`QuestionRows` runs a layer's rows in batches where :meth:`QuestionRows.groups` says they may
(the default method's selection: a per-token probe, key bounds reduced by a softmax, a rerank of every
candidate; rows whose memories are one, grouped by how many window tokens their question lets leave
for memory); every other row runs the reference step on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..memory.blocks import GrowableBlocks, StackedBlocks, gather_rows
from ..retrieval.budget import normalized_entropy
from ..retrieval.methods import (RERANK_CHUNK_ELEMENTS, BlockRetrieval, BoundScorer, TokenProbe, best_ids,
                                 candidate_mass, keys_at, pin_edges)
from ..retrieval.probe import token_weights
from ..retrieval.score import bound_logits_parts
from .reference import attend, context_logsumexp
from .rope import rotate, sinks_at_true_positions
from .step import QUESTION, memory_mode

if TYPE_CHECKING:
    from .step import StepContext


class QuestionRows:
    """One forward pass over several questions' tokens ``[P, S]`` (each row padded after its
    ``lengths[e]`` tokens), each on its own session forked from one document; rows past the
    questions' (``n_rows`` in all) are padding, computed and dropped.

    A batch (:meth:`groups`) always runs on ``n_rows`` rows, its own repeated to fill them, and on
    all ``S`` token positions: each row's products then have one shape whether the question is
    read alone or beside others, so it gets the same bits either way (the products' kernels are
    picked by shape and round differently for other shapes; ``read_questions``)."""

    batched = True   # takes the model's [P, H, S, d] tensors whole

    def __init__(self, contexts: list["StepContext"], lengths: list[int], n_rows: int | None = None):
        if len(contexts) != len(lengths) or not contexts:
            raise ValueError(f"{len(contexts)} sessions for {len(lengths)} questions")
        self.contexts, self.lengths = contexts, list(lengths)
        self.n_rows = max(len(contexts), n_rows or 0)
        self.padded = (n_rows or 0) > 1

    # ------------------------------------------------------------------ which rows batch
    def groups(self, layer: int) -> list[list[int]]:
        """The rows of ``layer`` that run as one batch each (unpadded, groups of at least two rows; the
        rows in none run the reference step on their own). A batch needs the method to select as the default
        does (a per-token probe, key bounds reduced by a softmax per KV head, every candidate reranked
        by the question, no held selection), a memory layer without a sliding window, and rows whose
        memories are one: the same window, sinks and stored blocks (forks of one document, as
        ``answer_many`` makes them) and running entropies (so the same budget), each question in one
        execution block. Rows are grouped by what their question lets leave the window and where it
        sees memory (the same within a group)."""
        s = self.contexts[0].session
        method, kind = s.method, s.adapter.kinds[layer]
        if not (isinstance(method, BlockRetrieval) and kind.memory and kind.window is None
                and isinstance(method.probe, TokenProbe) and isinstance(method.scorer, BoundScorer)
                and method.scorer.mass and method.per_head and method.rerank > 1
                and method.n_question_candidates >= method.n_candidates and method.reselect_every == 1
                and not s.policy.keep_summaries and max(self.lengths) <= s.config.exec_block):
            return []
        mem = s.memory[layer]
        if not (isinstance(mem.blocks, StackedBlocks) and isinstance(mem.blocks.base, GrowableBlocks)):
            return []
        state = s.retrieval[layer]
        by_kind: dict[tuple[int, str], list[int]] = {}
        for e, (c, t) in enumerate(zip(self.contexts, self.lengths)):
            o = c.session
            m, st = o.memory[layer], o.retrieval[layer]
            if (o.meter is None and c.phase == QUESTION and o.track_sources == s.track_sources
                    and o.keep_candidate_keys == s.keep_candidate_keys and m.local_k is mem.local_k
                    and m.sink_k is mem.sink_k and isinstance(m.blocks, StackedBlocks)
                    and m.blocks.base is mem.blocks.base and m.blocks.own.n_blocks == mem.blocks.own.n_blocks
                    and st.entropy_total == state.entropy_total and st.entropy_count == state.entropy_count
                    and not st.unread):
                leaving = sum(s.policy.leaving(mem.n_local, mem.n_sink, t))
                mode = memory_mode(method, s.adapter, mem.local_start + mem.n_local, t)
                by_kind.setdefault((leaving, mode), []).append(e)
        # unpadded, a row alone runs the reference step; padded, it runs as a batch like any other
        return [rows for rows in by_kind.values() if len(rows) > 1 or self.padded]

    # ------------------------------------------------------------------ one layer
    def attend_layer(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        """q ``[P, H, S, d]``, k/v ``[P, Hkv, S, d]`` unrotated -> ``[P, H, S, d]`` (zeros past a
        row's length, and in the padding rows)."""
        if q.shape[0] != self.n_rows:
            raise ValueError(f"{q.shape[0]} rows for {self.n_rows} ({len(self.contexts)} sessions and padding)")
        out = q.new_zeros(q.shape)
        alone = set(range(len(self.contexts)))
        for rows in self.groups(layer):
            filled = rows + [rows[0]] * (self.n_rows - len(rows))      # the group's rows, repeated to fill
            at = torch.tensor(filled, device=q.device)
            got = self._batch(layer, [self.contexts[e] for e in rows], [self.lengths[e] for e in filled],
                              q[at], k[at], v[at], scaling, softcap)
            out[at[:len(rows)]] = got[:len(rows)]
            alone -= set(rows)
        for e in sorted(alone):
            t = self.lengths[e]
            out[e, :, :t] = self.contexts[e].attend_layer(layer, q[e, :, :t], k[e, :, :t], v[e, :, :t],
                                                          scaling, softcap)
        return out

    def _batch(self, layer: int, ctxs: list["StepContext"], lengths: list[int], q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor, scaling: float, softcap: float | None) -> torch.Tensor:
        """One group's rows (:meth:`groups`) as one batch: the sessions ``ctxs`` read the first rows of
        q ``[P, H, S, d]`` (k, v: ``[P, Hkv, S, d]``), the rest repeat them (``lengths``: every row's)
        and are dropped. Returns ``[P, H, S, d]``."""
        sessions = [c.session for c in ctxs]
        s = sessions[0]
        cfg, method, kind, adapter = s.config, s.method, s.adapter.kinds[layer], s.adapter
        n_e, h, size, d = q.shape
        dev = q.device
        mems = [o.memory[layer] for o in sessions]
        states = [o.retrieval[layer] for o in sessions]
        budgets = [c.budget for c in ctxs]   # made before this layer's entropies are observed, as the reference's
        for mem, t in zip(mems, lengths):
            mem.make_room(t, s.policy)          # the same tokens leave every row's window
        real = len(sessions)
        mem = mems[0]
        hkv, b = mem.kv_heads, cfg.block_size
        g = h // hkv
        n_loc, n_blocks = mem.n_local, mem.n_blocks
        lk = n_loc + size
        # every row's memory query (its rotations, and where its held candidates read keys again)
        mqs = [c.memory_query(kind, m, n_loc, max(lengths), scaling) for c, m in zip(ctxs, mems)]
        mq = mqs[0]
        exact = mq.mode == "exact"
        counted = (torch.arange(size, device=dev)[None] < torch.tensor(lengths, device=dev)[:, None])  # [E, S]

        # ---- positions: the window at true relative positions, memory at the fixed angle or true positions
        cos, sin = adapter.rope_table(kind.rope_type, max(lk, cfg.n_local + 1))
        x_k = torch.cat([mem.local_k.expand(n_e, -1, -1, -1), k.to(mem.dtype)], 2)        # [E, Hkv, Lk, d]
        v_loc = torch.cat([mem.local_v.expand(n_e, -1, -1, -1), v.to(mem.dtype)], 2)
        k_loc = rotate(x_k, cos[:lk], sin[:lk])
        q_loc = rotate(q, cos[n_loc:lk], sin[n_loc:lk])
        q_mem = _at_memory(s, adapter, kind, cfg, mem, n_loc, size, q, exact)             # [E, H, S, d]
        sink_k = sink_v = None
        if mem.n_sink:
            sink_k = sinks_at_true_positions(adapter, kind.rope_type, mem) if exact else mem.sink_k
            sink_v = mem.sink_v

        # ---- probe: each row's statistics see its own question, then weigh its tokens
        weights = q.new_zeros((n_e, size), dtype=torch.float32)
        for e, (st, t) in enumerate(zip(states, lengths)):
            method.observe(q[e, :, :t], st)
            weights[e, :t] = token_weights(q[e, :, :t], st.stats if method.probe.activation else None)
        weights[real:] = weights[0]      # the padding rows repeat the first (lengths, tokens, statistics)

        picked = keys = None
        n = 0
        if n_blocks:
            # ---- scores -> entropy -> budget: the rows' queries against the blocks' bounds at once
            evidence = _evidence(q_mem, mem.bound_parts(mq.mode, mq.rotate_blocks), weights, hkv, scaling,
                                 mem.dtype)                                                # [E, Hkv, N]
            for m, row_mq in zip(mems[1:], mqs[1:]):   # every row's bounds measured, as its own read measures them
                m.bound_parts(row_mq.mode, row_mq.rotate_blocks)
            ents = normalized_entropy(evidence, mass=True).mean(-1)                               # [E]
            counts = []
            for e in range(real):
                states[e].observe_entropy(ents[e])
                counts.append(budgets[e].blocks_for(0, layer, n_blocks, ents[e]))
            if len(set(counts)) != 1:   # one document's forks share their budget: never seen
                raise RuntimeError(f"questions read together drew different block counts {counts}")
            n = counts[0]
        if n:
            ranked = pin_edges(evidence, n_blocks) if method.keep_edges else evidence
            if n < n_blocks:
                picked, keys = self._rerank(method, mems, mqs, states, q_mem, q_loc, k_loc, sink_k, counted,
                                            ranked, evidence, ents, n, scaling, softcap)
            else:   # every block: no rerank, none held (the reference's order: all of them ascending)
                picked = torch.arange(n_blocks, device=dev).expand(n_e, hkv, -1).contiguous()
            if keys is None:
                keys, _ = gather_rows(mem.blocks, picked, dev, values=False)
                if mq.rotate_blocks is not None:
                    keys = mq.rotate_blocks(keys.reshape(n_e * hkv, -1, d), picked.reshape(n_e * hkv, -1))
                keys = keys.reshape(n_e, hkv, -1, d)
            values = gather_rows(mem.blocks, picked, dev, keys=False)[1]
            for o, p in zip(sessions, picked):
                o.note_retrieval(layer, p, n_blocks)

        # ---- attention: [sinks | picked blocks] and the window, one softmax, the rows as KV heads
        k_mem = v_mem = None
        if sink_k is not None:
            k_mem, v_mem = sink_k.expand(n_e, -1, -1, -1), sink_v.expand(n_e, -1, -1, -1)
        if keys is not None:
            k_mem = keys if k_mem is None else torch.cat([k_mem, keys.to(k_mem.dtype)], 2)
            v_mem = values if v_mem is None else torch.cat([v_mem, values], 2)
        fold = n_e * hkv
        want = s.track_sources and n > 0
        out, _, mass_mem = attend(
            q_loc.reshape(n_e * h, size, d), k_loc.reshape(fold, lk, d), v_loc.reshape(fold, lk, d),
            None if k_mem is None else q_mem.reshape(n_e * h, size, d),
            None if k_mem is None else k_mem.reshape(fold, -1, d), None if v_mem is None else v_mem.reshape(fold, -1, d),
            scaling, softcap=softcap, want_mass=want, masks=ctxs[0].masks,
            counted=counted.repeat_interleave(hkv, 0) if want else None)

        # ---- bookkeeping, row by row: the window, the budget's record, the sources, the rotation's choice
        n_sink = mem.n_sink
        for o in sessions[1:]:
            o.rotation.adopt(s.rotation)
        for e, (o, m, t) in enumerate(zip(sessions, mems, lengths)):
            m.append_local(k[e, :, :t], v[e, :, :t])
            o.note_kv(0, layer, n_sink + n * b + n_loc + t)
            if want:
                per_block = mass_mem.view(n_e, hkv, -1)[e, :, n_sink:n_sink + n * b].reshape(hkv, n, b).sum(2)
                o.note_attention(picked[e].flatten(), per_block.flatten(), n_blocks)
        return out.view(n_e, h, size, d).to(q.dtype)

    @staticmethod
    def _rerank(method, mems, mqs, states, q_mem, q_loc, k_loc, sink_k, counted, ranked, evidence, ents,
                n: int, scaling: float, softcap) -> tuple[torch.Tensor, torch.Tensor]:
        """``BlockRetrieval.select``'s second stage for every row: the candidates by evidence, their
        keys read once, the ``n`` that receive the most of each row's exact attention (normalised
        with its sinks and window), each row's candidates held for its answer's decode steps.
        Returns picks ``[E, Hkv, n]`` ascending and their placed keys ``[E, Hkv, n*B, d]``."""
        n_e, h, size, d = q_mem.shape
        mem = mems[0]
        hkv, b, n_blocks = mem.kv_heads, mem.block_size, mem.n_blocks
        g = h // hkv
        mq = mqs[0]
        cand = best_ids(ranked, min(n_blocks, max(n, method.n_candidates)))           # [E, Hkv, m]
        m = cand.shape[-1]
        k, _ = gather_rows(mem.blocks, cand, q_mem.device, values=False)             # [E, Hkv, m*B, d]
        k = k.reshape(n_e * hkv, m * b, d)
        if mq.rotate_blocks is not None:
            k = mq.rotate_blocks(k, cand.reshape(n_e * hkv, m)).to(mem.dtype)
        keep = method.rescore_every > 1 and mq.keep_candidate_keys
        if method.rescore_every > 1:
            for e in range(len(states)):
                known = k.view(n_e, hkv, m * b, d)[e] if keep else None
                states[e].candidates = method.held_candidates(mems[e], mqs[e], cand[e], known, evidence[e], ents[e], n,
                                                              q_mem.device)
        # the normaliser's part from the sinks and the window (ContextLogSumExp), per query row;
        # a padded query's is +inf, so that it adds no mass
        ctx = context_logsumexp(q_loc.reshape(n_e * h, size, d), k_loc.reshape(n_e * hkv, -1, d),
                                q_mem.reshape(n_e * h, size, d),
                                None if sink_k is None else sink_k.repeat(n_e, 1, 1), scaling, softcap=softcap)
        hidden = ~counted[:, None, None, :].expand(-1, hkv, g, -1).reshape(n_e * hkv, g * size, 1)
        ctx = ctx.masked_fill(hidden, float("inf"))
        qr = q_mem.float().reshape(n_e * hkv, g * size, d)
        mass = candidate_mass(qr, k, scaling, ctx, b, chunk_elements=n_e * RERANK_CHUNK_ELEMENTS)   # [E*Hkv, m]
        if method.keep_edges:
            c = cand.reshape(n_e * hkv, m)
            mass = mass.masked_fill((c == 0) | (c == n_blocks - 1), float("inf"))
        top = mass.sort(dim=-1, descending=True, stable=True).indices[:, :n].sort(-1).values
        picked = cand.reshape(n_e * hkv, m).gather(1, top)
        keys = keys_at(k, top, n_e * hkv, b)
        return picked.view(n_e, hkv, n), keys.view(n_e, hkv, n * b, d)


def _at_memory(s, adapter, kind, cfg, mem, n_loc: int, size: int, q: torch.Tensor, exact: bool) -> torch.Tensor:
    """The rows' queries ``[E, H, S, d]`` rotated for memory as ``StepContext.memory_query`` rotates one
    row's: at their true positions, or all at the fixed angle just beyond the window (float32)."""
    if exact:
        first_q = mem.local_start + n_loc
        cos, sin = adapter.rope_table(kind.rope_type, first_q + size)
        return s.rotation(q, cos[first_q:first_q + size], sin[first_q:first_q + size])
    cos, sin = adapter.rope_table(kind.rope_type, cfg.n_local + 1)
    return s.rotation(q, cos[cfg.n_local:cfg.n_local + 1], sin[cfg.n_local:cfg.n_local + 1])


def _evidence(q_mem: torch.Tensor, parts: list, weights: torch.Tensor, hkv: int, scaling: float,
              dtype: torch.dtype) -> torch.Tensor:
    """``BoundScorer`` for every row: queries ``[E, H, S, d]`` (at memory's rotation) against the blocks'
    key bounds, each token's softmax over the blocks weighted by ``weights`` ``[E, S]`` (0 on padding)
    -> evidence ``[E, Hkv, N]``. The rows ride in each KV head's query group (the bounds have Hkv heads)."""
    n_e, h, size, d = q_mem.shape
    g = h // hkv
    qx = q_mem.view(n_e, hkv, g, size, d).transpose(0, 1).reshape(hkv * n_e * g, size, d)
    u = bound_logits_parts(qx, parts, dtype)                                          # [Hkv*E*G, S, N]
    p = torch.softmax(u.view(hkv, n_e, g, size, -1) * scaling, -1)
    return torch.einsum("xegsn,es->exn", p, weights)
