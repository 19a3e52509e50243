"""How many blocks each layer may retrieve in one step.

``FixedTopK``: the same k everywhere (InfLLM). ``EntropyRefill``: ACRE's volume from the entropy
of one step's first-level attention. ``DynamicCutoff``: ActQKV's information-density
cut-off. A total of ``avg x layers`` blocks is drawn layer by layer; layer n takes
``k_n = clamp(round(w_n * remaining), lo, hi)`` with ``w_n = H_n / sum_{i>=n} H_i`` where ``H`` is a
running mean of each layer's normalized retrieval-score entropy. Layers whose scores are spread
out (high entropy: the information is dispersed) take more blocks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .score import in_dtype


def normalized_entropy(scores: torch.Tensor, mass: bool = False,
                       n_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy along the last dimension divided by log N (1 = uniform, 0 = one block has it all).

    ``scores`` are logits (the distribution is their softmax) or, with ``mass``, non-negative
    attention-mass estimates (the distribution is the normalised row). ``n_valid`` (broadcast
    against the leading shape): how many entries of each row count, the rest holding no mass (0,
    or -inf logits), so N is that count (a batched prefill's rows see different numbers of blocks).
    Returns a tensor of the leading shape (0-d for one row) on the scores' device, so that a step
    never waits for it.
    """
    n = scores.shape[-1]
    if n <= 1:
        return scores.new_zeros(scores.shape[:-1], dtype=torch.float32)
    if mass:
        p = in_dtype(scores, torch.float32).clamp_min(0)
        p.div_(p.sum(-1, keepdim=True).clamp_min(1e-30))
        logp = p.clamp_min(1e-30).log_()
    else:
        logp = torch.log_softmax(scores.float(), -1)
        p = logp.exp()
    terms = logp.mul_(p)   # p log p (logp is not read again)
    if n_valid is None:
        return terms.sum(-1) / -math.log(n)   # -(x) / c and x / -c are the same float
    ent = -torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)   # 0 * -inf past the valid ones
    return torch.where(n_valid > 1, ent / n_valid.float().clamp_min(2).log(), torch.zeros_like(ent))


class FixedTopK:
    reads_step_entropy = False   # blocks_for ignores the step's own entropy

    def __init__(self, k: int):
        self.k = k

    def blocks_for(self, slot: int, layer: int, n_blocks: int, entropy: torch.Tensor | None = None) -> int:
        return min(self.k, n_blocks)


class EntropyRefill:
    """ACRE's refill volume: ``k = lo + (hi - lo) * H / H_max`` from this step's normalized entropy of
    the query's attention over the first level: focused questions refill few blocks, diffuse ones many."""

    reads_step_entropy = True    # blocks_for needs this step's scoring first

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.chosen: list[int] = []  # every k it chose (read by benchmarks)

    def blocks_for(self, slot: int, layer: int, n_blocks: int, entropy: torch.Tensor | None = None) -> int:
        h = 1.0 if entropy is None else float(entropy)
        k = min(n_blocks, round(self.lo + (self.hi - self.lo) * min(max(h, 0.0), 1.0)))
        self.chosen.append(k)
        return k


class DynamicCutoff:
    """The per-step allocator. One instance per forward pass; ``slot`` indexes the execution block
    inside the pass (prefill runs several per pass), so each execution block shares its own
    budget across layers.

    Invariant (asserted in tests): within a slot the layers never draw more than ``avg x layers``
    blocks in total, and each draws at most ``hi``.
    """

    reads_step_entropy = False   # the running means as of the pass's start, not the step's own

    def __init__(self, avg: int, lo: int, hi: int, memory_layers: list[int], entropy: Callable[[int], float]):
        self.avg, self.lo, self.hi = avg, lo, hi
        self.layers = memory_layers
        self.order = {layer: i for i, layer in enumerate(memory_layers)}
        self.entropy = entropy  # layer -> running mean of its normalized score entropy (read live)
        self.total = avg * len(memory_layers)
        self._spent: dict[int, int] = {}

    def blocks_for(self, slot: int, layer: int, n_blocks: int, entropy: torch.Tensor | None = None) -> int:
        i = self.order[layer]
        n_layers = len(self.order)
        spent = self._spent.get(slot, 0)
        remaining = self.total - spent
        later = [self.entropy(layer_) for layer_ in self.layers[i:]]
        denom = sum(later)
        w = later[0] / denom if denom > 0 else 1.0 / (n_layers - i)
        k = max(self.lo, min(self.hi, round(w * remaining)))
        k = min(k, remaining - self.lo * (n_layers - i - 1))  # leave every later layer its minimum
        k = max(0, min(k, n_blocks))
        self._spent[slot] = spent + k
        return k
