"""RecallMeter: how much of full attention's memory mass the selected blocks hold, per layer and phase.

For every execution block of a memory layer it computes what full attention would do with the
same queries: every evicted block, the sinks and the local window at their true positions, one
softmax. The mass each memory block receives (summed over the tokens of the execution block and
the query heads of a KV head) is the truth. Three numbers per observation:

- ``recall``: the share of the memory blocks' mass held by the blocks the method selected;
- ``oracle``: the same share for the best possible pick of as many blocks per KV head (the top
  blocks by true mass, each head its own: the ceiling for any selection at that budget);
- ``oracle_shared``: the best pick when all heads of a layer must share one block set;
- ``memory_share``: the share of all attention that goes to memory blocks at all (how much the
  question is about old text).

It is a measuring instrument for benchmarks and tests: it costs a full-attention pass per observed
execution block, so prefill observations are sampled (``document_every``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from ..attention.rope import rotate

PHASES = ("document", "question", "decode")
# Queries scored against the whole memory at once (bounds the truth's score matrix).
QUERY_CHUNK = 64


class RecallMeter:
    def __init__(self, phases: tuple[str, ...] = PHASES, document_every: int = 8):
        self.phases, self.document_every = phases, document_every
        self._seen: dict[int, int] = defaultdict(int)   # layer -> document execution blocks seen
        self.sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0, 0.0])

    def take_phase(self, other: "RecallMeter", phase: str = "document") -> None:
        """Take ``other``'s observations of ``phase`` as this meter's own (one prefill shared by
        several variants is measured once, by the meter of the variant that ran it)."""
        for key, acc in other.sums.items():
            if key[0] == phase:
                self.sums[key] = list(acc)

    def reset(self) -> None:
        self._seen.clear()
        self.sums.clear()

    # ------------------------------------------------------------------ observing
    def observe(self, ctx: Any, layer: int, kind: Any, q: torch.Tensor, k_new: torch.Tensor, mem: Any,
                sel: Any, scaling: float, softcap: float | None) -> None:
        """Called by the attention step before it attends (the window does not hold ``k_new`` yet)."""
        phase = ctx.phase
        if phase not in self.phases:
            return
        if phase == "document":
            self._seen[layer] += 1
            if (self._seen[layer] - 1) % self.document_every:
                return
        mass, share = self.true_block_mass(ctx, kind, q, k_new, mem, scaling, softcap)  # [Hkv, N], float
        total = float(mass.sum())
        if total <= 0:
            return
        picked = None if sel is None else sel.blocks
        kv = 0 if sel is None else sel.n_blocks * ctx.session.config.block_size + sel.n_l1
        if picked is None:
            got, n = 0.0, 0
        else:
            rows = picked if picked.dim() == 2 else picked[None].expand(mass.shape[0], -1)
            got, n = float(mass.gather(1, rows.to(mass.device)).sum()), rows.shape[1]
        oracle = float(mass.topk(n, -1).values.sum()) if n else 0.0
        oracle_shared = float(mass.sum(0).topk(n).values.sum()) if n else 0.0
        acc = self.sums[(phase, layer)]
        acc[0] += got / total
        acc[1] += oracle / total
        acc[2] += oracle_shared / total
        acc[3] += share
        acc[4] += 1
        acc[5] += kv

    @staticmethod
    def true_block_mass(ctx: Any, kind: Any, q: torch.Tensor, k_new: torch.Tensor, mem: Any,
                        scaling: float, softcap: float | None) -> tuple[torch.Tensor, float]:
        """Full attention at true positions: mass per (KV head, memory block), and memory's share."""
        s = ctx.session
        cfg, adapter = s.config, s.adapter
        h, t, d = q.shape
        hkv = mem.kv_heads
        g = h // hkv
        n_blocks, b = mem.n_blocks, cfg.block_size
        n_sink, n_loc = mem.n_sink, mem.n_local
        first_block = n_sink  # tokens 0..n_sink-1 are sinks; blocks follow in order
        q_first = mem.local_start + n_loc
        cos, sin = adapter.rope_table(kind.rope_type, q_first + t)
        k_blocks, _ = mem.blocks.gather(torch.arange(n_blocks, device=q.device), q.device)
        k_blocks = rotate(k_blocks, cos[first_block:first_block + n_blocks * b],
                          sin[first_block:first_block + n_blocks * b])
        k_sink = rotate(mem.sink_k, cos[:n_sink], sin[:n_sink])
        local = torch.cat([mem.local_k, k_new.to(mem.dtype)], 1)
        k_loc = rotate(local, cos[mem.local_start:q_first + t], sin[mem.local_start:q_first + t])
        keys = torch.cat([k_sink, k_blocks, k_loc], 1)            # [Hkv, S + N*B + L + t, d]
        qr = rotate(q, cos[q_first:q_first + t], sin[q_first:q_first + t]) * scaling  # [H, t, d]
        n_mem = n_blocks * b
        mass = torch.zeros((hkv, n_blocks), dtype=torch.float32, device=q.device)
        mem_total = 0.0
        kpos_loc = torch.arange(n_loc + t, device=q.device)
        for a in range(0, t, QUERY_CHUNK):
            e = min(t, a + QUERY_CHUNK)
            qc = qr[:, a:e].reshape(hkv, g * (e - a), d)
            logits = torch.matmul(qc, keys.float().transpose(1, 2))  # [Hkv, g*c, K]
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            qpos = (n_loc + torch.arange(a, e, device=q.device)).repeat(g)
            hidden = kpos_loc[None, :] > qpos[:, None]                # the future of each query
            logits[..., n_sink + n_mem:].masked_fill_(hidden, float("-inf"))
            p = torch.softmax(logits, -1)
            blocks = p[..., n_sink:n_sink + n_mem].reshape(hkv, g * (e - a), n_blocks, b).sum((1, 3))
            mass += blocks
            mem_total += float(blocks.sum())
        return mass, mem_total / (h * t)

    # ------------------------------------------------------------------ reading
    def table(self) -> list[dict[str, Any]]:
        """One row per (phase, layer): mean recall, oracle, shared oracle, memory share, observations,
        and the memory tokens (retrieved blocks and first-level entries) attended per step."""
        rows = []
        for (phase, layer), (r, o, os_, sh, n, kv) in sorted(self.sums.items(),
                                                             key=lambda kv: (PHASES.index(kv[0][0]), kv[0][1])):
            rows.append({"phase": phase, "layer": layer, "recall": r / n, "oracle": o / n,
                         "oracle_shared": os_ / n, "memory_share": sh / n, "n": n,
                         "memory_tokens": kv / n})
        return rows
