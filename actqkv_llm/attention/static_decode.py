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
* the held candidates (keys and values, ``n_candidates`` = ``rerank`` x the average blocks per layer;
  at least ``max_blocks``) are copied into
  fixed buffers when a session's held candidates change; unused slots are masked;
* the budget's number of blocks per layer (``n``) is a device tensor written before each replay; the
  rerank takes the ``max_blocks`` best candidates and masks ranks ``>= n``;
* the buffer is laid out in tiles of ``block_size`` slots (``[sinks | candidates | window]``, each
  region padded to whole tiles); the window's keys are rotated once, at their slot, and scored
  by the query rotated at the new token's slot, the memory by the query rotated where memory sits;
* the attention runs one of two ways (``decode_kernel``): a Triton kernel gives each tile's softmax
  statistics, reading only visible slots (keys for the rerank, then values only of the tiles it
  keeps), and the rerank and the output follow from those (``tile_stats.py``); or PyTorch ops
  score the whole buffer and take one softmax;
* several sessions decode at once as rows (``Engine.answer_many``): every buffer has a row axis,
  each row its own window slot, position, memory placement (a per-row flag: the fixed angle or
  true positions, so one graph serves both) and candidates; one graph per number of rows, the
  weights read once per step for all of them; the Triton kernels add in a fixed order, so a row
  gets the same bits alone or beside others;
* what the reference updates every step and reads only when it scores again (activation statistics,
  the window's tensors, the answer's source tally) is written to buffers and handed back to the
  session in one go (:meth:`DecodeGraph.settle`) before any step of the reference path runs on it.

Most steps replay the graph: every layer reranks candidates it holds. One in ``rescore_every``
steps, and every step where tokens leave the window as a block (one in ``block_size`` once the
window is full), a layer scores every block again first: the reference's eviction
(``LayerMemory.make_room``, on the state handed back) before the step, and in each layer the
reference's scoring (``BlockRetrieval.rescore``, with the candidates' keys and values read in one
go, :func:`candidate_reads`) before the rerank. On a GPU such a step replays the same step captured
in segments cut at each layer's scoring point, the scoring run between them: where each row that
scores again does so in every layer, with static shapes (``decode_static_scoring``, static_scoring.py:
each layer's scoring of those rows one captured graph), else the reference's eagerly; on the CPU the
whole step runs eagerly.
The eviction stays eager (host calls; NOTES.md); for several rows it replaces the reference pass's
attention row by row.
Anything else (memory moving to
other positions, a meter watching, a budget that reads the step's own entropy) runs the reference
step. The result is the reference's selection and attention up to float rounding (sums in another
order); tests compare both on the CPU, where this path runs eagerly (``decode_graph=True``), and on
a GPU with the graph.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..devices import free_device_bytes, half_products_into_float32, kernel_agrees, triton_available
from ..errors import ConfigError
from .block_gather import candidate_reads, gather_parts_triton, gathers_agree
from ..memory.digests import key_bounds, outward_bf16
from ..memory.layer_memory import leave_together
from .rope import blocks_at_true_positions, rotate, sinks_at_true_positions
from .static_scoring import DocumentScoring, RowOwnBlocks, own_count, score_layer, scores_statically
from .tile_stats import (ChosenList, candidate_mass_triton, check_triton, choose_torch, choose_triton, combine_triton,
                         kept_values_triton, place_token_torch, place_token_triton, tile_stats_triton)
from .step import DECODE, StepContext

if TYPE_CHECKING:
    from ..session import Session

NEG_INF = float("-inf")
# of the device memory free when answers start decoding together, the share their rows' buffers may
# take (the rest: the reference passes, the graph's own intermediates, the prefill of what follows)
ROW_MEMORY_SHARE = 0.5


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
class _Segments:
    """A decode step captured in pieces cut at every layer's scoring point: ``graphs[i]`` runs up to
    ``cuts[i]`` (layer, that layer's query buffer, its scaling, the query rotated both ways), the last
    one to ``logits``."""
    graphs: list
    cuts: list
    logits: torch.Tensor


@dataclass
class _Loaded:
    """Which session's state a row of the buffers holds, from which window length, for how many steps."""

    session: "weakref.ReferenceType[Session]"
    held: list           # each layer's HeldCandidates the buffers were filled from
    mode: str
    n_local: int         # window length when loaded (slot of the first graph step's token)
    steps: int = 0


def place_token(q, k, slot, qpos, cos, sin, dtype: torch.dtype):
    """Each row's new token in one layer: its query rotated both ways and its key at its slot.

    q ``[B, H, 1, d]``, k ``[B, Hkv, 1, d]``, ``slot`` and ``qpos`` ``[B]`` (:meth:`DecodeGraph._slot_indices`).
    Returns the query rotated at the memory's position and at its window slot ``L``, ``[2, B * Hkv,
    G, d]``; the key rotated at ``L`` in ``dtype`` ``[B * Hkv, d]``; the query as it came ``[B, H *
    d]`` (for the activation statistics). Pure: ``decode_compile`` fuses it into a few kernels;
    the writes stay in :meth:`DecodeGraph.attend` (compiled, writes into views of the buffers were
    measured to copy whole buffers: NOTES.md, eleventh H200 session)."""
    n_r, hkv, _, d = k.shape
    cs, ss = cos.index_select(0, slot)[:, None, None], sin.index_select(0, slot)[:, None, None]  # [B, 1, 1, d]
    qm = rotate(q, cos.index_select(0, qpos)[:, None, None], sin.index_select(0, qpos)[:, None, None])
    qs = torch.stack([qm, rotate(q, cs, ss)]).reshape(2, n_r * hkv, q.shape[1] // hkv, d)
    k_rot = rotate(k, cs, ss).reshape(-1, d).to(dtype)
    q_flat = q.transpose(1, 2).reshape(n_r, -1)
    return qs, k_rot, q_flat


def candidate_reads_agree(graph: "DecodeGraph") -> bool:
    """Whether :func:`~.block_gather.gather_parts_triton` gives :func:`candidate_reads`' keys (within
    one rounding of the same float32 rotation) and values (exactly) on ``graph``'s device, dtype and
    shapes, from two stores (a document's blocks and a session's own), rotated and as stored; run
    once per decode graph (a failure or a difference warns, and the reads stay PyTorch's)."""
    dev, dt, hkv, d, b, ns = graph.device, graph.dtype, graph.hkv, graph.d, graph.bsz, graph.n_sink
    gen = torch.Generator(device=dev).manual_seed(0)
    rope_type, table = next(iter(graph.tables.items()))
    n = min(8, (table[0].shape[0] - ns) // b)
    if n < 2:
        return False
    parts = [tuple(torch.randn((m, hkv, b, d), generator=gen, device=dev).to(dt) for _ in range(2))
             for m in (n - n // 2, n // 2)]
    cand = torch.randint(0, n, (graph.sel_rows, 3), generator=gen, device=dev).sort(-1).values
    want = [candidate_reads(cand, parts, tab, dt) for tab in (graph.block_tables[rope_type], None)]

    def run():
        out = []
        for tab in (table, None):
            k, v = (torch.empty((1, hkv, 3 * b, d), dtype=dt, device=dev) for _ in range(2))
            gather_parts_triton(parts, cand, tab, ns, k, v)
            out.append((k[0], v[0]))
        return out

    return kernel_agrees("decode_kernel", "candidate gather", "reading a new scoring's candidates", run,
                         lambda got: gathers_agree(zip(got, want)))


class StaticStep:
    """The attention of one static decode step of rows ``0 .. n_rows-1``, handed to every layer like
    a ``StepContext`` (``batched``: it takes the model's ``[B, H, 1, d]`` tensors whole; ``B`` may
    exceed ``n_rows`` by the dense layers' padding rows, ``decode_pad_rows``)."""

    batched = True

    def __init__(self, graph: "DecodeGraph", n_rows: int):
        self.g, self.n_rows = graph, n_rows

    def attend_layer(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        return self.g.attend(layer, q, k, v, scaling, softcap, self.n_rows)


class DecodeGraph:
    """Static buffers for decode steps in rows (one session per row), and one CUDA graph per number
    of rows decoded together.

    Shared by the engines on one model whose methods give the same :func:`graph_key` (an engine
    and those made from it with ``with_method``): each row holds ~3 GiB on an 8B model; there is one
    row until several answers decode together (``Engine.answer_many``), then as many as they are.
    A row holds one session's decode state at a time and hands it back before another session (or
    the reference path) runs on it; its own lock serialises steps from engines that do not share a
    lock. ``use_graph`` False runs the same static step eagerly (the CPU, and tests)."""

    def __init__(self, adapter, config, method, use_graph: bool, kernel: str = "auto",
                 compile_layers: bool | str = False, pad_rows: int = 1, joined: bool = False,
                 static_scoring: bool = False):
        self.adapter, self.config, self.method = adapter, config, method
        self.use_graph = use_graph
        # the dense layers run on at least this many rows (decode_pad_rows): the same products,
        # hence the same bits per row, for one answer as for several
        self.pad_rows = pad_rows
        # the model's layer code and the token's placement through torch.compile (decode_compile):
        # True, or "auto" (a failure to compile falls back to the plain code with a warning, :meth:`_warm_up`)
        self.compile_layers = compile_layers
        self._compiled_place = torch.compile(place_token) if compile_layers else None
        # Llama-like layers with their projections joined (decode_joined_projections): how many
        self.joined_layers = adapter.join_projections() if joined else 0
        dev, dt = adapter.device, adapter.dtype
        self.device, self.dtype = dev, dt
        hkv, d = adapter.n_kv_heads, adapter.head_dim
        self.hkv, self.d, self.g_heads = hkv, d, adapter.n_heads // hkv
        self.cap = config.n_local                      # window slots
        self.n_sink = config.n_sink
        self.bsz = config.block_size
        self.hi = max(config.block_range[1], config.avg_blocks)   # most blocks a layer may take
        self.m_cap = max(method.n_candidates, self.hi)             # most candidates a layer holds
        self.sel_rows = hkv if method.per_head else 1              # selections per layer and row
        # steps where every layer scores again do it with static shapes (static_scoring.py) where the
        # method's scoring has that form and every scoring names m_cap candidates
        self.static_scoring = static_scoring and scores_statically(method) and method.n_candidates == self.m_cap
        # every key and value one step may read, per layer and row: [sinks | candidates | window],
        # each region whole tiles of block_size slots (tile_stats.py); unused slots stay invisible
        b = self.bsz
        self.c0 = -(-self.n_sink // b) * b                       # where the candidates start
        self.w0 = self.c0 + self.m_cap * b                       # where the window starts
        self.width = self.w0 + -(-self.cap // b) * b
        self.n_tiles, self.first_window_tile = self.width // b, self.w0 // b
        self.fixed_pos = torch.full((1,), self.cap, dtype=torch.long, device=dev)  # InfLLM's memory distance
        # rotary tables held here (the adapter may replace its own when they grow): window keys and
        # the window's query at their slots (< n_local), the memory's query at the fixed distance
        # (n_local) or the token's own position (< the native window)
        need = max(adapter.native_window, self.cap + 1)
        self.tables = {kind.rope_type: adapter.rope_table(kind.rope_type, need) for kind in adapter.kinds}
        # the layers of each rotary table, as an index of the layer axis (a slice where one table serves all)
        by_rope: dict = {}
        for i, kind in enumerate(adapter.kinds):
            by_rope.setdefault(kind.rope_type, []).append(i)
        self.rope_layers = [(rt, slice(None) if len(ls) == len(adapter.kinds) else torch.tensor(ls, device=dev))
                            for rt, ls in by_rope.items()]
        # the same tables per memory block ([n, block_size, d], from position n_sink on: block i's
        # tokens), for candidates placed at their true positions (candidate_reads)
        b, ns = config.block_size, config.n_sink
        n_tab = {rt: (t[0].shape[0] - ns) // b for rt, t in self.tables.items()}
        self.block_tables = {rt: tuple(x[ns:ns + n_tab[rt] * b].view(n_tab[rt], b, x.shape[-1]) for x in t)
                             for rt, t in self.tables.items()}
        self.rope = adapter.identity_rope(torch.empty((1, 1, 1), dtype=dt, device=dev))  # one token's, made once
        self.half_out = dev.type == "cuda" and dt in (torch.bfloat16, torch.float16) and half_products_into_float32(dev, dt)
        self.kernel = "torch"
        if kernel == "triton" and not triton_available(dev):
            raise ConfigError("decode_kernel='triton' needs a CUDA device and Triton installed; use 'auto' or 'torch'")
        # the kernels' checks run before the rows' buffers are made: their random tensors (~0.5 GiB on
        # the Llama-3.1-8B shape) and the buffers are never held at once
        if kernel != "torch" and triton_available(dev):
            self.kernel = check_triton(self, strict=kernel == "triton")
        # a new scoring's candidate reads as one kernel into the row's slots (gather_parts_triton)
        self.gather_kernel = self.kernel == "triton" and candidate_reads_agree(self)
        self.n_rows = 0
        self._allocate(1)
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # the same step cut at every layer's scoring point, for steps where a layer scores every block
        # again (_segments); None for a key whose cut capture failed (such steps then run eagerly)
        self.segments: dict[tuple[int, bool], _Segments | None] = {}
        self._cut = None              # while capturing segments: called at each layer's scoring point
        self._at = None               # the step's slot indices (_slot_indices), made by _forward
        self.track = False            # the step being run or captured adds up the rows' source tallies
        self.replays = 0              # row steps run through this object (read by tests and benchmarks)
        self.rescores = 0             # layers of those steps that scored every block again (_rescore)
        self.rescore_steps = 0        # row steps with such a layer
        self.segment_steps = 0        # steps replayed in segments around the layers' scorings (_replay_segments)
        self.row_evictions = 0        # blocks leaving a window that the row kept, moved down (_evict)
        self.static_scored = 0        # row steps whose layers scored again with static shapes (static_scoring.py)
        self.scoring_replays = 0      # layers' scorings replayed as captured graphs
        self._rescoring: dict = {}    # this step's rows that score again: row -> (session, {layer: observe}, takes)
        self._scoring: DocumentScoring | None = None   # this step's static scoring, where it has one
        self.scorings: dict[tuple, DocumentScoring] = {}   # per document and positions mode (the last two)
        self._lock = threading.RLock()

    def _allocate(self, n_rows: int) -> None:
        """The buffers for ``n_rows`` rows (their contents are loaded per session)."""
        a, dev, dt = self.adapter, self.device, self.dtype
        L, R, hkv, d, W, cap = a.n_layers, n_rows, self.hkv, self.d, self.width, self.cap
        self.n_rows = R
        self.rows: list[_Loaded | None] = [None] * R      # which session each row holds
        self.keys = torch.zeros((L, R, hkv, W, d), dtype=dt, device=dev)   # placed as attention reads them
        self.values = torch.zeros_like(self.keys)
        self.visible = torch.zeros((L, R, W), dtype=torch.bool, device=dev)  # filled candidate and window slots
        self.win_k = torch.zeros((L, R, hkv, cap, d), dtype=dt, device=dev)  # the window's keys, unrotated
        self.cand_ok = torch.zeros((L, R, self.sel_rows, self.m_cap), dtype=torch.bool, device=dev)
        self.cand_edge = torch.zeros_like(self.cand_ok)
        self.mass = torch.zeros((L, R, self.sel_rows, self.m_cap), dtype=torch.float32, device=dev)
        self.picks = torch.zeros_like(self.mass)
        feats = a.n_heads * d
        # each row's window queries for the activation statistics, in the model's dtype: the queries
        # come from the projections in it (the statistics read them as float32, as the reference does)
        self.queries = torch.zeros((L, R, cap, feats), dtype=dt, device=dev) \
            if self.method.tracks_activations else None
        self.cursor = torch.zeros((R, 2), dtype=torch.long, device=dev)   # per row: window slot, absolute position
        self.exact = torch.zeros(R, dtype=torch.bool, device=dev)        # per row: memory at true positions
        self.n_take = torch.zeros((R, L), dtype=torch.long, device=dev)  # blocks each layer keeps this step
        self.n_all = torch.zeros(R, dtype=torch.long, device=dev)       # per row: its memory's blocks this step
        self.ids = torch.zeros((max(R, self.pad_rows), 1), dtype=torch.long, device=dev)  # padding rows: token 0
        # per row: token, each layer's blocks to keep, the memory's blocks
        self._host = torch.zeros((R, 2 + L), dtype=torch.long, pin_memory=dev.type == "cuda")
        # each row's copy of its session's own blocks, read by the static scoring
        self.own = RowOwnBlocks(L, R, hkv, self.bsz, d, dt, dev) if self.static_scoring else None
        # flat offsets of each row's KV heads (writing one slot per row and head) and of each row
        heads = torch.arange(R * hkv, device=dev).view(R, hkv)
        self.head_base_w, self.head_base_cap = heads * W, heads * cap
        self.row_base_w, self.row_base_cap = torch.arange(R, device=dev) * W, torch.arange(R, device=dev) * cap
        # the Triton kernels' outputs: per-tile softmax statistics, each head's total, the candidates'
        # masses, the output and each tile's share of it
        g = self.g_heads
        self.stats_out = (torch.empty((R * hkv, self.n_tiles, g), dtype=torch.float32, device=dev),
                          torch.empty((R * hkv, self.n_tiles, g), dtype=torch.float32, device=dev),
                          torch.empty((R * hkv, self.n_tiles, g, d), dtype=torch.float32, device=dev))
        self.lse_total = torch.empty((R * hkv, g), dtype=torch.float32, device=dev)
        self.mass_out = torch.empty((R, self.sel_rows, self.m_cap), dtype=torch.float32, device=dev)
        self.chosen_out = torch.empty((R, self.sel_rows, self.m_cap), dtype=torch.bool, device=dev)
        self.chosen_list = ChosenList(R, self.sel_rows, self.m_cap, dev)     # the same choice as a list (the combine's)
        self.ranks = torch.arange(self.hi, device=dev)                  # choose_torch's positions, made once
        # the combine's output in the model's dtype, with the dense layers' padding rows below the
        # rows (zeros, or what a step of more rows left there: no row reads another's, and attention
        # reads none of them), so that attention hands it on as it is: no cast, no pad per layer
        self.out_rows = torch.zeros((max(R, self.pad_rows) * hkv, g, d), dtype=dt, device=dev)
        self.tile_share = torch.empty((R * hkv, self.n_tiles, g), dtype=torch.float32, device=dev)
        # each layer's and row's candidate slots, as views made once (_load_candidates)
        c0, w0 = self.c0, self.w0
        self._slots = [[(self.keys[i, r, :, c0:w0], self.values[i, r, :, c0:w0], self.visible[i, r, c0:w0],
                         self.cand_ok[i, r], self.cand_edge[i, r]) for r in range(R)] for i in range(L)]
        self._filled: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        per_row = [self.keys, self.values, self.visible, self.win_k, self.cand_ok, self.cand_edge, self.mass,
                   self.picks, self.queries, self.lse_total, self.mass_out, self.chosen_out,
                   self.chosen_list.order, self.chosen_list.count, self.out_rows, self.tile_share, *self.stats_out]
        self._row_bytes = (sum(t.numel() * t.element_size() for t in per_row if t is not None)
                           + (self.own.nbytes() if self.own is not None else 0)) // R

    def row_bytes(self) -> int:
        """Device bytes one row's buffers take."""
        return self._row_bytes

    def rows_for(self, n: int) -> int:
        """How many of ``n`` answers decode as rows at once: all of them where their buffers fit in
        ``ROW_MEMORY_SHARE`` of the device memory free now (the driver's free memory and the blocks
        PyTorch's allocator keeps for reuse, :func:`free_device_bytes`; counting the rows held already, which
        growing replaces), else as many as fit (at least one; the others wait for a row). The CPU
        (eager rows, tests) takes all."""
        if n <= self.n_rows or self.device.type != "cuda":
            return n
        free = free_device_bytes(self.device)
        per_row = self.row_bytes()
        fit = int((free + self.n_rows * per_row) * ROW_MEMORY_SHARE) // per_row
        return max(1, self.n_rows, min(n, fit))

    def _grow(self, n_rows: int) -> None:
        """Room for ``n_rows`` rows: every row's session handed back, buffers made anew, graphs dropped
        (they read the old buffers)."""
        if n_rows <= self.n_rows:
            return
        self.release()
        self.graphs.clear()
        self.segments.clear()
        self.scorings.clear()
        for name in ("keys", "values", "win_k", "queries", "stats_out", "own"):
            setattr(self, name, None)   # the old buffers go before the new ones are made
        self._allocate(n_rows)

    def _bmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` in float32: bf16/fp16 operands multiplied as they are with float32 output on CUDA
        (no float32 copy of the candidates' keys each step), float32 elsewhere (the reference's math)."""
        if self.half_out:
            return torch.bmm(a.to(self.dtype), b, out_dtype=torch.float32)
        return torch.bmm(a.float(), b.float())

    # ------------------------------------------------------------------ the static step
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scaling: float, softcap: float | None, n_r: int) -> torch.Tensor:
        """q ``[B, H, 1, d]``, k/v ``[B, Hkv, 1, d]`` of each row's new token -> ``[B, H, 1, d]``, for
        rows ``0 .. n_r-1`` (rows past ``n_r``: the dense layers' padding, their output zero).

        Two rotations of each row's query, as the reference: at the memory's position ``Q`` (the
        fixed distance, or the token's own position) for sinks and candidates, and at its window
        slot ``L`` for the window, whose key ``i`` sits rotated at slot ``i`` (distance ``L - i``),
        written once when the token arrives."""
        n_dense = q.shape[0]
        if n_dense > n_r:   # padding rows of the dense layers: attention for the real rows only
            q, k, v = q[:n_r], k[:n_r], v[:n_r]
        hkv, g, d, b, hi, W = self.hkv, self.g_heads, self.d, self.bsz, self.hi, self.width
        c0, w0, m_cap = self.c0, self.w0, self.m_cap
        keys, values, visible = self.keys[layer, :n_r], self.values[layer, :n_r], self.visible[layer, :n_r]
        cos, sin = self.tables[self.adapter.kinds[layer].rope_type]
        slot, qpos, at_cap, at_w, at_vis, at_q = self._at     # this step's (_forward)
        qs, k_rot, q_flat = self._place(q, k, slot, qpos, cos, sin, self.dtype)
        # the token's key (unrotated, and rotated at its slot), value and visibility; its query for the
        # activation statistics, which see it when the session settles (one kernel with Triton)
        tiles = self.kernel == "triton" and not softcap
        queries = self.queries[layer, :n_r] if self.queries is not None else None
        (place_token_triton if tiles else place_token_torch)(
            k, k_rot, v, q_flat, self.win_k[layer, :n_r], keys, values, visible, queries, at_cap, at_w, at_vis, at_q)
        if self._cut is not None:     # capturing segments: the scoring runs here between two of them
            self._cut(layer, q, scaling, qs)
        elif self._scoring is not None:   # the rows that score again, with static shapes (eagerly: the CPU)
            score_layer(self, self._scoring, layer, qs[0], scaling, tuple(self._rescoring))
        elif self._rescoring:
            self._rescore(layer, q, scaling)
        flat_k, flat_v = keys.view(n_r * hkv, W, d), values.view(n_r * hkv, W, d)

        t0, t1 = c0 // b, w0 // b
        if tiles:  # the Triton kernels: per-tile statistics, candidates' masses (tile_stats.py)
            n_h = n_r * hkv
            # keys only here: the values are read after the rerank, for the tiles it keeps (kept_values_triton)
            m, l, o, _ = tile_stats_triton(qs, flat_k, flat_v, visible, self.first_window_tile, b, scaling,
                                           tuple(x[:n_h] for x in self.stats_out), with_values=False)
            mass = candidate_mass_triton(m, l, self.cand_ok[layer, :n_r], self.cand_edge[layer, :n_r], t0, t1,
                                         self.lse_total[:n_h], self.mass_out[:n_r])          # [B, sel, M]
        else:  # PyTorch: every logit of the buffer, one softmax (the fifth session's v2 step)
            raw = torch.cat([self._bmm(qs[0], flat_k[:, :w0].transpose(1, 2)),
                             self._bmm(qs[1], flat_k[:, w0:].transpose(1, 2))], -1) * scaling
            raw = raw.view(n_r, hkv, g, W)
            hidden = ~visible[:, None, None]                                               # [B, 1, 1, W]
            att = _capped(raw, softcap).masked_fill(hidden, NEG_INF)
            # the rerank reads uncapped candidate logits (att's own without a softcap)
            cand = raw[..., c0:w0].masked_fill(hidden[..., c0:w0], NEG_INF) if softcap else att[..., c0:w0]
            ctx = torch.cat([att[..., :c0], att[..., w0:]], -1)
            total = torch.logaddexp(torch.logsumexp(cand, -1, keepdim=True), torch.logsumexp(ctx, -1, keepdim=True))
            mass = torch.exp(cand - total).reshape(n_r, hkv, g, m_cap, b).sum((2, 4))  # [B, Hkv, M]
            if self.sel_rows == 1:
                mass = mass.sum(1, keepdim=True)
            mass = mass.masked_fill(self.cand_edge[layer, :n_r], float("inf")).masked_fill(~self.cand_ok[layer, :n_r], NEG_INF)
        # rerank the held candidates by the mass full attention would give them (MemoryQuery's rule:
        # uncapped candidate logits, normalised with the sinks and the window; edges always kept);
        # ties to the earlier block, as the reference ranks them
        sel = self.sel_rows
        if tiles:   # ranks counted in one kernel: no sort, the same choice
            kept = self.chosen_list.rows(n_r)
            chosen = choose_triton(mass, self.n_take[:n_r, layer], hi, self.chosen_out[:n_r], kept)   # [B, sel, M]
        else:
            chosen = choose_torch(mass, self.n_take[:n_r, layer], hi, self.ranks)

        # one softmax over [sinks | kept blocks | window]
        if tiles:  # from the tiles' statistics (the flash-decoding combine), values of the kept tiles only
            kept_values_triton(qs, flat_k, flat_v, visible, kept, hi, self.first_window_tile, b, scaling, t0, t1, o)
            _, w = combine_triton(m, l, o, chosen, kept, t0, t1, self.track, self.out_rows[:n_h], self.tile_share[:n_h])
            got = w[:, t0:t1].sum(-1).view(n_r, hkv, m_cap) if self.track else None                 # [B, Hkv, M]
            out = self.out_rows[:n_dense * hkv].view(n_dense, hkv * g, 1, d)   # the padding rows included
        else:
            dropped = ~chosen.expand(n_r, hkv, m_cap).repeat_interleave(b, -1)     # [B, Hkv, M*B]
            att[..., c0:w0].masked_fill_(dropped[:, :, None], NEG_INF)
            p = torch.softmax(att, -1)
            got = p[..., c0:w0].sum(2).reshape(n_r, hkv, m_cap, b).sum(-1) if self.track else None
            out = self._bmm(p.view(n_r * hkv, g, W), flat_v).reshape(n_r, hkv * g, 1, d).to(q.dtype)
            if n_dense > n_r:   # zero rows below, in one kernel (a fill and a join took two per layer)
                out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, 0, 0, n_dense - n_r))
        if got is not None:  # what the answer's sources report: picks and mass per candidate
            if sel == 1:
                got = got.sum(1, keepdim=True)
            self.mass[layer, :n_r] += got
            self.picks[layer, :n_r] += chosen
        return out

    @property
    def _place(self):
        """:func:`place_token`, compiled while ``compile_layers`` holds."""
        return self._compiled_place if self.compile_layers else place_token

    def _forward(self, n_r: int) -> torch.Tensor:
        a = self.adapter
        run = a.layer_caller(self.compile_layers, joined=self.joined_layers > 0)
        kwargs = {"actqkv": StaticStep(self, n_r)}
        # where the rows' tokens go: the same in every layer, so found once per step (four small
        # kernels per layer in the twenty-seventh session's graph profile)
        self._at = self._slot_indices(n_r)
        hidden = a.embed(self.ids[:max(n_r, self.pad_rows)])
        for layer in a.layers:
            hidden = run(layer, hidden, self.rope, kwargs)
        self.cursor[:n_r] += 1
        return a.last_logits(hidden)[:n_r]

    def _slot_indices(self, n_r: int) -> tuple[torch.Tensor, ...]:
        """Where rows ``0 .. n_r-1``'s new tokens go, the same in every layer of a step: the window slot
        ``L`` (the row's cursor) and the memory's query position (the fixed distance, or the token's
        own where memory sits at true positions) ``[B]``; the flat indices of the key in the window's
        keys and of key and value in the buffer (slot ``w0 + L``), per row and KV head, of the slot in
        ``visible`` and of the query in the queries kept, per row."""
        slot = self.cursor[:n_r, 0]                                                   # [B]
        qpos = torch.where(self.exact[:n_r], self.cursor[:n_r, 1], self.fixed_pos)    # [B]
        at_cap = (self.head_base_cap[:n_r] + slot[:, None]).flatten()
        at_w = (self.head_base_w[:n_r] + (slot + self.w0)[:, None]).flatten()
        return slot, qpos, at_cap, at_w, self.row_base_w[:n_r] + slot + self.w0, self.row_base_cap[:n_r] + slot

    def _graph(self, n_r: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """The CUDA graph of one step of rows ``0 .. n_r-1`` (captured on first use; capturing writes
        into those rows, so every row's session is handed back first and loaded after)."""
        key = (n_r, self.track)
        if key not in self.graphs:
            self.release()
            self.cursor.zero_()  # the warm-up and capture steps write at slots 0 and 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: lazy initialisation (and compiling) must not happen inside the capture
                    self._warm_up(n_r)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._forward(n_r)
            self.graphs[key] = (graph, out)
            self.segments[key] = self._segments(n_r)
        return self.graphs[key]

    def _segments(self, n_r: int) -> "_Segments | None":
        """The step of rows ``0 .. n_r-1`` captured once more, cut at each layer's scoring point
        (after the token is placed, before attention reads the candidate slots): one graph per
        stretch between two cuts, in one memory pool, replayed in order with the scoring of the
        rows that score again run eagerly at each cut (:meth:`_replay_segments`). None, with a
        warning, where capturing fails (such steps then run eagerly, as before)."""
        pool = torch.cuda.graph_pool_handle()
        graphs: list[torch.cuda.CUDAGraph] = []
        cuts: list[tuple[int, torch.Tensor, float]] = []

        def begin() -> None:
            graphs.append(torch.cuda.CUDAGraph())
            graphs[-1].capture_begin(pool)

        def cut(layer: int, q: torch.Tensor, scaling: float, qs: torch.Tensor) -> None:
            graphs[-1].capture_end()
            cuts.append((layer, q, scaling, qs))
            begin()

        torch.cuda.synchronize(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        self._cut = cut
        failed = None
        with torch.cuda.stream(side):   # a capture ends on the stream it began on
            try:
                begin()
                out = self._forward(n_r)
                graphs[-1].capture_end()
            except Exception as exc:  # noqa: BLE001 - a step that cannot be cut runs eagerly
                failed = exc
                if torch.cuda.is_current_stream_capturing():
                    try:   # end the open capture (it raises where the capture was invalidated, and ends it)
                        graphs[-1].capture_end()
                    except RuntimeError:
                        pass
            finally:
                self._cut = None
        torch.cuda.current_stream(self.device).wait_stream(side)
        if failed is not None:
            import warnings
            warnings.warn(f"decode steps that score again run eagerly: capturing them in segments failed "
                          f"({type(failed).__name__}: {failed})", RuntimeWarning, stacklevel=3)
            return None
        return _Segments(graphs, cuts, out)

    def _replay_segments(self, seg: "_Segments", key: tuple[int, bool, tuple[int, ...]]) -> torch.Tensor:
        """One step of the rows from its segments, each layer's new scoring run at its cut: the static
        scoring's captured graph for the rows that score (``key``: the step's rows, whether it tracks
        sources, the rows that score; :meth:`_capture_scoring`; eagerly the first time for a document
        and those rows), else the reference's (:meth:`_rescore`) eagerly; returns the step's logits."""
        sc = self._scoring
        graphs = sc.graphs.get(key) if sc is not None else None
        for i, graph in enumerate(seg.graphs):
            graph.replay()
            if i < len(seg.cuts):
                layer, q, scaling, qs = seg.cuts[i]
                if graphs is not None:
                    graphs[layer].replay()
                    self.scoring_replays += 1
                elif sc is not None:
                    score_layer(self, sc, layer, qs[0], scaling, key[2])
                else:
                    self._rescore(layer, q, scaling)
        self.segment_steps += 1
        if sc is not None and key not in sc.graphs:   # every kernel has run once: capture the scorings now
            self._capture_scoring(sc, seg, key)
        return seg.logits

    def _capture_scoring(self, sc: DocumentScoring, seg: "_Segments", key: tuple[int, bool, tuple[int, ...]]) -> None:
        """Each layer's static scoring of rows ``key[2]`` captured as a graph that reads the query
        the segments leave at that layer's cut (capturing runs nothing: the rows keep their state).
        Where capturing fails, the scorings stay eager, with a warning."""
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                for layer, _, scaling, qs in seg.cuts:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=side):
                        score_layer(self, sc, layer, qs[0], scaling, key[2])
                    graphs.append(graph)
        except Exception as exc:  # noqa: BLE001 - the scorings then run eagerly at the cuts
            import warnings
            warnings.warn(f"decode steps that score again score eagerly: capturing the static scoring failed "
                          f"({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
            sc.graphs[key] = None
            return
        finally:
            torch.cuda.current_stream(self.device).wait_stream(side)
        sc.graphs[key] = graphs

    def _warm_up(self, n_r: int) -> None:
        """One untimed step of rows ``0 .. n_r-1`` (the rows hold no session). Where compiling the
        layers fails with ``decode_compile="auto"``, the plain layers from then on, with a warning."""
        try:
            self._forward(n_r)
        except Exception as exc:  # noqa: BLE001 - "auto": decode with the plain layers instead
            if self.compile_layers != "auto":
                raise
            import warnings
            warnings.warn(f"decode_compile: compiling the model's layers failed ({type(exc).__name__}: {exc}); "
                          "decoding with the plain layers", RuntimeWarning, stacklevel=3)
            self.compile_layers = False
            self.cursor.zero_()
            self._forward(n_r)

    # ------------------------------------------------------------------ sessions
    def plan(self, s: "Session") -> tuple[str, list[int], frozenset[int], int] | None:
        """The memory mode, the blocks each layer keeps, the layers that score every block again and
        the tokens that leave the window if the next decode step of ``s`` can run here; else None.
        Changes nothing.

        A step runs here when every layer either reranks candidates it holds or scores every block
        again: because they are spent or do not serve its share (``rescore_every``), or because
        tokens leave the window as a block this step (every layer then scores again, as the
        reference does once its memory has grown). Such a step runs eagerly, not as the graph
        (:meth:`_evict`, :meth:`_rescore`)."""
        if s.meter is not None or s.adapter.model is not self.adapter.model or graph_key(s.method) != graph_key(self.method):
            return None
        cfg, a = self.config, self.adapter
        mem0, n_loc = s.memory[0], self._n_local(s)
        policy, b = s.policy, self.bsz
        evict = 0
        if n_loc + 1 > policy.capacity:   # whole blocks leave the window this step (make_room's rule)
            if not policy.keep_blocks or policy.capacity != cfg.n_local:
                return None
            evict = -(-(n_loc + 1 - policy.capacity) // b) * b
        first_q = mem0.local_start + n_loc     # the token's position: the same after an eviction
        mode = s.method.positions
        if mode == "auto":
            mode = "exact" if first_q + 1 <= a.native_window else "fixed"
        for mem, st in zip(s.memory, s.retrieval):
            c = st.candidates
            if mem.n_local != mem0.n_local or mem.local_start != mem0.local_start or mem.n_sink != self.n_sink or not mem.n_blocks:
                return None
            if not evict and (c is None or c.n_blocks != mem.n_blocks or c.mode != mode or c.cand.shape[-1] > self.m_cap):
                return None
        budget = s.method.new_budget(a.memory_layers, s.retrieval)
        # a new scoring here picks n of fewer than every block and names at most m_cap candidates
        # (n <= hi < n_blocks); a budget that reads the step's own entropy would need it first
        may_rescore = not getattr(budget, "reads_step_entropy", True)
        takes, rescore = [], set()
        for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
            c = st.candidates
            n_blocks = mem.n_blocks + evict // b
            n = budget.blocks_for(0, layer, n_blocks, c.entropy if not evict and c.uses_left >= 1 else None)
            if n < 1:
                return None
            if evict or c.uses_left < 1 or not c.serves(n):
                if not may_rescore or n_blocks <= self.hi:
                    return None
                rescore.add(layer)
            takes.append(n)
        return mode, takes, frozenset(rescore), evict

    def _row_of(self, s: "Session") -> int | None:
        for i, loaded in enumerate(self.rows):
            if loaded is not None and loaded.session() is s:
                return i
        return None

    def loaded_for(self, s: "Session") -> _Loaded | None:
        """What a row holds of ``s`` (None if no row holds it)."""
        i = self._row_of(s)
        return None if i is None else self.rows[i]

    def _n_local(self, s: "Session") -> int:
        """``s``'s window length, counting the steps run here and not yet handed back."""
        loaded = self.loaded_for(s)
        return s.memory[0].n_local + (loaded.steps if loaded is not None else 0)

    def step(self, s: "Session", token: int) -> torch.Tensor | None:
        """Run one decode step of ``s`` for ``token`` here if it can; returns float32 logits ``[V]``,
        or None (the caller runs the reference step, which settles ``s`` first)."""
        return self.step_rows([(s, token)])[0]

    def step_rows(self, feed: list[tuple["Session", int] | None]) -> list[torch.Tensor | None]:
        """One decode step of several sessions at once, row ``i`` for ``feed[i]`` (a session and its
        token, or None: a row that sits this step out). Returns each row's float32 logits ``[V]``, or
        None where the static step does not apply (the caller runs the reference step for those;
        their state is already handed back). Sessions keep their row from step to step when the
        caller keeps their places in ``feed``; the graph is captured per ``len(feed)``."""
        with self._lock:
            return self._step_rows(feed)

    @torch.inference_mode()
    def _step_rows(self, feed: list[tuple["Session", int] | None]) -> list[torch.Tensor | None]:
        sessions = [f[0] for f in feed if f is not None]
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session may take one row of a decode step")
        plans = [None if f is None else self.plan(f[0]) for f in feed]
        if not any(p is not None for p in plans):
            return [None] * len(feed)
        n_r = len(feed)
        self._grow(n_r)
        self.track = any(f[0].track_sources for f, p in zip(feed, plans) if p is not None)
        if self.use_graph and (n_r, self.track) not in self.graphs:
            self._graph(n_r)  # captured before loading: capturing writes into the rows
        host = self._host[:n_r]
        host.zero_()
        idle = []
        self._rescoring = {}
        for i, (f, p) in enumerate(zip(feed, plans)):
            if p is None:  # sits out: its row computes nothing anyone reads, from slot 0
                self._release_row(i)
                idle.append(i)
                continue
            s, token = f
            mode, takes, rescore, evict = p
            held_before = self.rows[i]
            if evict:
                self._evict(s, i, evict, mode)
            loaded = self.rows[i]
            if (loaded is None or loaded.session() is not s or loaded.mode != mode
                    or any(h is not st.candidates for h, st in zip(loaded.held, s.retrieval))):
                self._release_row(i)
                s.settle()  # from another row, or another graph's
                # the row keeps the sinks it holds where it held this session in this mode
                same = held_before is not None and held_before.session() is s and held_before.mode == mode
                self._load(s, mode, i, rescore, sinks=not same)
            # the reference's bookkeeping of this step, on the host
            if s.record_kv:
                s.kv_log.append({})
            lk = self._n_local(s) + 1
            observe = {}   # layers that score again: whether that scoring's entropy is observed
            for layer, (st, n) in enumerate(zip(s.retrieval, takes)):
                held = st.take_candidates(s.memory[layer].n_blocks, mode)
                if held is not None:   # as the reference: taken candidates' entropy, even if they do not serve
                    st.observe_entropy(held.entropy)
                if layer in rescore:
                    observe[layer] = held is None
                    st.candidates = None
                s.note_kv(0, layer, self.n_sink + n * self.bsz + lk)
            if observe:
                self._rescoring[i] = (s, observe, takes)
                self.rescore_steps += 1
            host[i, 0] = token
            host[i, 1:-1] = torch.tensor(takes)
            host[i, -1] = s.memory[0].n_blocks
        for i in idle:
            self.cursor[i].zero_()
        if self._rescoring and self.static_scoring:
            self._scoring = self._static_setup()
        ins = host.to(self.device, non_blocking=True)
        self.ids[:n_r, 0].copy_(ins[:, 0])
        self.n_take[:n_r].copy_(ins[:, 1:-1])
        if self.use_graph and not self._rescoring:
            graph, logits = self.graphs[(n_r, self.track)]
            graph.replay()
        else:   # a layer scores every block again: between segments, or eagerly (the CPU)
            seg = self.segments.get((n_r, self.track)) if self.use_graph else None
            rows, sc = self._rescoring, self._scoring
            if sc is not None:   # the rows' block counts: only a static scoring reads them
                self.n_all[:n_r].copy_(ins[:, -1])
                torch.ge(sc.positions, self.n_all[:n_r, None], out=sc.hidden[:n_r])
            try:
                key = (n_r, self.track, tuple(rows))
                logits = self._replay_segments(seg, key) if seg is not None else self._forward(n_r)
            finally:
                self._rescoring, self._scoring = {}, None
            if sc is not None:
                self._hold_scored(sc, rows)
        out: list[torch.Tensor | None] = [None] * n_r
        for i, (f, p) in enumerate(zip(feed, plans)):
            if p is not None:
                self.rows[i].steps += 1
                self.replays += 1
                f[0].n_tokens += 1
                out[i] = logits[i].clone()
        return out

    def _evict(self, s: "Session", row: int, count: int, mode: str) -> None:
        """A step whose token does not fit in the window: its oldest ``count`` tokens leave as blocks
        in every layer. Where row ``row`` holds ``s`` and loaded those tokens from ``s``'s window
        (the usual case: a row is loaded at an eviction with the window one block short of full), they
        leave from the session's window (``LayerMemory.leave_as_blocks``) and the row moves its
        window down for every layer at once (:meth:`_shift_window`), keeping the tokens of the
        steps since; the layers then score again (:meth:`_rescore`). Otherwise the row hands ``s``
        its state back, the reference's rule evicts (``LayerMemory.make_room``) and the caller
        loads the row again from the shorter window."""
        loaded = self.rows[row]
        if loaded is not None and loaded.session() is s and loaded.n_local >= count:
            n = self._n_local(s)
            # every layer's leaving tokens, as the session's windows hold them (the row's first ones;
            # views: read before the row's window moves down)
            leaving = self.win_k[:, row, :, :count]
            n_before, own_before = s.memory[0].n_blocks, own_count(s) if self.own is not None else None
            leaving_v = self.values[:, row, :, self.w0:self.w0 + count]
            if not leave_together(s.memory, count, s.policy, leaving, leaving_v):
                for mem in s.memory:
                    mem.leave_as_blocks(count, s.policy)
            bounds = self._bound_left_blocks(s, mode, leaving, n_before)
            if self.own is not None:   # the row's copy of the session's own blocks keeps up
                if bounds is None:
                    self.own.holds[row] = None
                else:
                    self.own.append(s, row, own_before, leaving, leaving_v, *bounds)
            self._shift_window(row, n, count)
            loaded.n_local -= count
            self.row_evictions += 1
            return
        self._release_row(row)
        s.settle()
        for mem in s.memory:
            mem.make_room(1, s.policy)

    def _bound_left_blocks(self, s: "Session", mode: str, leaving: torch.Tensor,
                           n_before: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The key bounds of the blocks that just left every layer's window (``leaving``: every layer's
        keys ``[L, Hkv, n*B, d]``, blocks ``n_before ..``), measured for all layers at once as each
        layer's scorer would measure them one layer at a time (:func:`measure_bounds`: the stored keys,
        at their true positions in ``exact`` mode, rounded outward to bf16; the same operations, so
        the same bits), and handed to the layers' digests (``BlockDigests.extend``). Skipped where
        the blocks are not on the device as plain keys (offloaded or quantized stores: the stored
        keys are what counts) or a layer's digests are behind; the scorer measures them then.
        Returns the bounds ``[L, n, Hkv, d]`` where every layer took them, else None."""
        parts = [mem.blocks.device_parts(self.device) for mem in s.memory]
        if any(p is None for p in parts) or len({p[-1][0].dtype for p in parts}) != 1 \
                or any(mem.n_blocks != s.memory[0].n_blocks for mem in s.memory):
            return None
        digests = [mem.digests["bounds", mode] for mem in s.memory]
        if any(d.n_parent + d.n_known != n_before for d in digests):
            return None
        b = self.bsz
        k = leaving.to(parts[0][-1][0].dtype)                              # [L, Hkv, n*B, d], as stored
        n_new = k.shape[2] // b
        if mode == "exact":   # the scorer's rotation (blocks_at_true_positions), every layer's heads as rows
            ids = torch.arange(n_before, n_before + n_new, device=self.device)
            placed = torch.empty(k.shape, dtype=torch.float32, device=self.device)
            for rope_type, layers in self.rope_layers:
                cos, sin = self.tables[rope_type]
                part = k[layers]
                placed[layers] = blocks_at_true_positions(part.flatten(0, 1), ids, cos, sin, self.n_sink).view(part.shape)
        else:
            placed = k.float()
        lo, hi = key_bounds(placed.view(*k.shape[:2], n_new, b, k.shape[-1]))      # [L, Hkv, n, d]
        lo, hi = outward_bf16(lo.transpose(1, 2).contiguous(), hi.transpose(1, 2).contiguous())
        took = [d.extend(n_before, lo[i], hi[i]) for i, d in enumerate(digests)]
        return (lo, hi) if all(took) else None

    def _shift_window(self, r: int, n: int, count: int) -> None:
        """Row ``r``'s window of ``n`` tokens after its first ``count`` left, in every layer at once:
        the unrotated keys, values and kept queries moved down by ``count`` slots, the keys placed
        again at their new slots, the freed slots invisible, the cursor moved back."""
        w0, keep = self.w0, n - count
        self.win_k[:, r, :, :keep] = self.win_k[:, r, :, count:n].clone()
        self.values[:, r, :, w0:w0 + keep] = self.values[:, r, :, w0 + count:w0 + n].clone()
        if self.queries is not None:
            self.queries[:, r, :keep] = self.queries[:, r, count:n].clone()
        self._place_window_keys(r, keep)
        self.visible[:, r, w0 + keep:w0 + n] = False
        self.cursor[r, 0] -= count

    def _place_window_keys(self, r: int, n: int) -> None:
        """Row ``r``'s first ``n`` window keys, every layer, rotated at their slots from the unrotated
        ones in ``win_k`` (as attention reads them)."""
        w0 = self.w0
        for rope_type, layers in self.rope_layers:
            cos, sin = self.tables[rope_type]
            self.keys[layers, r, :, w0:w0 + n] = rotate(self.win_k[layers, r, :, :n], cos[:n], sin[:n]).to(self.dtype)

    def _load(self, s: "Session", mode: str, row: int, rescore: frozenset[int] = frozenset(),
              sinks: bool = True) -> None:
        """Fill row ``row`` of the buffers from ``s``: windows, sinks (placed for ``mode``; ``sinks``
        False: the row holds them already, from ``s`` in this mode), held candidates (not for the
        layers in ``rescore``, which score every block again this step)."""
        n_loc, ns, c0, w0, r = s.memory[0].n_local, self.n_sink, self.c0, self.w0, row
        if sinks:
            for layer, mem in enumerate(s.memory):
                keys, visible = self.keys[layer, r], self.visible[layer, r]
                rope_type = self.adapter.kinds[layer].rope_type
                keys[:, :ns] = sinks_at_true_positions(self.adapter, rope_type, mem) if mode == "exact" else mem.sink_k
                self.values[layer, r, :, :ns] = mem.sink_v
                visible.zero_()
                visible[:ns] = True
        else:
            self.visible[:, r, c0:].zero_()
        # the windows of every layer at once: unrotated, rotated at their slots, values
        self.win_k[:, r, :, :n_loc] = torch.stack([mem.local_k for mem in s.memory])   # [L, Hkv, n_loc, d]
        self._place_window_keys(r, n_loc)
        self.values[:, r, :, w0:w0 + n_loc] = torch.stack([mem.local_v for mem in s.memory])
        self.visible[:, r, w0:w0 + n_loc] = True
        for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
            if layer not in rescore:   # the others' slots are filled by this step's scoring (_rescore)
                self._load_candidates(layer, r, mem, st.candidates, s.method.keep_edges)
        self.mass[:, r].zero_()
        self.picks[:, r].zero_()
        self.cursor[r, 0] = n_loc
        self.cursor[r, 1] = s.memory[0].local_start + n_loc
        self.exact[r] = mode == "exact"
        self.rows[r] = _Loaded(weakref.ref(s), [st.candidates for st in s.retrieval], mode, n_loc)
        s.pending = self

    def _load_candidates(self, layer: int, r: int, mem, held, keep_edges: bool,
                         cand_v: torch.Tensor | None = None) -> None:
        """Row ``r``'s candidate slots at ``layer`` from ``held``: keys as attention reads them, values
        (``cand_v``, else read from the memory), which slots and candidates are filled, which are
        edge blocks."""
        m, n = held.cand.shape[-1], held.cand.shape[-1] * self.bsz
        k = None
        if cand_v is None and held.known is None:   # a question that kept no keys: both in one read
            k, cand_v = self._read_candidates(layer, r, mem, held.mode == "exact", held.cand) or (None, None)
        if cand_v is None:
            ids = held.cand[0] if held.cand.shape[0] == 1 else held.cand
            _, cand_v = mem.blocks.gather(ids, self.device, keys=False)
        keys, values, visible, ok, edge = self._slots[layer][r]
        if k is None:
            k = held.keys
        if k.data_ptr() != keys.data_ptr():   # else read into the slots already (_rescore)
            keys[:, :n] = k
        if cand_v.data_ptr() != values.data_ptr():
            values[:, :n] = cand_v
        held.drop_keys()   # the row holds them now
        slots_filled, cands_filled, ends = self._filled_masks(m)
        visible.copy_(slots_filled)
        ok.copy_(cands_filled)
        # with keep_edges the candidates hold the first and the last block, ascending (pin_edges, then
        # _candidate_ids' sort): the edge blocks are the first and the m-th candidate of every row
        if keep_edges:
            edge.copy_(ends)
        else:
            edge.zero_()

    def _filled_masks(self, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Which candidate slots (``[m_cap * block_size]``) and candidates (``[m_cap]``) ``m`` candidates
        fill: the first ones; and which of them are the edge blocks where the edges are pinned
        (``[m_cap]``: the first and the m-th). Made once per ``m``, copied in one call each."""
        if m not in self._filled:
            at = torch.arange(self.m_cap, device=self.device)
            self._filled[m] = (torch.arange(self.m_cap * self.bsz, device=self.device) < m * self.bsz,
                               at < m, (at == 0) | (at == m - 1))
        return self._filled[m]

    def _rescore(self, layer: int, q: torch.Tensor, scaling: float) -> None:
        """Score every block of ``layer`` again for the rows whose held candidates are spent (or do not
        serve the step's share): the reference's scoring for that row (:meth:`BlockRetrieval.rescore`:
        probe, evidence, candidates, and their keys and values in one read where the blocks are on
        the device, :func:`candidate_reads`), the new candidates loaded into the row's slots; the
        rerank and attention that follow are the static step's own. The activation statistics stay
        in the buffers until the session settles: a decode step's probe has one query token, whose
        weight is 1 whatever they hold. Runs eagerly (the graph holds no scoring): at a step where
        the candidates are spent, or after a block left the window (:meth:`_evict`)."""
        kind = self.adapter.kinds[layer]
        for r, (s, observe, takes) in self._rescoring.items():
            if layer not in observe:
                continue

            def read(mem, mq, cand, r=r):
                return self._read_candidates(layer, r, mem, mq.mode == "exact", cand)
            loaded = self.rows[r]
            mem, st = s.memory[layer], s.retrieval[layer]
            if s.track_sources and loaded.steps:   # a row loaded this step has nothing to hand over yet
                self._tally(s, r, layer, loaded.held[layer])
            mq = StepContext(s, DECODE).memory_query(kind, mem, self._n_local(s), 1, scaling)
            held, cand_v = s.method.rescore(q[r], mem, st, mq, takes[layer], observe[layer], read)
            loaded.held[layer] = held
            self._load_candidates(layer, r, mem, held, s.method.keep_edges, cand_v)
            self.rescores += 1

    def _static_setup(self) -> DocumentScoring | None:
        """The static scoring for this step's rows that score again (:attr:`_rescoring`), where it
        applies: each of them scores again in every layer (the other rows of the step keep their
        candidates: an ``answer_many`` whose rows' windows fill at different steps), at one positions
        mode, over one document whose blocks and bounds sit on the device, with every scoring naming
        ``m_cap`` candidates, and each holds its session's own blocks (:class:`RowOwnBlocks`, brought
        up to date here). Also hands each scoring row's source tally over, as :meth:`_rescore` does at
        each cut. None: the reference's scoring runs at the cuts, as before."""
        rows, n_layers = self._rescoring, self.adapter.n_layers
        if any(len(observe) != n_layers for _, observe, _ in rows.values()):
            return None
        modes = {self.rows[r].mode for r in rows}
        sessions = [rows[r][0] for r in rows]
        if len(modes) != 1 or any(s.memory[0].n_blocks < self.m_cap for s in sessions):
            return None
        mode = modes.pop()
        found = [DocumentScoring.key_for(s, mode, self.device) for s in sessions]
        if any(f is None or f[0] != found[0][0] for f in found):
            return None
        for r, (s, _, _) in rows.items():
            ctx, n_loc = StepContext(s, DECODE), self._n_local(s)

            def rotate_for(layer: int, s=s, ctx=ctx, n_loc=n_loc):
                return ctx.memory_query(self.adapter.kinds[layer], s.memory[layer], n_loc, 1, 1.0).rotate_blocks

            def measure_all(keys: torch.Tensor, n_before: int, s=s):
                return self._bound_left_blocks(s, mode, keys, n_before)
            if not self.own.sync(s, r, mode, rotate_for, measure_all):
                return None
        key, blocks, bounds = found[0]
        sc = self.scorings.get(key)
        if sc is None:
            while len(self.scorings) >= 2:   # the oldest document's buffers and graphs go
                self.scorings.pop(next(iter(self.scorings)))
            sc = self.scorings[key] = DocumentScoring.make(key, blocks, bounds, self)
        for r, (s, observe, _) in rows.items():
            loaded = self.rows[r]
            if s.track_sources and loaded.steps:   # a row loaded this step has nothing to hand over yet
                for layer in observe:
                    self._tally(s, r, layer, loaded.held[layer])
        return sc

    def _hold_scored(self, sc: DocumentScoring, rows: dict) -> None:
        """After a step that scored again with static shapes: each row's layers hold the candidates
        it named (``BlockRetrieval.hold_scored``), as :meth:`_rescore` leaves them."""
        for r, (s, observe, takes) in rows.items():
            loaded = self.rows[r]
            ctx, n_loc, n = StepContext(s, DECODE), self._n_local(s), s.memory[0].n_blocks
            # one copy per row of what the next step's scoring overwrites; each layer holds a view
            cand, evidence, entropy = sc.cand[:, r].clone(), sc.evidence[:, r, :, :n].clone(), sc.entropy[:, r].clone()
            for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
                mq = ctx.memory_query(self.adapter.kinds[layer], mem, n_loc, 1, 1.0)
                loaded.held[layer] = s.method.hold_scored(mem, st, mq, cand[layer], evidence[layer],
                                                          entropy[layer], takes[layer], observe[layer])
                self.rescores += 1
            self.static_scored += 1

    def _read_candidates(self, layer: int, r: int, mem, exact: bool,
                         cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys (placed as attention reads them: at their true positions where ``exact``) and values of
        ``layer``'s candidate blocks ``cand`` ``[rows, m]`` in one read where the blocks are on the
        device: one kernel straight into row ``r``'s slots (``gather_kernel``; the slots' views come
        back), else :func:`candidate_reads`. None where they are in host memory or on disk (the
        memory's own reads then)."""
        parts = mem.blocks.device_parts(self.device)
        if parts is None:
            return None
        rope_type = self.adapter.kinds[layer].rope_type
        if self.gather_kernel and len(parts) <= 2:
            keys, values = self._slots[layer][r][:2]
            n = cand.shape[-1] * self.bsz
            k_out, v_out = keys[None, :, :n], values[None, :, :n]
            gather_parts_triton(parts, cand, self.tables[rope_type] if exact else None, self.n_sink, k_out, v_out)
            return k_out[0], v_out[0]
        return candidate_reads(cand, parts, self.block_tables[rope_type] if exact else None, mem.dtype)

    def _tally(self, s: "Session", r: int, layer: int, held) -> None:
        """Add what row ``r``'s steps gave ``held``'s candidates at ``layer`` (picks, mass) to ``s``'s
        source tally, and count anew."""
        m, n_blocks = held.cand.shape[-1], s.memory[layer].n_blocks
        ids = held.cand.expand(self.sel_rows, m).flatten()
        s.tally.add_counts(ids, self.picks[layer, r, :, :m].flatten(), n_blocks)
        s.tally.add_mass(ids, self.mass[layer, r, :, :m].flatten(), n_blocks)
        self.picks[layer, r].zero_()
        self.mass[layer, r].zero_()

    def settle(self, s: "Session") -> None:
        """Hand the state of the steps run here back to ``s`` (its windows, activation statistics and
        source tally), so that the reference path can continue it."""
        with self._lock:
            self._settle(s)

    @torch.inference_mode()
    def _settle(self, s: "Session") -> None:
        r = self._row_of(s)
        if r is None:
            return
        loaded, self.rows[r] = self.rows[r], None
        k, a, w0 = loaded.steps, loaded.n_local, self.w0
        if not k:
            return
        for layer, (mem, st) in enumerate(zip(s.memory, s.retrieval)):
            mem.local_k = self.win_k[layer, r, :, :a + k].clone()
            mem.local_v = self.values[layer, r, :, w0:w0 + a + k].clone()
            mem.local_score = torch.cat([mem.local_score, mem.local_score.new_zeros((self.hkv, k))], 1)
            if self.queries is not None and st.stats is not None:
                st.stats.update(self.queries[layer, r, a:a + k])
            if s.track_sources:
                self._tally(s, r, layer, loaded.held[layer])

    def _release_row(self, r: int) -> None:
        """Hand row ``r``'s session its state back (if it still lives); the row holds nothing after."""
        loaded = self.rows[r]
        s = None if loaded is None else loaded.session()
        if s is not None:
            if s.pending is self:
                s.pending = None
            self._settle(s)
        self.rows[r] = None

    def release(self) -> None:
        """Hand every row's session its state back."""
        with self._lock:
            for r in range(self.n_rows):
                self._release_row(r)


def graph_key(method) -> tuple:
    """What the buffers and the captured step depend on in a method and its options: sessions and
    engines with equal keys can share one :class:`DecodeGraph` (a question's session runs the asking
    engine's method object, which may be another engine's than the document's prefilling one)."""
    c = method.config
    return (graph_capable(method, None), method.per_head, method.rerank, method.keep_edges,
            method.tracks_activations, method.positions, c.block_range, c.avg_blocks,
            c.n_local, c.n_sink, c.block_size)


def _capped(s: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(s / softcap) * softcap if softcap else s


__all__ = ["DecodeGraph", "graph_capable", "graph_key", "DECODE"]
