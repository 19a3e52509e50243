"""Session: the live state of one pass over tokens (a document's prefill, or one question on it).

It owns one :class:`LayerMemory` and one retrieval state per layer, runs tokens through the
model in chunks, and collects what the answer attended to (provenance) and how much KV each
step touched (the budget check).
"""

from __future__ import annotations

import threading

import torch

from .attention.block_gather import BlockGather
from .attention.rotation import Rotation
from .attention.question_rows import QuestionRows
from .attention.step import DOCUMENT, QUESTION, RowSteps, StepContext
from .config import RetrievalConfig
from .memory import HostBlocks, LayerMemory
from .memory.layer_memory import EvictionPolicy, fork_layers
from .models.adapter import ModelAdapter
from .retrieval.methods import LayerRetrievalState, RetrievalMethod, entropy_means


class Session:
    def __init__(self, adapter: ModelAdapter, config: RetrievalConfig, method: RetrievalMethod,
                 memory: list[LayerMemory], retrieval: list[LayerRetrievalState], n_tokens: int = 0):
        self.adapter, self.config, self.method = adapter, config, method
        self.memory, self.retrieval = memory, retrieval
        self.n_tokens = n_tokens
        self.policy = EvictionPolicy(
            capacity=config.n_local if method.bounded else None,
            n_sink=config.n_sink if method.bounded else 0,
            block_size=config.block_size, keep_blocks=method.uses_memory, repr_topk=config.repr_topk,
            keep_summaries=method.uses_summaries)
        self.track_sources = False
        self.record_kv = False
        self.kv_log: list[dict[tuple[int, int], int]] = []   # per forward pass: (slot, layer) -> KV attended
        self.tally = SourceTally()   # per block: attention mass and times picked, over the answer
        self.meter = None            # a RecallMeter (bench recall): what selection recalls against full attention
        # decode steps run elsewhere (attention/static_decode.py) whose state is not handed back yet
        self.pending = None
        self._fork_lock = threading.Lock()
        # whether a question's rerank candidates keep the keys it read for the decode steps after it
        # (False where the static decode step reads them into its own buffers: read again there)
        self.keep_candidate_keys = True
        # what fills a batched prefill chunk's block buffers (attention/chunk.py; ``prefill_kernel``)
        self.block_gather = BlockGather(config.prefill_kernel)
        # what rotates a step's queries and a chunk's window keys at their positions (``prefill_kernel``)
        self.rotation = Rotation(config.prefill_kernel)

    def settle(self) -> None:
        """Take back the state of decode steps that ran outside :meth:`forward` (the static decode
        step keeps windows, statistics and the source tally in its own buffers until asked)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.settle(self)

    @classmethod
    def new(cls, adapter: ModelAdapter, config: RetrievalConfig, method: RetrievalMethod,
            offload: bool = False) -> "Session":
        dev, dt = adapter.device, adapter.dtype
        memory = []
        for _ in range(adapter.n_layers):
            blocks = None
            if offload:
                blocks = HostBlocks.new(config.host_kv_dtype, adapter.n_kv_heads, config.block_size,
                                        adapter.head_dim, dt, dev, config.device_cache_blocks)
            memory.append(LayerMemory(adapter.n_kv_heads, adapter.head_dim, dt, dev, config.block_size, blocks=blocks))
        feats = adapter.n_heads * adapter.head_dim
        retrieval = [method.new_layer_state(feats, dev) for _ in range(adapter.n_layers)]
        return cls(adapter, config, method, memory, retrieval)

    def fork(self, config: RetrievalConfig | None = None, method: RetrievalMethod | None = None) -> "Session":
        """An independent session starting from this one's state; this one is never modified by it
        (beyond reading its unread entropies into their totals, the same state read on the host).
        ``config`` and ``method``: the asking engine's, when they differ from this session's only in
        options its stored KV does not depend on (the caller checks ``kv_options``)."""
        # one fork at a time: a document answers questions from several threads (LangChain's batch,
        # a server), and the first forks of a fresh document read its unread entropies into their totals
        with self._fork_lock:
            self.settle()
            entropy_means(self.retrieval)   # every layer's unread entropies in one read (each fork would read its own)
            return Session(self.adapter, config or self.config, method or self.method, fork_layers(self.memory),
                           [r.fork() for r in self.retrieval], self.n_tokens)

    # ------------------------------------------------------------------ running tokens
    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, phase: str = DOCUMENT, progress=None,
                chunk: int | None = None) -> torch.Tensor:
        """Run token ids ``[T]`` through the model; returns float32 logits ``[V]`` of the last one."""
        if ids.numel() == 0:
            raise ValueError("no tokens to run")
        self.settle()
        ids = ids.to(self.adapter.device)
        chunk = chunk or self.config.prefill_chunk_on(self.adapter.device)
        if phase == DOCUMENT and self.method.uses_memory and self.policy.keep_blocks:
            # no more blocks than the document's tokens fill: the store allocated once
            most = -(-(self.n_tokens + ids.numel()) // self.config.block_size)
            for mem, kind in zip(self.memory, self.adapter.kinds):
                if kind.memory and kind.window is None:
                    mem.blocks.reserve(most)
        hidden = None
        for a in range(0, ids.numel(), chunk):
            piece = ids[a:a + chunk]
            ctx = StepContext(self, phase)
            if self.record_kv:
                self.kv_log.append({})
            hidden = self.adapter.embed(piece[None])
            n_layers, n = self.adapter.n_layers, piece.numel()
            for i in range(n_layers):
                hidden = self.adapter.run_layer(i, hidden, actqkv=ctx)
                if progress is not None:  # a piece's tokens, spread over its layers: the bar moves
                    # every chunk / layers tokens, and the chunking (which the result depends on
                    # through the batched prefill's rounding) stays the same with or without a bar
                    progress.update((i + 1) * n // n_layers - i * n // n_layers)
            self.n_tokens += n
        return self.adapter.last_logits(hidden)[0]

    # ------------------------------------------------------------------ bookkeeping hooks
    def note_kv(self, slot: int, layer: int, n: int) -> None:
        if self.record_kv:
            self.kv_log[-1][(slot, layer)] = n

    def note_retrieval(self, layer: int, picked: torch.Tensor, n_blocks: int) -> None:
        if self.track_sources:
            self.tally.add_picked(picked.flatten(), n_blocks)

    def note_attention(self, picked: torch.Tensor, mass: torch.Tensor, n_blocks: int) -> None:
        if self.track_sources:
            self.tally.add_mass(picked, mass, n_blocks)

    @property
    def attention_mass(self) -> dict[int, float]:
        """Block -> attention mass received over the answer (read from the device once)."""
        self.settle()
        return self.tally.mass_by_block()

    @property
    def retrieved(self) -> dict[int, int]:
        """Block -> how many (layer, step) retrievals picked it."""
        self.settle()
        return self.tally.picks_by_block()


@torch.inference_mode()
def forward_rows(sessions: list[Session], ids: torch.Tensor, phase: str) -> torch.Tensor:
    """Run one token per session (``ids [B]``) through the model as one batch: each layer's dense
    parts see all rows at once, its attention runs row by row over each session's own memory.
    Returns float32 logits ``[B, V]``. The sessions must share one model; each advances one token."""
    if len(sessions) != ids.numel() or not sessions:
        raise ValueError(f"{len(sessions)} sessions for {ids.numel()} tokens")
    adapter = _one_model(sessions)
    for s in sessions:
        s.settle()
    rows = RowSteps([StepContext(s, phase) for s in sessions])
    for s in sessions:
        if s.record_kv:
            s.kv_log.append({})
    hidden = adapter.embed(ids.to(adapter.device)[:, None])
    for i in range(adapter.n_layers):
        hidden = adapter.run_layer(i, hidden, actqkv=rows)
    for s in sessions:
        s.n_tokens += 1
    return adapter.last_logits(hidden)


@torch.inference_mode()
def read_questions(sessions: list[Session], questions: list[torch.Tensor], pad_rows: int = 1,
                   pad_tokens: int = 1) -> torch.Tensor:
    """Read one question per session (``questions[e]``, token ids ``[T_e]``) as rows of one batch:
    each layer's dense parts see every row at once, padded to the longest, and its attention with
    retrieval runs as one batch where the rows' memories are one (sessions forked from one
    document, attention/question_rows.py), else row by row. Returns float32 logits ``[E, V]`` of
    each question's last token: what ``sessions[e].forward(questions[e], QUESTION)`` gives, up to
    float rounding. A question longer than one execution block makes every session read its own.

    ``pad_rows``, ``pad_tokens``: the batch runs on at least ``pad_rows`` rows and on a multiple of
    ``pad_tokens`` positions, the padding computed and dropped. Questions whose lengths round up to
    the same multiple, read alone or up to ``pad_rows`` together, then get the same bits (the
    engine pads where its answers decode through the static decode step, as that step pads its rows:
    ``decode_pad_rows``). With neither, one session reads its question itself."""
    if len(sessions) != len(questions) or not sessions:
        raise ValueError(f"{len(sessions)} sessions for {len(questions)} questions")
    adapter = _one_model(sessions)
    lengths = [q.numel() for q in questions]
    if min(lengths) == 0:
        raise ValueError("no tokens to run")
    size = -(-max(lengths) // pad_tokens) * pad_tokens
    if (len(sessions) == 1 and pad_rows <= 1) or size > min(s.config.exec_block for s in sessions):
        return torch.stack([s.forward(q, phase=QUESTION) for s, q in zip(sessions, questions)])
    for s in sessions:
        s.settle()
        if s.record_kv:
            s.kv_log.append({})
    rows = QuestionRows([StepContext(s, QUESTION) for s in sessions], lengths, pad_rows)
    filled = [torch.cat([q, q[-1:].expand(size - q.numel())]) for q in questions]
    ids = torch.stack(filled + filled[:1] * (rows.n_rows - len(filled))).to(adapter.device)
    hidden = adapter.embed(ids)
    for i in range(adapter.n_layers):
        hidden = adapter.run_layer(i, hidden, actqkv=rows)
    for s, t in zip(sessions, lengths):
        s.n_tokens += t
    # every row's last token, the padding rows' too: the head's product has one shape however many
    # questions there are
    last = torch.tensor(lengths + lengths[:1] * (rows.n_rows - len(lengths)), device=hidden.device) - 1
    return adapter.last_logits(hidden[torch.arange(rows.n_rows, device=hidden.device), last][:, None])[:len(lengths)]


def _one_model(sessions: list[Session]) -> ModelAdapter:
    """The model every session of one batch runs on (an error where they differ)."""
    adapter = sessions[0].adapter
    if any(s.adapter is not adapter for s in sessions):
        raise ValueError("the sessions of one batch must run on the same model")
    return adapter


class SourceTally:
    """Per-block counters kept on the compute device, so tracking sources never waits for it.

    Indices are block numbers; the counters grow to the number of blocks the caller reports.
    """

    def __init__(self) -> None:
        self.mass: torch.Tensor | None = None
        self.picks: torch.Tensor | None = None

    @staticmethod
    def _fit(t: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        if t is None:
            return torch.zeros(max(n, 1), dtype=torch.float32, device=like.device)
        if t.numel() < n:
            return torch.cat([t, t.new_zeros(max(n, 2 * t.numel()) - t.numel())])
        return t

    def add_picked(self, picked: torch.Tensor, n_blocks: int) -> None:
        self.add_counts(picked, torch.ones_like(picked, dtype=torch.float32), n_blocks)

    def add_counts(self, blocks: torch.Tensor, counts: torch.Tensor, n_blocks: int) -> None:
        """Add ``counts`` picks of ``blocks`` at once (several steps' picks, gathered elsewhere)."""
        self.picks = self._fit(self.picks, n_blocks, blocks)
        self.picks.index_add_(0, blocks, counts.float())

    def add_mass(self, picked: torch.Tensor, mass: torch.Tensor, n_blocks: int) -> None:
        self.mass = self._fit(self.mass, n_blocks, picked)
        self.mass.index_add_(0, picked, mass.float())

    @staticmethod
    def _nonzero(t: torch.Tensor | None) -> dict[int, float]:
        if t is None:
            return {}
        return {i: v for i, v in enumerate(t.tolist()) if v}

    def mass_by_block(self) -> dict[int, float]:
        return self._nonzero(self.mass)

    def picks_by_block(self) -> dict[int, int]:
        return {b: int(v) for b, v in self._nonzero(self.picks).items()}
