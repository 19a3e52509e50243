"""The four methods as small interchangeable objects over one engine.

Each is a choice of probe, score and budget (kvpress-style: one concept, one small class). The
engine asks a method three things: does this layer keep memory, how to build a probe, how to
score blocks, and how to share the block budget across layers in a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import RetrievalConfig
from ..memory.summaries import SummaryKeys
from .budget import DynamicCutoff, FixedTopK
from .probe import ActivationStats, activation_probe, mean_probe
from .score import cosine_scores, dot_scores


@dataclass
class LayerRetrievalState:
    """Per-layer retrieval state of one document (forked per question, never shared across documents)."""

    stats: ActivationStats | None = None
    entropy_total: torch.Tensor | float = 0.0  # sum of observed normalized entropies (stays on the device)
    entropy_count: int = 0
    question: torch.Tensor | None = None  # [Hkv, d] summary of the question's queries
    question_weight: float = 0.0          # how many question tokens it averages

    def observe_entropy(self, h: torch.Tensor | float) -> None:
        """Add one step's normalized entropy; no host sync (read back once per pass, see :func:`entropy_means`)."""
        self.entropy_total = self.entropy_total + h
        self.entropy_count += 1

    @property
    def entropy_mean(self) -> float:
        """Running mean of the normalized entropy (1.0, "spread out", before any observation)."""
        return float(self.entropy_total) / self.entropy_count if self.entropy_count else 1.0

    def add_question(self, probe: torch.Tensor, n_tokens: int) -> None:
        total = self.question_weight + n_tokens
        self.question = probe if self.question is None else \
            self.question + (probe - self.question) * (n_tokens / total)
        self.question_weight = total

    def fork(self) -> "LayerRetrievalState":
        return LayerRetrievalState(None if self.stats is None else self.stats.clone(), self.entropy_total,
                                   self.entropy_count, self.question, self.question_weight)


def entropy_means(states: list[LayerRetrievalState]) -> list[float]:
    """Every layer's running mean entropy, read from the device in one transfer (one sync per pass)."""
    totals: list = [st.entropy_total for st in states]
    on_device = [i for i, t in enumerate(totals) if isinstance(t, torch.Tensor)]
    if on_device:
        for i, v in zip(on_device, torch.stack([totals[i].float() for i in on_device]).tolist()):
            totals[i] = v
    return [t / st.entropy_count if st.entropy_count else 1.0 for t, st in zip(totals, states)]


class RetrievalMethod:
    name = "base"
    uses_memory = False   # evicted blocks are kept and retrieved
    bounded = True        # the local window has a fixed size
    tracks_activations = False

    def __init__(self, config: RetrievalConfig):
        self.config = config

    def new_layer_state(self, n_features: int, device: torch.device) -> LayerRetrievalState:
        return LayerRetrievalState(ActivationStats(n_features, device) if self.tracks_activations else None)

    def observe(self, q: torch.Tensor, state: LayerRetrievalState) -> None:
        """See every execution block's queries ``[H, T, d]`` of a memory layer (before any probe)."""

    def probe(self, q: torch.Tensor, kv_heads: int, state: LayerRetrievalState) -> torch.Tensor:
        raise NotImplementedError

    def score(self, probe: torch.Tensor, summaries: SummaryKeys, state: LayerRetrievalState) -> torch.Tensor:
        """Scores ``[n_blocks]`` of every block's summary against the probe."""
        raise NotImplementedError

    def new_budget(self, memory_layers: list[int], states: list[LayerRetrievalState]):
        raise NotImplementedError


class Full(RetrievalMethod):
    """Every token stays in the window at its true position: plain attention, the reference."""

    name = "full"
    bounded = False


class Streaming(RetrievalMethod):
    """StreamingLLM: sinks + local window; evicted tokens are dropped."""

    name = "streaming"


class InfLLM(RetrievalMethod):
    """Mean probe, dot-product score, the same top-k for every layer."""

    name = "infllm"
    uses_memory = True

    def probe(self, q, kv_heads, state):
        return mean_probe(q, kv_heads)

    def score(self, probe, summaries, state):
        return dot_scores(probe, summaries.parts())

    def new_budget(self, memory_layers, states):
        return FixedTopK(self.config.avg_blocks)


class ActQKV(RetrievalMethod):
    """Activation-aware probe, cosine score plus the question term, dynamic cut-off."""

    name = "actqkv"
    uses_memory = True
    tracks_activations = True

    def observe(self, q, state):
        h, t, d = q.shape
        state.stats.update(q.permute(1, 0, 2).reshape(t, h * d))

    def probe(self, q, kv_heads, state):
        return activation_probe(q, kv_heads, state.stats)

    def score(self, probe, summaries, state):
        return cosine_scores(probe, summaries.parts(), state.question, self.config.question_weight,
                             summaries.inverse_norms())

    def new_budget(self, memory_layers, states):
        lo, hi = self.config.block_range
        # the entropies as of the start of this pass: one device read per forward pass, not per layer
        means = entropy_means(states)
        return DynamicCutoff(self.config.avg_blocks, lo, hi, memory_layers, means.__getitem__)


METHOD_CLASSES: dict[str, type[RetrievalMethod]] = {c.name: c for c in (Full, Streaming, InfLLM, ActQKV)}


def make_method(config: RetrievalConfig) -> RetrievalMethod:
    return METHOD_CLASSES[config.method](config)
