"""One forward pass's attention over the context memory, layer by layer.

For each execution block of queries at one layer: make room in the local window (tokens leave
as sinks, blocks or nothing), build a probe and score the blocks, let the budget decide how many
to take, gather them, attend to sinks + blocks + window with one softmax, then append the new
keys to the window and credit every local key with the attention it received (that credit picks
each block's representative keys when it is evicted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..retrieval.budget import normalized_entropy
from .reference import attend
from .rope import rotate

if TYPE_CHECKING:
    from ..session import Session

DOCUMENT, QUESTION, DECODE = "document", "question", "decode"


class StepContext:
    """Per-forward-pass state handed to every layer through the model's attention kwargs."""

    def __init__(self, session: "Session", phase: str):
        self.session, self.phase = session, phase
        self.budget = session.method.new_budget(session.adapter.memory_layers, session.retrieval) \
            if session.method.uses_memory else None
        self.masks: dict = {}  # causal masks by shape, shared by the layers of this pass

    def attend_layer(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        """q ``[H, T, d]``, k/v ``[Hkv, T, d]`` unrotated -> attention output ``[H, T, d]``."""
        s = self.session
        cfg, method = s.config, s.method
        t_all = q.shape[1]
        step = cfg.exec_block if method.bounded else t_all
        outs = []
        for slot, a in enumerate(range(0, t_all, step)):
            outs.append(self._exec_block(slot, layer, q[:, a:a + step], k[:, a:a + step],
                                         v[:, a:a + step], scaling, softcap))
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def _exec_block(self, slot: int, layer: int, q, k, v, scaling, softcap) -> torch.Tensor:
        s = self.session
        cfg, method, kind = s.config, s.method, s.adapter.kinds[layer]
        mem, rstate = s.memory[layer], s.retrieval[layer]
        t = q.shape[1]
        if kind.window is not None:
            mem.trim_local(kind.window - 1)
        else:
            mem.make_room(t, s.policy)

        # ---- retrieval: probe -> scores -> budget -> blocks
        k_mem = v_mem = picked = None
        if kind.memory and method.uses_memory:
            method.observe(q, rstate)
        if kind.memory and method.uses_memory and mem.n_blocks:
            probe = method.probe(q, mem.kv_heads, rstate)
            if self.phase == QUESTION:
                rstate.add_question(probe, t)
            scores = method.score(probe, mem.summaries, rstate)
            rstate.observe_entropy(normalized_entropy(scores))
            n = self.budget.blocks_for(slot, layer, scores)
            if n:
                picked = scores.topk(n).indices.sort().values
                k_mem, v_mem = mem.blocks.gather(picked, q.device)
                s.note_retrieval(layer, picked, mem.n_blocks)
        if kind.memory and mem.n_sink:
            k_mem = mem.sink_k if k_mem is None else torch.cat([mem.sink_k, k_mem], 1)
            v_mem = mem.sink_v if v_mem is None else torch.cat([mem.sink_v, v_mem], 1)

        # ---- positions: true relative positions in the window, one fixed angle for memory
        n_loc = mem.n_local
        lk = n_loc + t
        cos, sin = s.adapter.rope_table(kind.rope_type, max(lk, cfg.n_local + 1))
        k_loc = rotate(torch.cat([mem.local_k, k.to(mem.dtype)], 1), cos[:lk], sin[:lk])
        v_loc = torch.cat([mem.local_v, v.to(mem.dtype)], 1)
        q_loc = rotate(q, cos[n_loc:lk], sin[n_loc:lk])
        q_mem = None
        if k_mem is not None:
            fixed = cfg.n_local  # memory sits just beyond the farthest local distance
            q_mem = rotate(q, cos[fixed:fixed + 1], sin[fixed:fixed + 1])

        out, mass_loc, mass_mem = attend(q_loc, k_loc, v_loc, q_mem, k_mem, v_mem, scaling,
                                         window=kind.window, softcap=softcap,
                                         want_mass=method.uses_memory or s.track_sources, masks=self.masks)

        # ---- bookkeeping
        if mass_loc is not None:
            mem.add_local_scores(mass_loc[:, :n_loc])
            mem.append_local(k, v, mass_loc[:, n_loc:])
        else:
            mem.append_local(k, v)
        n_sink = mem.n_sink if kind.memory else 0
        n_picked = 0 if picked is None else picked.numel()
        s.note_kv(slot, layer, n_sink + n_picked * cfg.block_size + lk)
        if s.track_sources and picked is not None and mass_mem is not None and self.phase != DOCUMENT:
            s.note_attention(picked, mass_mem[:, n_sink:].reshape(-1, n_picked, cfg.block_size).sum((0, 2)),
                             mem.n_blocks)
        return out.to(q.dtype)


def context_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, actqkv: StepContext | None = None, **kwargs):
    """The attention function registered with transformers' ``AttentionInterface``.

    Called by the model's own attention module with ``[1, H, T, d]`` tensors. Without our context
    (a plain ``model(...)`` call) it falls back to SDPA, so the model stays usable as is.
    """
    if actqkv is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop("softcap", None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("context-memory attention runs one sequence at a time (batch size 1)")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = actqkv.attend_layer(module.layer_idx, query[0], key[0], value[0], scaling, kwargs.get("softcap"))
    return out.transpose(0, 1).unsqueeze(0), None
