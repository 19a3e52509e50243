"""Session: the live state of one pass over tokens (a document's prefill, or one question on it).

It owns one :class:`LayerMemory` and one retrieval state per layer, runs tokens through the
model in chunks, and collects what the answer attended to (provenance) and how much KV each
step touched (the budget check).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .attention.step import DOCUMENT, StepContext
from .config import RetrievalConfig
from .memory import GrowableBlocks, HostBlocks, LayerMemory
from .memory.layer_memory import EvictionPolicy
from .models.adapter import ModelAdapter
from .retrieval.methods import LayerRetrievalState, RetrievalMethod


class Session:
    def __init__(self, adapter: ModelAdapter, config: RetrievalConfig, method: RetrievalMethod,
                 memory: list[LayerMemory], retrieval: list[LayerRetrievalState], n_tokens: int = 0):
        self.adapter, self.config, self.method = adapter, config, method
        self.memory, self.retrieval = memory, retrieval
        self.n_tokens = n_tokens
        self.policy = EvictionPolicy(
            capacity=config.n_local if method.bounded else None,
            n_sink=config.n_sink if method.bounded else 0,
            block_size=config.block_size, keep_blocks=method.uses_memory, repr_topk=config.repr_topk)
        self.track_sources = False
        self.record_kv = False
        self.kv_log: list[dict[tuple[int, int], int]] = []   # per forward pass: (slot, layer) -> KV attended
        self.attention_mass: dict[int, float] = defaultdict(float)   # block -> mass, over the answer
        self.retrieved: dict[int, int] = defaultdict(int)            # block -> times picked

    @classmethod
    def new(cls, adapter: ModelAdapter, config: RetrievalConfig, method: RetrievalMethod,
            offload: bool = False) -> "Session":
        dev, dt = adapter.device, adapter.dtype
        memory = []
        for _ in range(adapter.n_layers):
            blocks = None
            if offload:
                host = GrowableBlocks(adapter.n_kv_heads, config.block_size, adapter.head_dim, dt, "cpu")
                blocks = HostBlocks(host, dev, config.device_cache_blocks)
            memory.append(LayerMemory(adapter.n_kv_heads, adapter.head_dim, dt, dev, config.block_size, blocks=blocks))
        feats = adapter.n_heads * adapter.head_dim
        retrieval = [method.new_layer_state(feats, dev) for _ in range(adapter.n_layers)]
        return cls(adapter, config, method, memory, retrieval)

    def fork(self) -> "Session":
        """An independent session starting from this one's state; this one is never modified by it."""
        return Session(self.adapter, self.config, self.method, [m.fork() for m in self.memory],
                       [r.fork() for r in self.retrieval], self.n_tokens)

    # ------------------------------------------------------------------ running tokens
    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, phase: str = DOCUMENT, progress=None,
                chunk: int | None = None) -> torch.Tensor:
        """Run token ids ``[T]`` through the model; returns float32 logits ``[V]`` of the last one."""
        if ids.numel() == 0:
            raise ValueError("no tokens to run")
        ids = ids.to(self.adapter.device)
        chunk = chunk or self.config.prefill_chunk
        hidden = None
        for a in range(0, ids.numel(), chunk):
            piece = ids[a:a + chunk]
            ctx = StepContext(self, phase)
            if self.record_kv:
                self.kv_log.append({})
            hidden = self.adapter.embed(piece[None])
            for i in range(self.adapter.n_layers):
                hidden = self.adapter.run_layer(i, hidden, actqkv=ctx)
            self.n_tokens += piece.numel()
            if progress is not None:
                progress.update(piece.numel())
        return self.adapter.logits(hidden[:, -1:])[0]

    # ------------------------------------------------------------------ bookkeeping hooks
    def note_kv(self, slot: int, layer: int, n: int) -> None:
        if self.record_kv:
            self.kv_log[-1][(slot, layer)] = n

    def note_retrieval(self, layer: int, picked: torch.Tensor, scores: torch.Tensor) -> None:
        if self.track_sources:
            for b in picked.tolist():
                self.retrieved[b] += 1

    def note_attention(self, picked: torch.Tensor, mass: torch.Tensor) -> None:
        if self.track_sources:
            for b, m in zip(picked.tolist(), mass.tolist()):
                self.attention_mass[b] += m
