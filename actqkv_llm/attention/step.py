"""One forward pass's attention over the context memory, layer by layer.

For each execution block of queries at one layer: make room in the local window (tokens leave
as sinks, blocks or nothing), build a probe and score the blocks, let the budget decide how many
to take, gather them, attend to sinks + blocks + window with one softmax, then append the new
keys to the window and credit every local key with the attention it received (that credit picks
each block's representative keys when it is evicted).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

from ..retrieval.methods import HeldSelection, MemoryQuery
from .chunk import attend_chunk, chunk_plan
from .reference import attend, context_logsumexp
from .rope import blocks_at_true_positions, rotate, sinks_at_true_positions

if TYPE_CHECKING:
    from ..session import Session

DOCUMENT, QUESTION, DECODE = "document", "question", "decode"


class ContextLogSumExp:
    """``MemoryQuery.context_lse``: the log of what the sinks and the window add to each query row's
    softmax normaliser, computed only when a rerank asks for it.

    It holds tensors and a weak reference to its query object (whose rotation of the queries it
    reuses), never the step or a closure over it: a pass's state must be freed by reference
    counting as soon as the pass ends. A reference cycle here kept every session (its whole KV
    memory) alive until the garbage collector happened to run, and prefilling document after
    document in one process ran out of memory (24 GB at 64K tokens on SmolLM2)."""

    __slots__ = ("_mq", "_args")

    def __init__(self, mq: MemoryQuery, q, q_loc, k_loc, sink_k, scaling: float, window, softcap, masks: dict):
        self._mq = weakref.ref(mq)
        self._args = (q, q_loc, k_loc, sink_k, scaling, window, softcap, masks)

    def __call__(self) -> torch.Tensor:
        q, q_loc, k_loc, sink_k, scaling, window, softcap, masks = self._args
        return context_logsumexp(q_loc, k_loc, self._mq().at_memory(q), sink_k, scaling,
                                 window=window, softcap=softcap, masks=masks)


def memory_mode(method, adapter, first_q: int, t: int) -> str:
    """Where memory sits for ``t`` queries from absolute position ``first_q`` on: ``"exact"`` (true
    positions) or ``"fixed"`` (InfLLM's one angle beyond the window); ``"auto"`` takes true positions
    while the queries stay inside the model's native window."""
    mode = method.positions if method.uses_memory else "fixed"
    if mode == "auto":
        mode = "exact" if first_q + t <= adapter.native_window else "fixed"
    return mode


class StepContext:
    """Per-forward-pass state handed to every layer through the model's attention kwargs."""

    def __init__(self, session: "Session", phase: str):
        self.session, self.phase = session, phase
        self._budget = None
        self.masks: dict = {}  # causal masks by shape, shared by the layers of this pass

    @property
    def budget(self):
        """This pass's block allocator, made when a layer first selects (a decode step whose layers
        all reuse a held selection never reads the entropies it is made from)."""
        if self._budget is None and self.session.method.uses_memory:
            s = self.session
            self._budget = s.method.new_budget(s.adapter.memory_layers, s.retrieval)
        return self._budget

    def attend_layer(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        """q ``[H, T, d]``, k/v ``[Hkv, T, d]`` unrotated -> attention output ``[H, T, d]``."""
        s = self.session
        cfg, method = s.config, s.method
        t_all = q.shape[1]
        step = cfg.exec_block if method.bounded else t_all
        outs = []
        a = slot = 0
        while a < t_all:
            # the rest of the chunk as one batch as soon as it may (a document's first chunk: once
            # its first execution block has filled the sinks), in two where it crosses the native
            # window: the execution blocks at exact positions, then the ones at the fixed angle
            plan = chunk_plan(self, layer, t_all - a, slot)
            if plan is not None:
                span = sum(plan.sizes)
                outs.append(attend_chunk(self, layer, plan, q[:, a:a + span], k[:, a:a + span], v[:, a:a + span],
                                         scaling, softcap))
                a, slot = a + span, slot + len(plan.sizes)
                continue
            outs.append(self._exec_block(slot, layer, q[:, a:a + step], k[:, a:a + step],
                                         v[:, a:a + step], scaling, softcap))
            a, slot = a + step, slot + 1
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def memory_query(self, kind, mem, n_loc: int, t: int, scaling: float) -> MemoryQuery:
        """Where memory sits for this execution block: one fixed angle (InfLLM) or true positions."""
        s = self.session
        cfg, adapter = s.config, s.adapter
        first_q = mem.local_start + n_loc
        mode = memory_mode(s.method, adapter, first_q, t)
        if mode == "fixed":
            cos, sin = adapter.rope_table(kind.rope_type, cfg.n_local + 1)
            fixed = slice(cfg.n_local, cfg.n_local + 1)  # memory sits just beyond the farthest local distance
            return MemoryQuery(mode, lambda x: s.rotation(x, cos[fixed], sin[fixed]), None, scaling, self.phase,
                               keep_candidate_keys=s.keep_candidate_keys)
        # memory lies before the window, so the queries' positions bound every position needed
        cos, sin = adapter.rope_table(kind.rope_type, first_q + t)
        at = slice(first_q, first_q + t)
        last = slice(first_q + t - 1, first_q + t)

        def rotate_q(x):
            return s.rotation(x, cos[at], sin[at]) if x.shape[1] == t else s.rotation(x, cos[last], sin[last])

        def rotate_blocks(k, ids):
            """Gathered keys ``[Hkv, n*B, d]`` of blocks ``ids`` (``[n]`` or ``[Hkv, n]``) at their true positions."""
            return blocks_at_true_positions(k, ids, cos, sin, cfg.n_sink)

        return MemoryQuery(mode, rotate_q, rotate_blocks, scaling, self.phase,
                           keep_candidate_keys=s.keep_candidate_keys)

    def _exec_block(self, slot: int, layer: int, q, k, v, scaling, softcap) -> torch.Tensor:
        s = self.session
        cfg, method, kind = s.config, s.method, s.adapter.kinds[layer]
        mem, rstate = s.memory[layer], s.retrieval[layer]
        t = q.shape[1]
        if kind.window is not None:
            mem.trim_local(kind.window - 1)
        else:
            mem.make_room(t, s.policy)
        n_loc = mem.n_local
        lk = n_loc + t
        memory = kind.memory and method.uses_memory
        mq = self.memory_query(kind, mem, n_loc, t, scaling) if memory or (kind.memory and mem.n_sink) else None

        # ---- positions: true relative positions in the window; memory at the fixed angle or true positions
        cos, sin = s.adapter.rope_table(kind.rope_type, max(lk, cfg.n_local + 1))
        k_loc = rotate(torch.cat([mem.local_k, k.to(mem.dtype)], 1), cos[:lk], sin[:lk])
        v_loc = torch.cat([mem.local_v, v.to(mem.dtype)], 1)
        q_loc = rotate(q, cos[n_loc:lk], sin[n_loc:lk])
        sink_k = sink_v = None
        if kind.memory and mem.n_sink:
            sink_k, sink_v = mem.sink_k, mem.sink_v
            if mq.mode == "exact":
                sink_k = sinks_at_true_positions(s.adapter, kind.rope_type, mem)
        if mq is not None:  # what the always-visible keys add to the softmax, for a rerank to weigh blocks by
            mq.context_lse = ContextLogSumExp(mq, q, q_loc, k_loc, sink_k, scaling, kind.window, softcap, self.masks)

        # ---- retrieval: probe -> scores -> budget -> blocks
        k_mem = v_mem = sel = None
        if memory:
            method.observe(q, rstate)
        if memory and mem.n_blocks:
            held = rstate.take_held(mem.n_blocks, mq.mode) if self.phase == DECODE else None
            if held is not None:  # a recent selection still serves: no scoring, ranking or gathering
                sel, k_mem, v_mem = held.selection, held.k_mem, held.v_mem
            else:
                sel = method.select(q, mem, rstate, mq, self.budget, slot, layer, self.phase == QUESTION)
                k_mem, v_mem = self._read_selection(sel, mem, mq, q.device)
                if self.phase != DOCUMENT and method.reselect_every > 1:
                    rstate.held = HeldSelection(sel, k_mem, v_mem, mem.n_blocks, mq.mode,
                                                method.reselect_every - 1)
            if sel.blocks is not None:
                s.note_retrieval(layer, sel.blocks, mem.n_blocks)
        if s.meter is not None and memory and mem.n_blocks:
            s.meter.observe(self, layer, kind, q, k, mem, sel, scaling, softcap)
        if sink_k is not None:
            k_mem = sink_k if k_mem is None else torch.cat([sink_k, k_mem.to(sink_k.dtype)], 1)
            v_mem = sink_v if v_mem is None else torch.cat([sink_v, v_mem], 1)
        q_mem = mq.at_memory(q) if k_mem is not None else None

        out, mass_loc, mass_mem = attend(q_loc, k_loc, v_loc, q_mem, k_mem, v_mem, scaling,
                                         window=kind.window, softcap=softcap,
                                         want_mass=s.policy.keep_summaries or s.track_sources, masks=self.masks)

        # ---- bookkeeping
        if mass_loc is not None and s.policy.keep_summaries:  # the window's mass picks summary keys
            mem.add_local_scores(mass_loc[:, :n_loc])
            mem.append_local(k, v, mass_loc[:, n_loc:])
        else:
            mem.append_local(k, v)
        n_sink = mem.n_sink if kind.memory else 0
        n_picked = 0 if sel is None else sel.n_blocks
        s.note_kv(slot, layer, n_sink + n_picked * cfg.block_size + (0 if sel is None else sel.n_l1) + lk)
        if s.track_sources and n_picked and mass_mem is not None and self.phase != DOCUMENT:
            per_block = mass_mem[:, n_sink:n_sink + n_picked * cfg.block_size]
            per_block = per_block.reshape(mem.kv_heads, n_picked, cfg.block_size).sum(2)  # [Hkv, n]
            if sel.blocks.dim() == 1:
                s.note_attention(sel.blocks, per_block.sum(0), mem.n_blocks)
            else:
                s.note_attention(sel.blocks.flatten(), per_block.flatten(), mem.n_blocks)
        return out.to(q.dtype)

    @staticmethod
    def _read_selection(sel, mem, mq: MemoryQuery, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The keys (placed as attention reads them) and values of a selection: its blocks, then its
        first-level entries."""
        k_mem = v_mem = None
        if sel.keys is not None:  # selection gathered (and placed) the picked keys already
            k_mem, v_mem = sel.keys, mem.blocks.gather(sel.blocks, device, keys=False)[1]
        elif sel.blocks is not None:
            k_mem, v_mem = mem.blocks.gather(sel.blocks, device)
            if mq.rotate_blocks is not None:
                k_mem = mq.rotate_blocks(k_mem, sel.blocks)
        if sel.l1_k is not None:
            k_mem = sel.l1_k if k_mem is None else torch.cat([k_mem, sel.l1_k.to(k_mem.dtype)], 1)
            v_mem = sel.l1_v if v_mem is None else torch.cat([v_mem, sel.l1_v], 1)
        return k_mem, v_mem


class RowSteps:
    """One forward pass of several sessions batched as rows (``forward_rows``): the model's dense
    parts see every row at once; attention runs row by row, each over its own session's window,
    memory and retrieval."""

    batched = True   # takes the model's [B, H, T, d] tensors whole

    def __init__(self, contexts: list[StepContext]):
        self.contexts = contexts

    def attend_layer(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        """q ``[B, H, T, d]``, k/v ``[B, Hkv, T, d]`` -> ``[B, H, T, d]``."""
        if q.shape[0] != len(self.contexts):
            raise ValueError(f"{q.shape[0]} rows for {len(self.contexts)} sessions")
        return torch.stack([c.attend_layer(layer, q[i], k[i], v[i], scaling, softcap)
                            for i, c in enumerate(self.contexts)])


@torch.compiler.disable
def context_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, actqkv: "StepContext | RowSteps | None" = None, **kwargs):
    """The attention function registered with transformers' ``AttentionInterface``.

    Called by the model's own attention module with ``[1, H, T, d]`` tensors. Without our context
    (a plain ``model(...)`` call) it falls back to SDPA, so the model stays usable as is. Never
    traced by ``torch.compile`` (``decode_compile`` compiles the model's code around it).
    """
    if actqkv is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop("softcap", None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if getattr(actqkv, "batched", False):  # rows of several sessions (RowSteps, the static decode step)
        out = actqkv.attend_layer(module.layer_idx, query, key, value, scaling, kwargs.get("softcap"))
        return out.transpose(1, 2), None
    if query.shape[0] != 1:
        raise ValueError("context-memory attention runs one sequence at a time (batch size 1); "
                         "batch sessions with forward_rows")
    out = actqkv.attend_layer(module.layer_idx, query[0], key[0], value[0], scaling, kwargs.get("softcap"))
    return out.transpose(0, 1).unsqueeze(0), None
