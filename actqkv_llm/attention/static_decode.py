"""The decode step with static shapes, replayed as one CUDA graph on a GPU.

A decode step of the reference path (``step.py``) issues ~60 small kernels per layer from Python;
on an H200 the GPU finishes each in microseconds and the step is bound by launching them (decode
profile in ``NOTES.md``). Most decode steps of the default method do the same thing in every layer:
rerank the candidates one scoring named a few steps ago (``rescore_every``) by the token's exact
attention, keep the budget's blocks, and attend to [sinks | those blocks | window]. This module
runs exactly those steps with every tensor at a fixed address and shape, so the whole step (the
model's dense layers included) is captured once as a CUDA graph and replayed: one launch per token.

What is static and how the varying parts are handled:

* the window is a buffer of ``n_local`` slots per layer; the new token's key and value are written
  at slot ``L`` (a device counter) and slots past ``L`` are masked out of the softmax;
* the held candidates (keys and values, ``rerank x max_blocks`` blocks per layer) are copied into
  fixed buffers when a session's held candidates change; unused slots are masked;
* the budget's number of blocks per layer (``n``) is a device tensor written before each replay; the
  rerank takes the ``max_blocks`` best candidates and masks ranks ``>= n``;
* the buffer is laid out in tiles of ``block_size`` slots (``[sinks | candidates | window]``, each
  region padded to whole tiles); the window's keys are rotated once, at their slot, and scored
  by the query rotated at the new token's slot, the memory by the query rotated where memory sits;
* the attention runs one of two ways (``decode_kernel``): a Triton kernel gives each tile's softmax
  statistics, reading only visible slots, and the rerank and the output follow from those
  (``tile_stats.py``); or PyTorch ops score the whole buffer and take one softmax;
* what the reference updates every step and reads only when it scores again (activation statistics,
  the window's tensors, the answer's source tally) is written to buffers and handed back to the
  session in one go (:meth:`DecodeGraph.settle`) before any step of the reference path runs on it.

A step goes this way only when the reference would take the held-candidates path in every layer
(no block leaves the window, the candidates have uses left and serve the budget's blocks, memory
at the same positions); anything else runs the reference step. The result is
the reference's selection and attention up to float rounding (sums in another order); tests compare
both on the CPU, where this path runs eagerly (``decode_graph=True``), and on a GPU with the graph.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..devices import half_products_into_float32
from ..errors import ConfigError
from .rope import rotate, sinks_at_true_positions
from .tile_stats import check_triton, tile_stats_triton, triton_available
from .step import DECODE

if TYPE_CHECKING:
    from ..session import Session

NEG_INF = float("-inf")


def graph_capable(method, adapter=None) -> bool:
    """Whether a method on a model can decode through :class:`DecodeGraph` at all: a rerank whose
    candidates are held across steps, no held selections, no summary keys fed by the window's
    attention, every layer a memory layer (no sliding windows). Per-step conditions:
    :meth:`DecodeGraph.plan`."""
    m = method
    return (m.uses_memory and m.bounded and getattr(m, "rerank", 1) > 1 and getattr(m, "rescore_every", 1) > 1
            and getattr(m, "reselect_every", 1) == 1 and not m.uses_summaries
            and (adapter is None or all(k.memory and k.window is None for k in adapter.kinds)))


@dataclass
class _Loaded:
    """Which session's state the buffers hold, from which window length, for how many steps."""

    session: "weakref.ReferenceType[Session]"
    held: list           # each layer's HeldCandidates the buffers were filled from
    mode: str
    n_local: int         # window length when loaded (slot of the first graph step's token)
    steps: int = 0


class StaticStep:
    """The attention of one static decode step, handed to every layer like a ``StepContext``."""

    def __init__(self, graph: "DecodeGraph"):
        self.g = graph

    def attend_layer(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        return self.g.attend(layer, q, k, v, scaling, softcap)


class DecodeGraph:
    """Static buffers for decode steps, and one CUDA graph per memory position mode.

    Shared by the engines on one model whose methods give the same :func:`graph_key` (an engine
    and those made from it with ``with_method``): its buffers hold ~3 GiB on an 8B model. It holds
    one session's decode state at a time and hands it back before another session (or the
    reference path) runs; its own lock serialises steps from engines that do not share a lock.
    ``use_graph`` False runs the same static step eagerly (the CPU, and tests)."""

    def __init__(self, adapter, config, method, use_graph: bool, kernel: str = "auto"):
        self.adapter, self.config, self.method = adapter, config, method
        self.use_graph = use_graph
        dev, dt = adapter.device, adapter.dtype
        self.device, self.dtype = dev, dt
        L, hkv, d = adapter.n_layers, adapter.n_kv_heads, adapter.head_dim
        self.hkv, self.d, self.g_heads = hkv, d, adapter.n_heads // hkv
        self.cap = config.n_local                      # window slots
        self.n_sink = config.n_sink
        self.bsz = config.block_size
        self.hi = max(config.block_range[1], config.avg_blocks)   # most blocks a layer may take
        self.m_cap = method.rerank * self.hi                       # most candidates a layer holds
        self.rows = hkv if method.per_head else 1
        # every key and value one step may read, per layer: [sinks | candidates | window], each
        # region whole tiles of block_size slots (tile_stats.py); unused slots stay invisible
        b = self.bsz
        self.c0 = -(-self.n_sink // b) * b                       # where the candidates start
        self.w0 = self.c0 + self.m_cap * b                       # where the window starts
        width = self.w0 + -(-self.cap // b) * b
        self.n_tiles, self.first_window_tile = width // b, self.w0 // b
        self.keys = torch.zeros((L, hkv, width, d), dtype=dt, device=dev)   # placed as attention reads them
        self.values = torch.zeros_like(self.keys)
        self.visible = torch.zeros((L, width), dtype=torch.bool, device=dev)  # filled candidate and window slots
        self.win_k = torch.zeros((L, hkv, self.cap, d), dtype=dt, device=dev)  # the window's keys, unrotated
        self.cand_ok = torch.zeros((L, self.rows, self.m_cap), dtype=torch.bool, device=dev)
        self.cand_edge = torch.zeros_like(self.cand_ok)
        self.mass = torch.zeros((L, self.rows, self.m_cap), dtype=torch.float32, device=dev)
        self.picks = torch.zeros_like(self.mass)
        feats = adapter.n_heads * d
        self.queries = torch.zeros((L, self.cap, feats), dtype=torch.float32, device=dev) \
            if method.tracks_activations else None
        self.cursor = torch.zeros(2, dtype=torch.long, device=dev)   # window slot L, absolute position P
        self.fixed_pos = torch.full((1,), self.cap, dtype=torch.long, device=dev)  # InfLLM's memory distance
        self.n_take = torch.zeros(L, dtype=torch.long, device=dev)   # blocks each layer keeps this step
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=dev)
        self._host = torch.zeros(1 + L, dtype=torch.long, pin_memory=dev.type == "cuda")
        self.track = False            # the loaded session tracks sources (a graph per value)
        # rotary tables held here (the adapter may replace its own when they grow): window keys and
        # the window's query at their slots (< n_local), the memory's query at the fixed distance
        # (n_local) or the token's own position (< the native window)
        need = max(adapter.native_window, self.cap + 1)
        self.tables = {kind.rope_type: adapter.rope_table(kind.rope_type, need) for kind in adapter.kinds}
        self.ranks = torch.arange(self.hi, device=dev)
        self.half_out = dev.type == "cuda" and dt in (torch.bfloat16, torch.float16) and half_products_into_float32(dev, dt)
        # per-tile softmax statistics: the Triton kernel where it runs and agrees with PyTorch
        self.stats_out = (torch.empty((hkv, self.n_tiles, self.g_heads), dtype=torch.float32, device=dev),
                          torch.empty((hkv, self.n_tiles, self.g_heads), dtype=torch.float32, device=dev),
                          torch.empty((hkv, self.n_tiles, self.g_heads, d), dtype=torch.float32, device=dev))
        # kept tiles of one layer's step: sinks and window always, candidates written per step
        self.kept = torch.ones((hkv, self.n_tiles, 1), dtype=torch.bool, device=dev)
        self.kernel = "torch"
        if kernel == "triton" and not triton_available(dev):
            raise ConfigError("decode_kernel='triton' needs a CUDA device and Triton installed; use 'auto' or 'torch'")
        if kernel != "torch" and triton_available(dev):
            self.kernel = check_triton(self, strict=kernel == "triton")
        self.graphs: dict[tuple[str, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.loaded: _Loaded | None = None
        self.mode = "fixed"           # what the step being run or captured places memory at
        self.replays = 0              # steps run through this object (read by tests and benchmarks)
        self._lock = threading.RLock()

    def _bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` in float32: bf16/fp16 operands multiplied as they are with float32 output on CUDA
        (no float32 copy of the candidates' keys each step), float32 elsewhere (the reference's math)."""
        if self.half_out:
            return torch.bmm(a.to(self.dtype), b, out_dtype=torch.float32)
        return torch.bmm(a.float(), b.float())

    # ------------------------------------------------------------------ the static step
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scaling: float, softcap: float | None) -> torch.Tensor:
        """q ``[H, 1, d]``, k/v ``[Hkv, 1, d]`` of the new token -> ``[H, 1, d]``.

        Two rotations of the query, as the reference: at the memory's position ``Q`` (the fixed
        distance, or the token's own position) for sinks and candidates, and at its window slot
        ``L`` for the window, whose key ``i`` sits rotated at slot ``i`` (distance ``L - i``), written
        once when the token arrives."""
        hkv, g, d, b, hi = self.hkv, self.g_heads, self.d, self.bsz, self.hi
        c0, w0, m_cap = self.c0, self.w0, self.m_cap
        slot = self.cursor[0:1]
        qpos = self.cursor[1:2] if self.mode == "exact" else self.fixed_pos
        keys, values, visible = self.keys[layer], self.values[layer], self.visible[layer]
        cos, sin = self.tables[self.adapter.kinds[layer].rope_type]
        cs, ss = cos.index_select(0, slot), sin.index_select(0, slot)
        self.win_k[layer].index_copy_(1, slot, k.to(self.dtype))
        keys.index_copy_(1, slot + w0, rotate(k, cs, ss).to(self.dtype))
        values.index_copy_(1, slot + w0, v.to(self.dtype))
        visible.index_fill_(0, slot + w0, True)
        if self.queries is not None:  # the activation statistics see this query when the session settles
            self.queries[layer].index_copy_(0, slot, q.permute(1, 0, 2).reshape(1, -1).float())
        qs = torch.stack([rotate(q, cos.index_select(0, qpos), sin.index_select(0, qpos)),
                          rotate(q, cs, ss)]).reshape(2, hkv, g, d)

        t0, t1 = c0 // b, w0 // b
        tiles = self.kernel == "triton" and not softcap
        if tiles:  # the Triton kernel's per-tile statistics (tile_stats.py)
            m, l, o, _ = tile_stats_triton(qs, keys, values, visible, self.first_window_tile, b, scaling,
                                           self.stats_out)
            lse = m + l.log()                      # [Hkv, T, G]; -inf for an empty tile (m = -inf)
            cand_lse, total = lse[:, t0:t1], torch.logsumexp(lse, 1, keepdim=True)
            mass = torch.exp(cand_lse - total).sum(-1)                                 # [Hkv, M]
        else:  # PyTorch: every logit of the buffer, one softmax (the fifth session's v2 step)
            raw = torch.cat([self._bmm(qs[0], keys[:, :w0].transpose(1, 2)),
                             self._bmm(qs[1], keys[:, w0:].transpose(1, 2))], -1) * scaling  # [Hkv, G, W]
            hidden = ~visible
            att = _capped(raw, softcap).masked_fill(hidden, NEG_INF)
            # the rerank reads uncapped candidate logits (att's own without a softcap)
            cand = raw[..., c0:w0].masked_fill(hidden[c0:w0], NEG_INF) if softcap else att[..., c0:w0]
            ctx = torch.cat([att[..., :c0], att[..., w0:]], -1)
            total = torch.logaddexp(torch.logsumexp(cand, -1, keepdim=True), torch.logsumexp(ctx, -1, keepdim=True))
            mass = torch.exp(cand - total).reshape(hkv, g, m_cap, b).sum((1, 3))         # [Hkv, M]

        # rerank the held candidates by the mass full attention would give them (MemoryQuery's
        # rule: uncapped candidate logits, normalised with the sinks and the window)
        if self.rows == 1:
            mass = mass.sum(0, keepdim=True)
        ok = self.cand_ok[layer]
        mass = mass.masked_fill(self.cand_edge[layer], float("inf")).masked_fill(~ok, NEG_INF)
        # ties to the earlier block, as the reference ranks them
        order = mass.sort(dim=-1, descending=True, stable=True).indices[:, :hi]     # [rows, hi]
        keep = (self.ranks < self.n_take[layer]).expand(self.rows, hi)
        chosen = torch.zeros_like(ok).scatter(1, order, keep)                      # [rows, M]

        # one softmax over [sinks | kept blocks | window]
        if tiles:  # from the tiles' statistics (the flash-decoding combine)
            self.kept[:, t0:t1, 0] = chosen.expand(hkv, m_cap)
            mk = m.masked_fill(~self.kept, NEG_INF)
            coef = torch.exp(mk - mk.amax(1, keepdim=True))                        # 0 where not kept
            weight = coef * l                                                      # [Hkv, T, G]
            den = weight.sum(1)                                                    # [Hkv, G]
            out = torch.einsum("htg,htgd->hgd", coef, o) / den[..., None]
            got = (weight[:, t0:t1] / den[:, None]).sum(-1) if self.track else None  # [Hkv, M]
        else:
            dropped = ~chosen.expand(hkv, m_cap).repeat_interleave(b, -1)          # [Hkv, M*B]
            att[..., c0:w0].masked_fill_(dropped[:, None], NEG_INF)
            p = torch.softmax(att, -1)
            out = self._bmm(p, values)                                             # [Hkv, G, d]
            got = p[..., c0:w0].sum(1).reshape(hkv, m_cap, b).sum(-1) if self.track else None
        if got is not None:  # what the answer's sources report: picks and mass per candidate
            if self.rows == 1:
                got = got.sum(0, keepdim=True)
            self.mass[layer] += got
            self.picks[layer] += chosen
        return out.reshape(hkv * g, 1, d).to(q.dtype)

    def _forward(self) -> torch.Tensor:
        a = self.adapter
        ctx = StaticStep(self)
        hidden = a.embed(self.ids)
        for i in range(a.n_layers):
            hidden = a.run_layer(i, hidden, actqkv=ctx)
        self.cursor.add_(1)
        return a.last_logits(hidden)

    def _graph(self, mode: str) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """The CUDA graph of one step at ``mode`` positions (captured on first use; capturing writes
        into the buffers, so it happens before a session's state is loaded)."""
        key = (mode, self.track)
        if key not in self.graphs:
            self.mode = mode
            self.cursor.zero_()  # the warm-up and capture steps write at slots 0 and 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy initialisation must not happen inside the capture
                    self._forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._forward()
            self.graphs[key] = (graph, out)
            self.loaded = None  # the buffers were written by the capture
        return self.graphs[key]

    # ------------------------------------------------------------------ sessions
    def plan(self, s: "Session") -> tuple[str, list[int]] | None:
        """The memory mode and the blocks each layer keeps if the next decode step of ``s`` can run
        here (the reference would rerank held candidates in every layer); else None. Changes nothing."""
        if s.meter is not None or s.adapter.model is not self.adapter.model or graph_key(s.method) != graph_key(self.method):
            return None
        cfg, a = self.config, self.adapter
        mem0, n_loc = s.memory[0], self._n_local(s)
        if n_loc + 1 > cfg.n_local:   # a block leaves the window this step
            return None
        first_q = mem0.local_start + n_loc
        mode = s.method.positions
        if mode == "auto":
            mode = "exact" if first_q + 1 <= a.native_window else "fixed"
        for mem, st in zip(s.memory, s.retrieval):
            c = st.candidates
            if (mem.n_local != mem0.n_local or mem.local_start != mem0.local_start or mem.n_sink != self.n_sink or not mem.n_blocks or c is None
                    or c.n_blocks != mem.n_blocks or c.mode != mode or c.uses_left < 1
                    or c.cand.shape[-1] > self.m_cap):
                return None
        budget = s.method.new_budget(a.memory_layers, s.retrieval)
        takes = []
        for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
            n = budget.blocks_for(0, layer, mem.n_blocks, st.candidates.entropy)
            if not st.candidates.serves(n) or n < 1:
                return None
            takes.append(n)
        return mode, takes

    def _n_local(self, s: "Session") -> int:
        """``s``'s window length, counting the steps run here and not yet handed back."""
        loaded = self.loaded
        extra = loaded.steps if loaded is not None and loaded.session() is s else 0
        return s.memory[0].n_local + extra

    def step(self, s: "Session", token: int) -> torch.Tensor | None:
        """Run one decode step of ``s`` for ``token`` here if it can; returns float32 logits ``[V]``,
        or None (the caller runs the reference step, which settles ``s`` first)."""
        with self._lock:
            return self._step(s, token)

    @torch.inference_mode()
    def _step(self, s: "Session", token: int) -> torch.Tensor | None:
        plan = self.plan(s)
        if plan is None:
            return None
        mode, takes = plan
        track = bool(s.track_sources)
        loaded = self.loaded
        if (loaded is None or loaded.session() is not s or loaded.mode != mode or self.track != track
                or any(h is not st.candidates for h, st in zip(loaded.held, s.retrieval))):
            self.release()
            s.settle()
            self.track = track
            if self.use_graph:
                self._graph(mode)  # captured before loading: capturing writes into the buffers
            self._load(s, mode)
        # the reference's bookkeeping of this step, on the host
        if s.record_kv:
            s.kv_log.append({})
        lk = self._n_local(s) + 1
        for layer, (st, n) in enumerate(zip(s.retrieval, takes)):
            held = st.take_candidates(s.memory[layer].n_blocks, mode)
            st.observe_entropy(held.entropy)
            s.note_kv(0, layer, self.n_sink + n * self.bsz + lk)
        self._host[0] = token
        self._host[1:] = torch.tensor(takes)
        ins = self._host.to(self.device, non_blocking=True)
        self.ids.view(-1).copy_(ins[:1])
        self.n_take.copy_(ins[1:])
        self.mode = mode
        if self.use_graph:
            graph, logits = self.graphs[(mode, track)]
            graph.replay()
        else:
            logits = self._forward()
        self.loaded.steps += 1
        self.replays += 1
        s.n_tokens += 1
        return logits[0].clone()

    def _load(self, s: "Session", mode: str) -> None:
        """Fill the buffers from ``s``: windows, sinks (placed for ``mode``), held candidates."""
        n_loc, ns, b, c0, w0 = s.memory[0].n_local, self.n_sink, self.bsz, self.c0, self.w0
        for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
            kind = self.adapter.kinds[layer]
            held = st.candidates
            m = held.cand.shape[-1]
            ids = held.cand[0] if held.cand.shape[0] == 1 else held.cand
            _, cand_v = mem.blocks.gather(ids, self.device, keys=False)
            sink_k = sinks_at_true_positions(self.adapter, kind.rope_type, mem) if mode == "exact" else mem.sink_k
            cos, sin = self.tables[kind.rope_type]
            self.keys[layer, :, :ns] = sink_k
            self.values[layer, :, :ns] = mem.sink_v
            self.keys[layer, :, c0:c0 + m * b] = held.keys
            self.values[layer, :, c0:c0 + m * b] = cand_v
            self.win_k[layer, :, :n_loc] = mem.local_k
            self.keys[layer, :, w0:w0 + n_loc] = rotate(mem.local_k, cos[:n_loc], sin[:n_loc]).to(self.dtype)
            self.values[layer, :, w0:w0 + n_loc] = mem.local_v
            self.visible[layer] = False
            self.visible[layer, :ns] = True
            self.visible[layer, c0:c0 + m * b] = True
            self.visible[layer, w0:w0 + n_loc] = True
            self.cand_ok[layer] = False
            self.cand_ok[layer, :, :m] = True
            self.cand_edge[layer] = False
            if s.method.keep_edges:
                self.cand_edge[layer, :, :m] = (held.cand == 0) | (held.cand == mem.n_blocks - 1)
        self.mass.zero_()
        self.picks.zero_()
        self.cursor[0] = n_loc
        self.cursor[1] = s.memory[0].local_start + n_loc
        self.loaded = _Loaded(weakref.ref(s), [st.candidates for st in s.retrieval], mode, n_loc)
        s.pending = self

    def settle(self, s: "Session") -> None:
        """Hand the state of the steps run here back to ``s`` (its windows, activation statistics and
        source tally), so that the reference path can continue it."""
        with self._lock:
            self._settle(s)

    @torch.inference_mode()
    def _settle(self, s: "Session") -> None:
        loaded = self.loaded
        if loaded is None or loaded.session() is not s:
            return
        self.loaded = None
        k, a, w0 = loaded.steps, loaded.n_local, self.w0
        if not k:
            return
        for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
            mem.local_k = self.win_k[layer, :, :a + k].clone()
            mem.local_v = self.values[layer, :, w0:w0 + a + k].clone()
            mem.local_score = torch.cat([mem.local_score, mem.local_score.new_zeros((self.hkv, k))], 1)
            if self.queries is not None and st.stats is not None:
                st.stats.update(self.queries[layer, a:a + k])
            if self.track:
                held = loaded.held[layer]
                m = held.cand.shape[-1]
                ids = held.cand.expand(self.rows, m).flatten()
                s.tally.add_counts(ids, self.picks[layer, :, :m].flatten(), mem.n_blocks)
                s.tally.add_mass(ids, self.mass[layer, :, :m].flatten(), mem.n_blocks)

    def release(self) -> None:
        """Hand the loaded session's state back (if it still lives)."""
        with self._lock:
            loaded = self.loaded
            s = None if loaded is None else loaded.session()
            if s is not None:
                s.settle()
            self.loaded = None


def graph_key(method) -> tuple:
    """What the buffers and the captured step depend on in a method and its options: sessions and
    engines with equal keys can share one :class:`DecodeGraph` (a document's sessions run its
    prefilling engine's method object, an equal one for an engine of the same options)."""
    c = method.config
    return (graph_capable(method, None), method.per_head, method.rerank, method.keep_edges,
            method.tracks_activations, method.positions, c.block_range, c.avg_blocks,
            c.n_local, c.n_sink, c.block_size)


def _capped(s: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(s / softcap) * softcap if softcap else s


__all__ = ["DecodeGraph", "graph_capable", "graph_key", "DECODE"]
