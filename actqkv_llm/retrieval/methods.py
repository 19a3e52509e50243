"""The methods as small interchangeable objects over one engine.

A memory method is a probe (how an execution block's queries ask), a scorer (how a block answers),
a selection granularity (one block set per layer, or one per KV head) and a budget (how many blocks
each layer takes). ``RetrievalConfig.selection`` resolves each from the method's preset and the
user's overrides; :func:`make_method` assembles the parts. The attention step asks a method to
``observe`` queries and to ``select`` blocks; it hands over a :class:`MemoryQuery` that knows where
memory sits (fixed angle or true positions) so scorers can score with the rotation attention uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from ..config import RetrievalConfig
from ..devices import device_tensor
from .bound_mass import BoundMassKernel, masked_bound_logits
from .budget import DynamicCutoff, EntropyRefill, FixedTopK, normalized_entropy
from .probe import ActivationStats, ProbeKernel, _group, token_weights, weighted_mean
from .score import bound_logits_parts, cosine_scores, dot_scores, key_logits, reduce_tokens

if TYPE_CHECKING:
    from ..memory.layer_memory import LayerMemory


@dataclass
class LayerRetrievalState:
    """Per-layer retrieval state of one document (forked per question, never shared across documents)."""

    stats: ActivationStats | None = None
    # sum of the observed normalized entropies read so far (a host float; see observe_entropy)
    entropy_total: float = 0.0
    entropy_count: int = 0
    question: torch.Tensor | None = None  # [Hkv, d] summary of the question's queries
    question_weight: float = 0.0          # how many question tokens it averages
    held: "HeldSelection | None" = None   # the last question or decode selection, for the next decode steps
    candidates: "HeldCandidates | None" = None  # the last scoring's rerank candidates, for the next decode steps
    # entropies observed on the device and not read yet: [tensor, times observed]
    unread: list = field(default_factory=list, repr=False)
    # the last tensor read and its value: observed again (held candidates, every decode step), it
    # adds its value on the host, with no device call and no read
    known: tuple | None = field(default=None, repr=False)

    def observe_entropy(self, h: torch.Tensor | float) -> None:
        """Add one step's normalized entropy; no host sync and no device call (a device value is read
        with the others once per pass, see :func:`entropy_means`)."""
        self.entropy_count += 1
        if not isinstance(h, torch.Tensor):
            self.entropy_total += float(h)
        elif self.known is not None and self.known[0] is h:
            self.entropy_total += self.known[1]
        elif self.unread and self.unread[-1][0] is h:
            self.unread[-1][1] += 1
        else:
            self.unread.append([h, 1])

    def observe_entropies(self, h: torch.Tensor) -> None:
        """Add several steps' normalized entropies ``[E]`` at once (a batched prefill chunk)."""
        self.unread.append([h.sum(), 1])
        self.entropy_count += h.numel()

    @property
    def entropy_mean(self) -> float:
        """Running mean of the normalized entropy (1.0, "spread out", before any observation)."""
        return entropy_means([self])[0]

    def add_question(self, probe: torch.Tensor, n_tokens: int) -> None:
        total = self.question_weight + n_tokens
        self.question = probe if self.question is None else \
            self.question + (probe - self.question) * (n_tokens / total)
        self.question_weight = total

    def take_held(self, n_blocks: int, mode: str) -> "HeldSelection | None":
        """The held selection if it may serve one more decode step over a memory of ``n_blocks``
        blocks with memory at ``mode`` positions (no block left the window since it was made, its
        keys are placed for this mode, and it has uses left); else drop it."""
        self.held = _take(self.held, n_blocks, mode)
        return self.held

    def take_candidates(self, n_blocks: int, mode: str) -> "HeldCandidates | None":
        """The held rerank candidates, on the same terms as :meth:`take_held`."""
        self.candidates = _take(self.candidates, n_blocks, mode)
        return self.candidates

    def fork(self) -> "LayerRetrievalState":
        # a held selection belongs to one question's pass: a fork starts without one
        entropy_means([self])   # the observations read into the total the fork starts from
        return LayerRetrievalState(None if self.stats is None else self.stats.clone(), self.entropy_total,
                                   self.entropy_count, self.question, self.question_weight)


def entropy_means(states: list[LayerRetrievalState]) -> list[float]:
    """Every layer's running mean entropy, its observations not read yet read from the device in one
    transfer (at most one sync per pass; none where nothing new was scored) and added to its total
    on the host, in the order observed."""
    unread = [u for st in states for u in st.unread]
    if unread:
        values = torch.stack([t.float().reshape(()) for t, _ in unread]).tolist()
        i = 0
        for st in states:
            for (t, times), v in zip(st.unread, values[i:i + len(st.unread)]):
                for _ in range(times):
                    st.entropy_total += v
                st.known = (t, v)
            i += len(st.unread)
            st.unread = []
    return [st.entropy_total / st.entropy_count if st.entropy_count else 1.0 for st in states]


@dataclass
class MemoryQuery:
    """What a scorer needs to know about one execution block's memory attention.

    ``rotate_q(q)`` rotates ``[H, T, d]`` queries the way attention will for memory keys (one fixed
    angle, or each token's true position; a pooled ``[H, 1, d]`` probe at the block's last one);
    ``rotate_blocks(k, ids)`` brings gathered keys ``[Hkv, n*B, d]`` of blocks ``ids`` (``[n]`` or
    ``[Hkv, n]``) to their true positions (None at the fixed angle); ``scaling`` is the model's
    logit scale; ``phase`` is the pass's (document, question or decode); ``context_lse()``, where
    attention has set it, gives ``[Hkv, G*T, 1]``: the log of what the always-visible keys (sinks and
    window) add to each query row's softmax normaliser; ``keep_candidate_keys`` False: rerank
    candidates held for the decode steps keep no keys (the static decode step reads them into its
    own buffers; :attr:`HeldCandidates.keys` reads them again if the reference step asks).
    """

    mode: str
    rotate_q: Callable[[torch.Tensor], torch.Tensor]
    rotate_blocks: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    scaling: float
    phase: str = "document"
    keep_candidate_keys: bool = True
    context_lse: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _last: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def at_memory(self, x: torch.Tensor) -> torch.Tensor:
        """``rotate_q(x)``, computed once per tensor: the scorer, a rerank and the attention itself
        all rotate the same execution block's queries."""
        if self._last is None or self._last[0] is not x:
            self._last = (x, self.rotate_q(x))
        return self._last[1]


@dataclass
class Selection:
    """Blocks picked for one execution block of one layer.

    blocks: ``[n]`` (every KV head reads them) or ``[Hkv, n]`` (each head its own), ascending.
    evidence: ``[rows, n_blocks]`` the scores they were picked by (rows: 1 shared, Hkv per head).
    l1_k / l1_v: ACRE's first-level entries attended beside them, ``[Hkv, L, d]`` (or None).
    keys: the picked blocks' keys ``[Hkv, n * B, d]`` as attention reads them (rotated where memory
        sits at true positions) when selection already gathered them (the rerank stage), else None.
    """

    blocks: torch.Tensor | None
    evidence: torch.Tensor
    l1_k: torch.Tensor | None = None
    l1_v: torch.Tensor | None = None
    keys: torch.Tensor | None = None

    @property
    def n_blocks(self) -> int:
        return 0 if self.blocks is None else self.blocks.shape[-1]

    @property
    def n_l1(self) -> int:
        return 0 if self.l1_k is None else self.l1_k.shape[1]


def _take(held, n_blocks: int, mode: str):
    """``held`` (a :class:`HeldSelection` or :class:`HeldCandidates`) with one use spent, or None
    once a block has left the window since it was made, memory moved to other positions (an
    answer that runs past the native window: exact -> fixed angle), or its uses are spent."""
    if held is None or held.n_blocks != n_blocks or held.mode != mode or held.uses_left < 1:
        return None
    held.uses_left -= 1
    return held


@dataclass
class HeldCandidates:
    """The candidates one scoring named for the rerank, kept by a layer for the decode steps that
    follow (``rescore_every``): each such step reranks them by its own exact attention, without
    scoring every block again or gathering their keys again.

    A question that reranks only the best share of them (``question_rerank``) reads only those
    blocks' keys; the others' are read when the first answer token asks for :attr:`keys`
    (``fetch``), so the first token never waits for keys only the later ones use (on a document
    reloaded cold, each read is a disk read)."""

    cand: torch.Tensor      # [rows, m] ascending block ids
    known: torch.Tensor | None  # [Hkv, m*B, d] their keys as attention reads them (None: read on first use)
    evidence: torch.Tensor  # the scoring's evidence (a Selection reports it)
    entropy: torch.Tensor   # its normalized entropy (the budget's input)
    n: int                  # picks it was named for
    n_blocks: int
    mode: str               # positions its keys are placed for
    uses_left: int
    fetch: Callable[[], torch.Tensor] | None = None  # reads ``known`` when first asked for
    reread: Callable[[], torch.Tensor] | None = None  # reads every candidate's keys again (drop_keys)

    # A step may take up to this many times the picks the candidates were named for: the budget's
    # share of a layer drifts by a block or two as entropies accumulate, and scoring every block
    # again for one more block cost a rescoring in ~40% of decode steps on Qwen2.5 (8K, CPU);
    # beyond it the rerank would choose among half as many candidates per pick as it was named for.
    GROWTH = 2

    @property
    def keys(self) -> torch.Tensor:
        """Every candidate's keys ``[Hkv, m*B, d]`` (read on first use where the question left some, or
        kept none: ``MemoryQuery.keep_candidate_keys``)."""
        if self.known is None:
            self.known, self.fetch = (self.fetch or self.reread)(), None
        return self.known

    def drop_keys(self) -> None:
        """Let the keys go (a static decode step copied them into its own buffers: ~1.5 GiB on the
        Llama-3.1-8B shape otherwise held twice); :attr:`keys` reads them from memory again if the
        reference step asks."""
        if self.reread is not None:
            self.known, self.fetch = None, self.reread

    def serves(self, n: int) -> bool:
        """Whether these candidates may serve a step that takes ``n`` blocks."""
        return n <= self.GROWTH * self.n and n <= self.cand.shape[-1]


@dataclass
class HeldSelection:
    """A selection kept by one layer for the decode steps that follow it (``reselect_every``), with
    the keys and values attention reads for it (picked blocks, placed, then any first-level entries),
    so a step that reuses it neither scores, ranks nor gathers."""

    selection: Selection
    k_mem: torch.Tensor | None
    v_mem: torch.Tensor | None
    n_blocks: int     # the memory's blocks when it was made: a block leaving the window ends it
    mode: str         # positions its keys are placed for
    uses_left: int


# ---------------------------------------------------------------------- probes
class Probe:
    """Turns an execution block's queries ``[H, T, d]`` into query tokens ``[H, T', d]`` and their weights ``[T']``."""

    def __call__(self, q: torch.Tensor, state: LayerRetrievalState) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def one_token(self, q: torch.Tensor) -> tuple[torch.Tensor, None]:
        """What :meth:`__call__` gives for one query token ``[H, 1, d]`` (a decode step): the token
        itself and its weight, 1 (a single token's share of any weighting; its bias divided by itself),
        given as None (the scorers read it so without a tensor), without reading the statistics: ~20
        fewer device calls per layer and step that scores."""
        return q.float(), None


class MeanProbe(Probe):
    """InfLLM: one query, the mean of the block's queries."""

    def __call__(self, q, state):
        return q.float().mean(1, keepdim=True), q.new_ones(1, dtype=torch.float32)


class ActivationProbe(Probe):
    """ActQKV: one query, tokens weighted by their activation bias."""

    def __call__(self, q, state):
        return weighted_mean(q, token_weights(q, state.stats))[:, None], q.new_ones(1, dtype=torch.float32)


class TokenProbe(Probe):
    """Every query token asks on its own; its vote weighted uniformly or by activation bias."""

    def __init__(self, activation: bool, kernel: str = "auto"):
        self.activation = activation
        # what computes a batched prefill chunk's activation bias (``prefill_kernel``)
        self.bias = ProbeKernel(kernel)

    def __call__(self, q, state):
        return q, token_weights(q, state.stats if self.activation else None)

    def one_token(self, q):
        return q, None

    def chunk_weights(self, q: torch.Tensor, state: LayerRetrievalState, sizes: tuple[int, ...]) -> torch.Tensor:
        """Every execution block's token weights at once: ``[E, S]`` (zero on the last block's
        padding), each row as :meth:`__call__` gives it after the statistics saw that block."""
        size = sizes[0]
        if not self.activation or state.stats is None:
            n_tok = device_tensor(sizes, q.device, torch.float32)[:, None]
            return (torch.arange(size, device=q.device)[None] < n_tok) / n_tok
        b = self.bias(q, state.stats, sizes)
        return b / b.sum(1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------- scorers

class Scorer:
    """Evidence ``[rows, n_blocks]`` for every block; ``mass`` scorers give attention-mass estimates
    (entropy of the normalised row), the others logits (entropy of their softmax)."""

    mass = False
    reads_summaries = False   # reads the blocks' summary keys (kept, and saved, only for such scorers)

    def __call__(self, tokens: torch.Tensor, weights: torch.Tensor, mem: "LayerMemory",
                 state: LayerRetrievalState, mq: MemoryQuery) -> torch.Tensor:
        raise NotImplementedError


class RepresentativeDot(Scorer):
    """InfLLM: dot product of the probe (query heads averaged per KV head) with each block's summary key."""

    reads_summaries = True

    def __call__(self, tokens, weights, mem, state, mq):
        return dot_scores(_group(tokens[:, 0].float(), mem.kv_heads), mem.summaries.parts())


class RepresentativeCosine(Scorer):
    """ActQKV: cosine of the concatenated probe and summary, plus lambda x cosine with the question summary."""

    reads_summaries = True

    def __init__(self, question_weight: float):
        self.question_weight = question_weight

    def __call__(self, tokens, weights, mem, state, mq):
        probe = _group(tokens[:, 0].float(), mem.kv_heads)
        return cosine_scores(probe, mem.summaries.parts(), state.question, self.question_weight,
                             mem.summaries.inverse_norms())[None]


class BoundScorer(Scorer):
    """Quest: each query token's upper bound of its best logit in the block, from per-channel key
    minima and maxima, at the rotation attention will use; tokens combined by ``reduce``."""

    def __init__(self, reduce: str, kernel: str = "auto"):
        self.reduce = reduce
        self.mass = reduce == "softmax"
        # what computes a batched prefill chunk's softmax evidence (``prefill_kernel``)
        self.mass_kernel = BoundMassKernel(kernel)

    def __call__(self, tokens, weights, mem, state, mq):
        u = bound_logits_parts(mq.at_memory(tokens), mem.bound_parts(mq.mode, mq.rotate_blocks), mem.dtype)
        return reduce_tokens(u, weights, mem.kv_heads, self.reduce, mq.scaling)

    def chunk(self, q_mem: torch.Tensor, weights: torch.Tensor, mem: "LayerMemory", mq: MemoryQuery,
              n_avail: torch.Tensor) -> torch.Tensor:
        """Every execution block's evidence at once: q_mem ``[H, E, S, d]`` (at the memory's rotation),
        weights ``[E, S]``, ``n_avail [E]`` blocks each may see -> ``[E, Hkv, N]`` (0 / -inf beyond)."""
        parts = mem.bound_parts(mq.mode, mq.rotate_blocks)
        if self.reduce == "softmax":
            return self.mass_kernel(q_mem, weights, parts, n_avail, mem.kv_heads, mq.scaling, mem.dtype)
        out = []
        for e, u in masked_bound_logits(q_mem, parts, n_avail, mem.kv_heads, mem.dtype):
            u.masked_fill_(weights[e, None, None, :, None] == 0, float("-inf"))
            out.append(u.amax((2, 3)))
        return torch.cat(out)


class FirstLevelScorer(Scorer):
    """ACRE: the query's attention over one first-level entry per block (the block's mean key)."""

    mass = True

    def __call__(self, tokens, weights, mem, state, mq):
        k_mean, _ = mem.means(mq.mode, mq.rotate_blocks)
        u = key_logits(mq.at_memory(tokens), k_mean)
        return reduce_tokens(u, weights, mem.kv_heads, "softmax", mq.scaling)


# ---------------------------------------------------------------------- methods
def best_ids(evidence: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m`` blocks with the most ``evidence [..., N]``, ascending; of equal ones the earlier, so
    that the choice does not depend on the row's length (``topk`` breaks ties by its own scan, which
    differs between a row and the same row padded with ``-inf``: the static decode step's scoring,
    attention/static_scoring.py). A stable sort instead of a top-k."""
    return evidence.sort(dim=-1, descending=True, stable=True).indices[..., :m].sort(-1).values


def pin_edges(evidence: torch.Tensor, n_avail: torch.Tensor | int) -> torch.Tensor:
    """``evidence [..., N]`` with the first block and the last available one (``n_avail`` blocks,
    per leading row or for all) ranked first: the blocks that continue the sinks and the window."""
    out = evidence.clone()
    if isinstance(n_avail, int):   # one count for all rows: a slice, not a tensor made from a host
        # int (on CUDA that copy waited for the GPU): entries 0 and n_avail - 1, in one fill
        out[..., 0:max(n_avail, 1):max(n_avail - 1, 1)] = float("inf")
        return out
    out[..., 0] = float("inf")
    last = n_avail.to(evidence.device) - 1
    last = last.reshape(last.shape + (1,) * (evidence.dim() - last.dim())).expand(*evidence.shape[:-1], 1)
    return out.scatter(-1, last.clamp_min(0), float("inf"))


class RetrievalMethod:
    name = "base"
    uses_memory = False   # evicted blocks are kept and retrieved
    bounded = True        # the local window has a fixed size
    batchable = False     # a prefill chunk's execution blocks may run as one batch (attention/chunk.py)
    tracks_activations = False
    uses_summaries = False  # evicted blocks get a summary key (only the scorers that read them need it)

    def __init__(self, config: RetrievalConfig):
        self.config = config

    def new_layer_state(self, n_features: int, device: torch.device) -> LayerRetrievalState:
        return LayerRetrievalState(ActivationStats(n_features, device) if self.tracks_activations else None)

    def observe(self, q: torch.Tensor, state: LayerRetrievalState) -> None:
        """See every execution block's queries ``[H, T, d]`` of a memory layer (before any selection)."""

    def new_budget(self, memory_layers: list[int], states: list[LayerRetrievalState]):
        return None


class Full(RetrievalMethod):
    """Every token stays in the window at its true position: plain attention, the reference."""

    name = "full"
    bounded = False


class Streaming(RetrievalMethod):
    """StreamingLLM: sinks + local window; evicted tokens are dropped."""

    name = "streaming"


# each takes the ``prefill_kernel`` option (what computes a batched chunk's activation bias)
PROBES: dict[str, Callable[..., Probe]] = {
    "mean": lambda kernel="auto": MeanProbe(), "activation": lambda kernel="auto": ActivationProbe(),
    "tokens": lambda kernel="auto": TokenProbe(False, kernel),
    "activation-tokens": lambda kernel="auto": TokenProbe(True, kernel),
}


class BlockRetrieval(RetrievalMethod):
    """A memory method: probe, scorer, granularity and budget, from the config's selection options."""

    uses_memory = True

    def __init__(self, config: RetrievalConfig):
        super().__init__(config)
        sel = config.selection
        self.name = config.method
        self.probe = PROBES[sel("probe")](config.prefill_kernel)
        scorer = sel("scorer")
        self.scorer: Scorer = {
            "dot": lambda: RepresentativeDot(),
            "cosine": lambda: RepresentativeCosine(config.question_weight),
            "bound": lambda: BoundScorer(sel("token_reduce"), config.prefill_kernel),
            "l1": lambda: FirstLevelScorer(),
        }[scorer]()
        self.per_head = bool(sel("per_head"))
        self.positions = sel("positions")
        self.budget_rule = sel("budget_rule")
        self.tracks_activations = sel("probe") in ("activation", "activation-tokens")
        self.uses_question = scorer == "cosine"
        self.uses_summaries = self.scorer.reads_summaries
        self.rerank = int(sel("rerank"))
        # the second stage's candidates per layer: rerank x the blocks a layer takes on average, one
        # count for every layer and step (the static decode step's buffers hold exactly that many)
        self.n_candidates = self.rerank * config.avg_blocks if self.rerank > 1 else 0
        # the question reranks only the best of them (all are held for the answer tokens): the
        # explicit share, else all of an explicit rerank's candidates, else the method's preset
        q_rerank = config.question_rerank or (self.rerank if config.rerank is not None
                                              else min(int(sel("question_rerank")), self.rerank))
        self.n_question_candidates = q_rerank * config.avg_blocks if self.rerank > 1 else 0
        self.reselect_every = int(sel("reselect_every"))
        self.rescore_every = int(sel("rescore_every"))
        self.keep_edges = bool(sel("keep_edges"))
        # a prefill chunk's execution blocks may run as one batch (attention/chunk.py): selection
        # reads key bounds, never the summaries made from the window's attention
        self.batchable = scorer == "bound" and isinstance(self.probe, TokenProbe)

    def chunk_evidence(self, q_mem: torch.Tensor, weights: torch.Tensor, mem: "LayerMemory",
                       mq: MemoryQuery, n_avail: torch.Tensor) -> torch.Tensor:
        """Evidence ``[E, rows, N]`` of a batched chunk (rows: Hkv per head, 1 shared)."""
        ev = self.scorer.chunk(q_mem, weights, mem, mq, n_avail)
        return ev if self.per_head else ev.sum(1, keepdim=True)

    def observe(self, q, state):
        if state.stats is not None:
            h, t, d = q.shape
            state.stats.update(q.permute(1, 0, 2).reshape(t, h * d))

    def new_budget(self, memory_layers, states):
        if self.budget_rule == "fixed":
            return FixedTopK(self.config.avg_blocks)
        lo, hi = self.config.block_range
        # the entropies as of the start of this pass: one device read per forward pass, not per layer
        means = entropy_means(states)
        return DynamicCutoff(self.config.avg_blocks, lo, hi, memory_layers, means.__getitem__)

    def select(self, q: torch.Tensor, mem: "LayerMemory", state: LayerRetrievalState, mq: MemoryQuery,
               budget, slot: int, layer: int, question: bool) -> Selection:
        """Score every block of ``mem`` for queries ``q`` ``[H, T, d]`` and pick what the budget allows
        (a decode step with held rerank candidates reranks those instead of scoring again)."""
        n = None
        held = state.take_candidates(mem.n_blocks, mq.mode) if mq.phase == "decode" else None
        if held is not None:
            state.observe_entropy(held.entropy)
            n = budget.blocks_for(slot, layer, mem.n_blocks, held.entropy)
            if held.serves(n):
                picked = keys = None
                if n:
                    picked, keys = self._rerank_among(q, mem, mq, held.cand, held.keys, n)
                    picked = picked[0] if picked.shape[0] == 1 else picked
                return Selection(picked, held.evidence, keys=keys)
            state.candidates = None  # this step may take too many more blocks than they were named for
        evidence, h = self._score(q, mem, state, mq, question)
        if n is None:
            state.observe_entropy(h)
            n = budget.blocks_for(slot, layer, mem.n_blocks, h)
        picked = keys = None
        if n:
            ranked = pin_edges(evidence, mem.n_blocks) if self.keep_edges else evidence
            if self.rerank > 1 and mq.phase != "document" and n < mem.n_blocks:
                cand = self._candidate_ids(mem, ranked, n)
                hold = self.rescore_every > 1
                # held candidates keep the keys read here, unless the decode row reads them into its buffers
                keep = hold and mq.keep_candidate_keys
                if question and n < self.n_question_candidates < cand.shape[-1]:
                    # the question reads the best share's keys now; the rest when an answer token asks
                    best = _best_positions(cand, ranked, self.n_question_candidates)
                    asked = cand.gather(1, best)
                    k = self._candidate_keys(mem, mq, asked, q.device)
                    known, fetch = None, self._fetch_rest(mem, mq, cand, best, k, q.device) if keep else None
                else:
                    asked = cand
                    k = self._candidate_keys(mem, mq, cand, q.device)
                    known, fetch = k if keep else None, None
                if hold:
                    state.candidates = self.held_candidates(mem, mq, cand, known, evidence, h, n, q.device, fetch)
                picked, keys = self._rerank_among(q, mem, mq, asked, k, n)
            else:
                picked = ranked.topk(n, -1).indices.sort(-1).values
            picked = picked[0] if picked.shape[0] == 1 else picked
        return Selection(picked, evidence, keys=keys)

    def _score(self, q: torch.Tensor, mem: "LayerMemory", state: LayerRetrievalState, mq: MemoryQuery,
               question: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block's evidence ``[rows, N]`` for queries ``q`` and its normalized entropy (0-d, on
        the device): probe, then scorer (a question also adds its probe to the question term)."""
        tokens, weights = self.probe.one_token(q) if q.shape[1] == 1 else self.probe(q, state)
        if question and self.uses_question:
            state.add_question(_group(tokens[:, 0].float(), mem.kv_heads), q.shape[1])
        evidence = self.scorer(tokens, weights, mem, state, mq)
        if not self.per_head and evidence.shape[0] > 1:
            evidence = evidence.sum(0, keepdim=True)
        return evidence, normalized_entropy(evidence, mass=self.scorer.mass).mean()

    def rescore(self, q: torch.Tensor, mem: "LayerMemory", state: LayerRetrievalState, mq: MemoryQuery,
                n: int, observe: bool, gather: Callable | None = None) -> tuple[HeldCandidates, torch.Tensor | None]:
        """A decode step's new scoring of every block when the held candidates are spent or do not
        serve ``n`` picks (what :meth:`select` does then, up to the rerank): the candidates for ``n``
        picks with their keys, held for the next ``rescore_every - 1`` steps, and their values where
        ``gather`` read them too (else None). ``observe``: add the scoring's entropy to the running
        mean (the reference adds the spent candidates' entropy instead when they were taken this
        step). Needs ``rerank`` > 1, ``rescore_every`` > 1 and ``n`` < the memory's blocks (the
        static decode step checks).

        ``gather(mem, mq, cand)`` gives the candidates' placed keys and values in one read (or None
        where it cannot: the memory's own reads then), what the reference's reads give."""
        evidence, h = self._score(q, mem, state, mq, False)
        cand = self._candidate_ids(mem, pin_edges(evidence, mem.n_blocks) if self.keep_edges else evidence, n)
        if observe:
            state.observe_entropy(h)
        read = gather(mem, mq, cand) if gather is not None else None
        keys, values = read if read is not None else (self._candidate_keys(mem, mq, cand, q.device), None)
        state.candidates = self.held_candidates(mem, mq, cand, keys, evidence, h, n, q.device)
        return state.candidates, values

    def hold_scored(self, mem: "LayerMemory", state: LayerRetrievalState, mq: MemoryQuery, cand: torch.Tensor,
                    evidence: torch.Tensor, h: torch.Tensor, n: int, observe: bool) -> HeldCandidates:
        """What :meth:`rescore` holds, for the candidates ``cand`` that a static decode step's own
        scoring named (attention/static_scoring.py: the same scoring on padded buffers), with its
        ``evidence`` and entropy ``h``; their keys and values are in the step's row already."""
        if observe:
            state.observe_entropy(h)
        state.candidates = self.held_candidates(mem, mq, cand, None, evidence, h, n, cand.device)
        return state.candidates

    def held_candidates(self, mem: "LayerMemory", mq: MemoryQuery, cand: torch.Tensor, known: torch.Tensor | None,
                        evidence: torch.Tensor, h: torch.Tensor, n: int, device: torch.device,
                        fetch: Callable[[], torch.Tensor] | None = None) -> HeldCandidates:
        """Candidates ``cand`` held for the next ``rescore_every - 1`` decode steps, able to read their
        keys again once dropped (:meth:`HeldCandidates.drop_keys`)."""
        return HeldCandidates(cand, known, evidence, h, n, mem.n_blocks, mq.mode, self.rescore_every - 1,
                              fetch=fetch, reread=_reader(mem, mq.rotate_blocks, cand, device))

    def _candidate_ids(self, mem: "LayerMemory", evidence: torch.Tensor, n: int) -> torch.Tensor:
        """The second stage's candidates: the ``n_candidates`` best blocks by ``evidence`` (at least
        the ``n`` to pick), ascending ``[rows, m]``; :meth:`_rerank_among` keeps ``n`` of them by the
        queries' exact attention over their keys (:meth:`_candidate_keys`)."""
        return best_ids(evidence, min(mem.n_blocks, max(n, self.n_candidates)))

    @staticmethod
    def _candidate_keys(mem: "LayerMemory", mq: MemoryQuery, cand: torch.Tensor,
                        device: torch.device) -> torch.Tensor:
        """Keys of blocks ``cand`` ``[rows, m]`` as attention reads them ``[Hkv, m*B, d]`` (keys only:
        values are read for the blocks the rerank keeps)."""
        return _placed_keys(mem, mq.rotate_blocks, cand, device)

    def _fetch_rest(self, mem: "LayerMemory", mq: MemoryQuery, cand: torch.Tensor, best: torch.Tensor,
                    k_best: torch.Tensor, device: torch.device) -> Callable[[], torch.Tensor]:
        """A reader of every candidate's keys, in ``cand``'s order, that reads only those not at
        positions ``best`` (whose keys ``k_best`` the question read already)."""
        place = mq.rotate_blocks   # not mq: its context_lse holds the question's window tensors

        def fetch() -> torch.Tensor:
            rest = _other_positions(best, cand.shape[-1])
            k_rest = _placed_keys(mem, place, cand.gather(1, rest), device)
            hkv, b = mem.kv_heads, mem.block_size
            out = k_best.new_empty((hkv, cand.shape[-1], b, k_best.shape[-1]))
            _put_keys(out, best, k_best, hkv, b)
            _put_keys(out, rest, k_rest, hkv, b)
            return out.view(hkv, -1, k_best.shape[-1])
        return fetch

    def _rerank_among(self, q: torch.Tensor, mem: "LayerMemory", mq: MemoryQuery, cand: torch.Tensor,
                      k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Of candidates ``cand`` ``[rows, m]`` (ascending) with keys ``k`` ``[Hkv, m*B, d]`` as
        attention reads them, the ``n`` that receive the most mass, summed over query tokens and heads
        as full attention would give it: at the rotation attention uses, and normalised with the sinks
        and window in the softmax (``mq.context_lse``), so a head that looks mostly at its window counts
        for little. Returns the picks ``[rows, n]`` ascending and their keys ``[Hkv, n*B, d]`` (so
        attention gathers only the values)."""
        h, t, d = q.shape
        hkv, b = mem.kv_heads, mem.block_size
        qr = mq.at_memory(q).float().reshape(hkv, (h // hkv) * t, d)
        # normalised as attention will be (sinks and window in the softmax too): a query row that
        # looks mostly at its window weighs the blocks less, as in full attention
        ctx = mq.context_lse() if mq.context_lse is not None else None
        mass = candidate_mass(qr, k, mq.scaling, ctx, b)                             # [Hkv, m]
        if cand.shape[0] == 1:
            mass = mass.sum(0, keepdim=True)
        if self.keep_edges:  # the edge blocks stay picked whatever their mass
            edge = (cand == 0) | (cand == mem.n_blocks - 1)
            mass = mass.masked_fill(edge.expand_as(mass), float("inf"))
        # ties (blocks of identical tokens have identical keys in a layer that sees no position) go
        # to the earlier block, on every path (the static decode step ranks the same way)
        top = mass.sort(dim=-1, descending=True, stable=True).indices[:, :n].sort(-1).values  # ascending picks
        picked = cand.expand(mass.shape[0], -1).gather(1, top)
        return picked, keys_at(k, top, hkv, b)


# Query rows a rerank takes at once: a chunk's logits ``[Hkv, rows, m*B]`` stay within this many
# elements (16 MiB in float32), so a question's rows never hold all their logits at once
RERANK_CHUNK_ELEMENTS = 1 << 22


def candidate_mass(q: torch.Tensor, keys: torch.Tensor, scaling: float, context_lse: torch.Tensor | None,
                   b: int, chunk_elements: int = RERANK_CHUNK_ELEMENTS) -> torch.Tensor:
    """The attention mass ``[Hkv, m]`` each of ``m`` candidate blocks (keys ``[Hkv, m*B, d]``, blocks
    of ``b`` keys) receives from query rows ``q`` ``[Hkv, R, d]`` (float32; logits scaled by
    ``scaling``), summed over the rows: each row's softmax over the candidates' logits, its
    normaliser widened by ``context_lse`` ``[Hkv, R, 1]`` (what the sinks and the window add; None:
    nothing).

    In place, in chunks of rows of at most :data:`RERANK_CHUNK_ELEMENTS` logits: no probability
    matrix beside the logits, and a question's many rows never hold all their logits at once. A
    chunk's arithmetic, and the order of its sum over rows and keys, are those of the static decode
    step's PyTorch rerank (``attention/static_decode.py``): blocks whose masses differ by a rounding
    (blocks of near-identical keys) rank the same on both paths. (One exponential per logit, each
    row weighed by ``exp(max - lse)`` in a matrix product, was faster in isolation but ranked such
    near ties differently.) Inside a real decode step neither form is measurably faster than the
    plain one: the step's cost is reading the candidates' keys. What chunking changes is a long
    question's peak memory (3.7 GiB -> 0.14 GiB for 2,000 tokens at Qwen2.5-0.5B's shape;
    docs/results/cpu-rerank-session17/). ``chunk_elements``: that bound (several questions reranked
    as one batch, their rows folded into the first axis, take it once per question)."""
    hkv, r_all, _ = q.shape
    kt = keys.float().transpose(1, 2)
    rows = max(1, chunk_elements // (hkv * kt.shape[-1]))
    mass = None
    for a in range(0, r_all, rows):
        logits = torch.matmul(q[:, a:a + rows], kt).mul_(scaling)        # [Hkv, r, m*B]
        lse = torch.logsumexp(logits, -1, keepdim=True)
        if context_lse is not None:
            lse = torch.logaddexp(lse, context_lse[:, a:a + rows])
        part = logits.sub_(lse).exp_().view(hkv, logits.shape[1], -1, b).sum((1, 3))
        mass = part if mass is None else mass.add_(part)
    return mass


def _placed_keys(mem: "LayerMemory", place: "Callable | None", cand: torch.Tensor,
                 device: torch.device) -> torch.Tensor:
    """Keys of blocks ``cand`` ``[rows, m]`` ``[Hkv, m*B, d]``, placed by ``place`` (``MemoryQuery.rotate_blocks``:
    at their true positions; None at the fixed angle)."""
    ids = cand[0] if cand.shape[0] == 1 else cand
    k, _ = mem.blocks.gather(ids, device, values=False)
    if place is not None:
        # placed in float32, kept in the memory's dtype: attention reads them in it anyway, and
        # a question holds these keys for every layer across decode steps (rescore_every)
        k = place(k, ids).to(mem.dtype)
    return k


def _reader(mem: "LayerMemory", place: "Callable | None", cand: torch.Tensor,
            device: torch.device) -> Callable[[], torch.Tensor]:
    """Reads every candidate's keys again (:meth:`HeldCandidates.drop_keys`)."""
    return lambda: _placed_keys(mem, place, cand, device)


def _best_positions(cand: torch.Tensor, evidence: torch.Tensor, m: int) -> torch.Tensor:
    """Positions ``[rows, m]`` (ascending) in candidates ``cand`` ``[rows, M]`` of the ``m`` with the
    most ``evidence`` ``[rows, N]``: the question's share (``question_rerank``)."""
    return evidence.gather(-1, cand).topk(m, -1).indices.sort(-1).values


def _other_positions(pos: torch.Tensor, total: int) -> torch.Tensor:
    """The positions ``[rows, total - m]`` (ascending) of ``range(total)`` not in ``pos`` ``[rows, m]``."""
    keep = torch.ones((pos.shape[0], total), dtype=torch.bool, device=pos.device)
    keep.scatter_(1, pos, False)
    return keep.nonzero()[:, 1].view(pos.shape[0], total - pos.shape[1])


def _put_keys(out: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, hkv: int, b: int) -> None:
    """Write blocks' keys ``[Hkv, m*B, d]`` at candidate positions ``pos`` ``[rows, m]`` of ``out``
    ``[Hkv, M, B, d]`` (one row for every KV head, or one per head): the inverse of :func:`keys_at`."""
    kb = keys.view(hkv, -1, b, keys.shape[-1])
    if pos.shape[0] == 1:
        out[:, pos[0]] = kb
    else:
        out[torch.arange(hkv, device=out.device)[:, None], pos] = kb


def keys_at(keys: torch.Tensor, top: torch.Tensor, hkv: int, b: int) -> torch.Tensor:
    """Of candidate keys ``[Hkv, M*B, d]`` (blocks of ``b`` in candidate order), the blocks at
    positions ``top`` ``[rows, m]`` (one row shared by every KV head, or one per head): ``[Hkv, m*B, d]``.
    One ``index_select`` over the (head, block) pairs: a third or less of advanced indexing's time on the CPU
    (docs/results/cpu-rerank-session17/index_select.txt)."""
    d = keys.shape[-1]
    m_all = keys.shape[1] // b
    heads = torch.arange(hkv, device=keys.device)[:, None] * m_all
    flat = (heads + top).flatten()                       # one row expands to every KV head
    return keys.reshape(hkv * m_all, b, d).index_select(0, flat).view(hkv, top.shape[-1] * b, d)


class ActQKV(BlockRetrieval):
    """ActQKV with the measured selection (docs/method.md): activation-weighted token votes on key bounds."""


class ActQKVPaper(BlockRetrieval):
    """ActQKV as published: activation-bias probe, representative cosine + question term, entropy cut-off."""


class Quest(BlockRetrieval):
    """Quest: per-token, per-head key-bound scores, fixed top-k."""


class InfLLM(BlockRetrieval):
    """InfLLM: mean probe, representative-key dot product, the same top-k for every layer."""


class ACRE(BlockRetrieval):
    """ACRE (training-free, as our seed describes it): every query attends to first-level entries
    (one per block: its mean key and mean value); its attention over them picks the full blocks to
    refill, and the entropy of that attention sets how many (``EntropyRefill``).

    The per-step bound holds: at most ``l1_budget`` first-level entries take part in the softmax (the
    ones with the most attention, refilled blocks excluded) beside ``acre_range[1]`` refilled blocks.
    """

    def new_budget(self, memory_layers, states):
        return EntropyRefill(*self.config.acre_range)

    def select(self, q, mem, state, mq, budget, slot, layer, question):
        sel = super().select(q, mem, state, mq, budget, slot, layer, question)
        ev = sel.evidence if sel.evidence.shape[0] == mem.kv_heads else sel.evidence.expand(mem.kv_heads, -1)
        ev = ev.clone()
        if sel.blocks is not None:  # a refilled block is attended in full, not through its entry
            idx = sel.blocks if sel.blocks.dim() == 2 else sel.blocks[None].expand(mem.kv_heads, -1)
            ev.scatter_(1, idx, float("-inf"))
        n_l1 = min(self.config.l1_budget, mem.n_blocks - sel.n_blocks)
        if n_l1 > 0:
            k_mean, v_mean = mem.means(mq.mode, mq.rotate_blocks)
            top = ev.topk(n_l1, -1).indices.sort(-1).values               # [Hkv, L]
            heads = torch.arange(mem.kv_heads, device=top.device)[:, None]
            sel.l1_k = k_mean[top, heads].to(mem.dtype)
            sel.l1_v = v_mean[top, heads].to(mem.dtype)
        return sel


METHOD_CLASSES: dict[str, type[RetrievalMethod]] = {
    "full": Full, "streaming": Streaming, "infllm": InfLLM, "actqkv": ActQKV,
    "actqkv-paper": ActQKVPaper, "quest": Quest, "acre": ACRE}


def make_method(config: RetrievalConfig) -> RetrievalMethod:
    return METHOD_CLASSES[config.method](config)
