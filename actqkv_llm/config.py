"""RetrievalConfig: every option that shapes the context memory, typed, defaulted and validated here.

Defaults follow ActQKV's published Llama-3-8B-Instruct configuration (8K native window):
block 32, sinks 64, local window 512, execution block 256, 4 representative keys per block,
46 blocks per layer on average (92 at most), which with the sinks and the window is the
paper's 2K-token budget per step: 64 + 512 + 46 x 32 = 2048. Models with a smaller native
window get the same shape scaled down (see :meth:`RetrievalConfig.for_model`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .errors import ConfigError, is_int, is_number

Method = Literal["actqkv", "actqkv-paper", "quest", "infllm", "acre", "streaming", "full"]
METHODS: tuple[str, ...] = ("actqkv", "actqkv-paper", "quest", "infllm", "acre", "streaming", "full")
# Methods that keep evicted blocks and retrieve them.
MEMORY_METHODS: tuple[str, ...] = ("actqkv", "actqkv-paper", "quest", "infllm", "acre")

# How blocks are picked (query-time choices; they do not change the stored KV). A method is a preset
# of these; any of them can be overridden per engine (``Engine(..., scorer="bound")``).
PROBES = ("mean", "activation", "tokens", "activation-tokens")
SCORERS = ("dot", "cosine", "bound", "l1")
TOKEN_REDUCES = ("softmax", "max")
POSITIONS = ("auto", "exact", "fixed")
BUDGET_RULES = ("fixed", "entropy")
# How offloaded blocks are held in host memory: the model's dtype, or int8 with per-group scales.
HOST_KV_DTYPES = ("model", "int8")


def resolve_offload(setting: bool | str, on_accelerator: bool) -> bool:
    """Whether blocks go to host memory: ``offload`` True, or ``"auto"`` on an accelerator."""
    return setting is True or (setting == "auto" and on_accelerator)
SELECTION_OPTIONS = ("probe", "scorer", "token_reduce", "per_head", "positions", "budget_rule", "keep_edges")
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # the measured default (docs/method.md, "Ablation"): every query token and every KV head scores
    # blocks by their key bounds; tokens weighted by activation bias; entropy-shared budget; the
    # scorer names 16x the average blocks per layer as candidates; the question's exact attention
    # reranks all of them, and each answer token reranks them again (scoring every block anew when a
    # block leaves the window or after 32 tokens). The question reranked only the best 8x from
    # 2026-12-03 to 12-05: one sample in eight at 30K then lost a quarter of a layer's mass
    # (docs/benchmarks.md, "The question reranks every candidate again")
    "actqkv": dict(probe="activation-tokens", scorer="bound", token_reduce="softmax", per_head=True,
                   positions="auto", budget_rule="entropy", keep_edges=True, rerank=16,
                   question_rerank=16, reselect_every=1, rescore_every=32),
    # ActQKV as published: activation-weighted mean probe, representative-key cosine with the question term
    "actqkv-paper": dict(probe="activation", scorer="cosine", token_reduce="softmax", per_head=False,
                         positions="fixed", budget_rule="entropy", keep_edges=False, rerank=1, question_rerank=1,
                         reselect_every=1, rescore_every=1),
    # Quest (arXiv 2406.10774): per-token, per-head upper bounds, fixed top-k
    "quest": dict(probe="tokens", scorer="bound", token_reduce="max", per_head=True, positions="fixed",
                  budget_rule="fixed", keep_edges=False, rerank=1, question_rerank=1,
                  reselect_every=1, rescore_every=1),
    # InfLLM: mean probe, representative-key dot product, one block set per layer, fixed top-k
    "infllm": dict(probe="mean", scorer="dot", token_reduce="softmax", per_head=False, positions="fixed",
                   budget_rule="fixed", keep_edges=False, rerank=1, question_rerank=1,
                   reselect_every=1, rescore_every=1),
    # ACRE (arXiv 2412.12486, training-free): attention over first-level entries picks the refill;
    # its entropy sets how many blocks
    "acre": dict(probe="tokens", scorer="l1", token_reduce="softmax", per_head=True, positions="fixed",
                 budget_rule="entropy", keep_edges=False, rerank=1, question_rerank=1,
                 reselect_every=1, rescore_every=1),
}

# prefill_chunk="auto": tokens per prefill forward pass on the CPU and on an accelerator (an H100's
# 8B-shape prefill: 128K 9.41 s with 4096, 8.26 s with 16384; docs/benchmarks.md).
PREFILL_CHUNK_CPU = 4096
PREFILL_CHUNK_ACCELERATOR = 16384

# The window ActQKV's defaults were tuned for (Llama-3-8B-Instruct).
REFERENCE_WINDOW = 8192
# ActQKV clamps each layer's share to [32, 92] blocks around an average of 46.
MIN_BLOCKS_RATIO = 32 / 46
MAX_BLOCKS_RATIO = 92 / 46

# Options that change the KV stored for a document (a cache built with others is refused).
# The selection options change it too (the prefill's attention uses them): ``kv_options`` adds them.
KV_SHAPING_OPTIONS = ("method", "block_size", "n_sink", "n_local", "exec_block", "repr_topk")
# Options that act only after the document (on the question and the answer): two configs that differ
# in nothing else prefill a document identically (RetrievalConfig.prefill_options).
ANSWER_ONLY_OPTIONS = ("rerank", "question_rerank", "reselect_every", "rescore_every", "decode_graph",
                       "decode_kernel", "decode_compile", "decode_pad_rows", "decode_joined_projections",
                       "decode_static_scoring", "question_batch")


@dataclass(frozen=True)
class RetrievalConfig:
    """How a document is cut into blocks and which of them each step attends to.

    Attributes:
        method: ``actqkv`` (activation-aware probe, cosine score with the question term,
            dynamic cut-off), ``infllm`` (mean probe, dot-product score, fixed top-k),
            ``streaming`` (sinks + local window only) or ``full`` (every token; the reference).
        block_size: tokens per memory block.
        n_sink: initial tokens kept forever ("attention sinks").
        n_local: local window: the most recent tokens each query attends to at their true
            relative positions. Memory tokens sit at this fixed distance from every query.
        exec_block: queries processed together and sharing one retrieval during prefill.
        repr_topk: representative keys averaged into each block's summary key.
        budget: tokens of KV attended per step and layer, on average over layers
            (sinks + local window + retrieved blocks). Layers share ``budget x layers``.
        min_blocks / max_blocks: per-layer clamp of the dynamic cut-off (derived when None).
        question_weight: lambda, the weight of the question term in ActQKV's block score.
        prefill_chunk: tokens sent through the model per forward pass during prefill (attention
            inside is still done per execution block; the result is the same up to float rounding).
            Larger is faster on a GPU and holds more activations at once. "auto": 16384 on an
            accelerator, 4096 on the CPU (models with a native window under 8K: 4096 scaled down,
            on any device). On an H100 the 8B shape's 128K prefill took 9.41 s with 4096 and 8.26 s
            with 16384, 32K 2.00 and 1.89 s (docs/benchmarks.md, twenty-third session).
        offload: keep full blocks in host memory and stream the ones retrieval picks through a
            bounded device-side cache (``"auto"``: only when the model runs on an accelerator).
        device_cache_blocks: capacity of that device-side cache, in blocks per layer.
        host_kv_dtype: how offloaded blocks are held in host memory: ``model`` (the model's dtype) or
            ``int8`` (keys scaled per block, KV head and channel, values per token, as KIVI groups
            them; about half the host memory of bf16, read back dequantized). It changes the
            document's KV (later blocks attend to dequantized ones), so caches record it. Needs
            ``offload`` (True, or ``"auto"`` on an accelerator; on a CPU ``"auto"`` keeps blocks
            unquantized in memory).
        probe: how an execution block's queries ask for blocks: ``mean`` (one mean query),
            ``activation`` (one query, tokens weighted by ActQKV's activation bias), ``tokens``
            (every query token scores blocks) or ``activation-tokens`` (every token, its vote
            weighted by activation bias). None: the method's preset (``METHOD_PRESETS``).
        scorer: how a query scores a block: ``dot`` / ``cosine`` with the block's representative key
            (cosine adds the question term), ``bound`` (Quest's upper bound from per-channel key
            minima and maxima) or ``l1`` (ACRE: attention over first-level entries).
        token_reduce: how per-token scores combine (``tokens`` probes): ``softmax`` (each token's
            softmax over blocks, summed: an estimate of the attention mass) or ``max``.
        per_head: each KV head picks its own blocks (True) or one set per layer (False).
        positions: memory at ``fixed`` angle (InfLLM; reads past the window), at ``exact`` positions
            (exact inside the window; past it only under the model's own rope scaling), or ``auto``:
            exact while the step's positions fit the model's native window, the fixed angle past it.
        budget_rule: ``fixed`` (same number of blocks in every layer) or ``entropy`` (ActQKV's
            dynamic cut-off).
        keep_edges: always pick the block right after the sinks and the one right before the local
            window (from the budget): text that runs on from the always-visible sinks or window
            (e.g. a number whose first digits are the last sink tokens) is not cut in two.
        rerank: while a question is read and its answer decoded, the scorer names ``rerank`` times
            the average blocks per layer (``avg_blocks``; at least the blocks the step picks) as
            candidates in every layer, and the query's exact attention over their keys keeps the
            ones full attention would give the most mass (one softmax with the sinks and window; 1:
            no second stage). Costs reading those candidates' keys each step (they are scored, not
            attended: the per-step KV bound is unchanged). None: the method's preset (16 for
            ``actqkv``: 736 candidates of 32 tokens at the default budget; 1 for the published methods).
        question_rerank: the question's own rerank reads only the best ``question_rerank`` times
            ``avg_blocks`` of those candidates by the scorer's evidence (the one pass over every
            question token and candidate key is most of a question's cost on a CPU: 8 gives back
            ~0.5 s of a 16K document's first token on 2 cores, at some recall); all ``rerank`` x
            ``avg_blocks`` are still named for the answer tokens, whose rerank reads them with one
            query row each (their keys held by the session, or, where the static decode step runs,
            read by it into its own buffers at the answer's first step). At most ``rerank``. None: all the candidates when
            ``rerank`` is given, else the method's preset (16 for ``actqkv``: all of them).
        reselect_every: while an answer is decoded, a layer's selection (the question's, then its
            own) serves this many decode steps before the layer scores and picks again; it picks
            again as soon as a block leaves the window in any case (every ``block_size`` steps). 1:
            every step picks (InfLLM, Quest, the published ActQKV). Reusing a selection skips the
            scoring, ranking and gathering of a step, not its attention: the per-step KV bound is
            unchanged. None: the method's preset.
        rescore_every: while an answer is decoded, the rerank's candidates (``rerank`` > 1) named by
            one scoring of every block serve this many decode steps: each step still reranks them by
            its own exact attention and picks its own blocks, without scoring every block or
            gathering the candidates' keys again; a block leaving the window, or a step allowed more
            than twice the blocks they were named for, scores again. 1: every step scores. None: the method's
            preset (32 for ``actqkv``, 1 for the others).
        l1_budget: ``acre`` only: tokens of first-level entries attended per step (one entry per
            block; the entries with the highest logits when there are more blocks than this).
        batch_prefill: run a prefill chunk's execution blocks as one batch per layer (one scoring,
            top-k, gather and attention; the same result as one by one, up to float rounding) where
            the method allows it (``bound`` scorer with a per-token probe); False always runs the
            reference loop, one execution block at a time; "auto" batches on an accelerator and
            loops on the CPU, where the loop measured faster (docs/benchmarks.md).
        prefill_kernel: what computes a batched chunk's block evidence (``bound`` scorer with
            ``token_reduce="softmax"``, the default's): ``"torch"``: PyTorch ops, which write every
            row's logits over every memory block (``[query heads x tokens, blocks]`` per execution
            block) and read them back several times, a cost that grows with the document;
            ``"triton"``: two Triton passes over the same products that keep those logits in
            registers (retrieval/bound_mass.py; float32 accumulation, so the evidence differs from
            the PyTorch path's bf16 products by their rounding); ``"auto"``: Triton where it runs (a
            CUDA device, Triton installed) and agrees with PyTorch on random bounds of the model's
            shape, checked once per device, else PyTorch (so PyTorch on the CPU). An explicit
            ``"triton"`` that cannot run is an error. On an H100 the passes took the 8B shape's
            128K prefill from 15.1 to 9.3 s and a 1M prefill to 282 s (docs/benchmarks.md). The
            same option picks how the chunk's picked blocks reach its attention's buffers
            (attention/block_gather.py): one Triton kernel that reads each block once and writes
            its keys rotated at their true positions, or PyTorch's gather, rotation and copy;
            "auto" checks the kernel against PyTorch on a session's first chunk of each shape. And it
            picks what computes the chunk's activation bias (``activation-tokens`` probes, the
            default's; retrieval/probe_kernel.py): two Triton kernels reading the queries as they
            are, or PyTorch's float32 copies of them; "auto" checks them on the first chunk. And
            what rotates the queries and a chunk's window keys at their positions
            (attention/rotation.py): one Triton kernel, one read and one write, or PyTorch's five
            float32 passes; "auto" checks it on first use (the 8B shape's 128K prefill 6.06 ->
            5.77 s on an H100).
        decode_graph: run the decode steps that rerank held candidates in every layer (most steps of
            the default method) with static shapes (attention/static_decode.py): on a CUDA device
            captured once as a CUDA graph and replayed, one launch per token instead of dozens per
            layer; in steps where a block leaves the window or candidates are scored again, the
            scoring runs between segments of the same step captured as graphs (CUDA: captured
            itself where ``decode_static_scoring`` applies, else eagerly) or the whole static step
            runs eagerly (CPU). The same selection and attention as the reference
            step up to float rounding.
            ``"auto"``: on CUDA devices; True: also on the CPU, where it runs eagerly (tests); False:
            always the reference step. Its buffers hold ``max(rerank x avg_blocks, max_blocks)``
            candidate blocks per layer (keys and values) beside the window, one row per answer
            decoded at once (one row until ``answer_many`` asks for more), for as long as the engine
            lives (shared with the engines ``with_method`` makes from it, where they fit the same
            buffers).
        decode_kernel: what computes the static decode step's attention (``decode_graph``):
            ``"triton"``: one Triton kernel per layer giving each tile's softmax statistics and
            reading only the visible slots (attention/tile_stats.py); ``"torch"``: PyTorch ops over
            the whole buffer; ``"auto"``: Triton where it runs (a CUDA device, Triton installed) and
            agrees with PyTorch on the buffers' shapes when the buffers are made, else PyTorch.
            An explicit ``"triton"`` that cannot run is an error.
        decode_compile: run the model's own layer code inside the static decode step
            (``decode_graph``) through ``torch.compile``: its norms, the identity rotary our attention
            leaves it, the residual adds and the MLP's activation become a few fused kernels per layer
            instead of ~40 (one compilation serves every layer; our attention stays as it is).
            ``"auto"``: on CUDA devices where Triton runs, falling back to the plain layers with a
            warning if compiling fails; True: also on the CPU (tests; needs a C++ compiler), and a
            failure is an error; False: the model's code as it is. The first decode step of a
            process pays for compiling (~4-6 s more than capturing the graph on the Llama-3.1-8B shape
            on an H200, docs/benchmarks.md; cached on disk by PyTorch for later processes).
        decode_pad_rows: the static decode step (``decode_graph``) runs the model's dense layers on at
            least this many rows, the ones beyond the answers being decoded computed and dropped, so
            that their matrix products have one shape whether one answer decodes or several
            (``answer_many``): the products' kernels are picked by shape and round differently for
            one row than for eight, which is what makes a batch's greedy tokens differ from one-by-one
            answers (the step's attention adds in a fixed order already). 8 (the default): up to 8
            answers decoded together get the bits each gets alone (the 2-core CPU in float32, tests;
            the H200, twentieth session: 8 questions at 32K on the Llama-3.1-8B shape, every token
            the one-by-one token, where 1 gave 67-100% in earlier runs), for ~0.2 ms more per
            one-row graph step there (9.48 -> 9.67 ms, two runs of one lease). 1: no padding.
        decode_joined_projections: the static decode step (``decode_graph``) runs Llama-like layers
            (Llama, Mistral, Qwen2, Qwen3) with the query, key and value projections as one matrix
            product and the MLP's gate and up projections as one: 4 products per layer instead of 7
            (models/joined.py). The weights are joined once; the model's own parameters become views
            of the joined tensors (same values, nothing held twice). Each layer is checked against
            the model's own code on a random input when joined and left to it if they differ.
            False (the default): on an H100 it gave no decode gain beyond one run's spread
            (docs/benchmarks.md, thirtieth session).
        decode_static_scoring: in the static decode step (``decode_graph``), the steps where every
            layer scores every block again (a block left the window, or the held candidates are
            spent) score with static shapes (attention/static_scoring.py): the document's blocks and
            key bounds read where they lie, each row's own blocks from a padded copy of 64 blocks, the
            blocks past each row's count masked; on a GPU each layer's scoring is then one CUDA graph
            replayed between the step's segments (captured after a document's first such step, which
            scores eagerly), instead of ~120 PyTorch calls per layer from Python. The reference's
            candidates up to float rounding (sums over a zero-padded row). ``"auto"``: on CUDA
            devices; True: also on the CPU, eagerly (tests); False: the reference's scoring between
            the segments. Needs the default's scorer (key bounds, softmax over blocks), the
            document's blocks on the device (with ``offload`` on it is off) and a session that added
            at most 64 blocks; other steps score as before. Each row holds ~268 MiB more on the Llama-3.1-8B
            shape (its own blocks' copy).
        question_batch: ``answer_many`` (and ``complete_many``, ``chat_many``) reads its questions
            as rows of one batch (attention/question_rows.py): one set of calls per layer for all of
            them where the method selects as the default does, instead of ~500 per question and layer.
            Where the answers decode through the static decode step (``decode_graph``), a read is
            padded to ``decode_pad_rows`` rows and a multiple of 32 tokens (a question read alone too),
            so that each question gets the bits it gets alone. Off by default, because that padding
            makes a question read alone slower: on an H100 (thirty-fifth session, 8B shape, random
            weights, 32K, 32-token questions) a padded read took 561 ms against ~162 ms unpadded,
            while 8 read together took 724 ms; ``answer_many``'s reads, the sessions' state and the
            first decode steps were bit for bit those of each question read alone (padded). The
            thirty-fourth session's "3.3% of the tokens the same" compared against ``generate_ids``,
            which read unpadded until the thirty-fifth. On the 2-core CPU the reads together were no
            faster (8.95 s against 8.82 s for 8 questions at 8K, SmolLM2-135M shape).
            docs/benchmarks.md, thirty-fourth and thirty-fifth sessions.
        min_refill / max_refill: ``acre`` only: blocks refilled per layer for a fully focused /
            fully diffuse first-level attention (``k = min + (max - min) * H / H_max``); None: derived.
    """

    method: Method = "actqkv"
    block_size: int = 32
    n_sink: int = 64
    n_local: int = 512
    exec_block: int = 256
    repr_topk: int = 4
    budget: int = 2048
    min_blocks: int | None = None
    max_blocks: int | None = None
    question_weight: float = 4.0
    prefill_chunk: int | Literal["auto"] = "auto"
    offload: bool | Literal["auto"] = False
    device_cache_blocks: int = 512
    host_kv_dtype: Literal["model", "int8"] = "model"
    probe: str | None = None
    scorer: str | None = None
    token_reduce: str | None = None
    per_head: bool | None = None
    positions: str | None = None
    budget_rule: str | None = None
    keep_edges: bool | None = None
    l1_budget: int = 256
    rerank: int | None = None
    question_rerank: int | None = None
    reselect_every: int | None = None
    rescore_every: int | None = None
    min_refill: int | None = None
    max_refill: int | None = None
    batch_prefill: bool | Literal["auto"] = "auto"
    prefill_kernel: Literal["auto", "triton", "torch"] = "auto"
    decode_graph: bool | Literal["auto"] = "auto"
    decode_kernel: Literal["auto", "triton", "torch"] = "auto"
    decode_compile: bool | Literal["auto"] = "auto"
    decode_pad_rows: int = 8
    decode_joined_projections: bool = False
    decode_static_scoring: bool | Literal["auto"] = "auto"
    question_batch: bool = False
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived values
    @property
    def uses_memory(self) -> bool:
        return self.method in MEMORY_METHODS

    def selection(self, name: str) -> Any:
        """A selection option (``SELECTION_OPTIONS``): the explicit value, else the method's preset."""
        v = getattr(self, name)
        if v is not None or not self.uses_memory:
            return v
        return METHOD_PRESETS[self.method][name]

    def prefill_chunk_on(self, device: Any) -> int:
        """Tokens per prefill forward pass on ``device`` (``prefill_chunk``, "auto" resolved)."""
        if self.prefill_chunk != "auto":
            return self.prefill_chunk
        return PREFILL_CHUNK_CPU if str(device).startswith("cpu") else PREFILL_CHUNK_ACCELERATOR

    @property
    def acre_range(self) -> tuple[int, int]:
        """(min, max) blocks ``acre`` refills per layer: what the budget leaves beside its L1 entries."""
        room = (self.budget - self.n_sink - self.n_local - self.l1_budget) // self.block_size
        hi = self.max_refill if self.max_refill is not None else room
        lo = self.min_refill if self.min_refill is not None else max(1, hi // 8)
        return lo, hi

    @property
    def bounded(self) -> bool:
        """False only for ``full``: every token stays in the local window."""
        return self.method != "full"

    @property
    def avg_blocks(self) -> int:
        """Retrieved blocks per layer on average: what the budget leaves after sinks and window
        (and, for ``acre``, its first-level entries)."""
        if not self.uses_memory:
            return 0
        if self.method == "acre":
            lo, hi = self.acre_range
            return (lo + hi) // 2
        return (self.budget - self.n_sink - self.n_local) // self.block_size

    @property
    def block_range(self) -> tuple[int, int]:
        """(min, max) blocks one layer may draw in one step."""
        avg = self.avg_blocks
        lo = self.min_blocks if self.min_blocks is not None else max(1, round(avg * MIN_BLOCKS_RATIO))
        hi = self.max_blocks if self.max_blocks is not None else max(lo, round(avg * MAX_BLOCKS_RATIO))
        return min(lo, avg), hi

    @property
    def max_kv_per_layer(self) -> int:
        """The most KV tokens one layer attends to in one step (the per-layer bound)."""
        if not self.bounded:
            raise ConfigError("method 'full' has no per-step bound")
        if self.method == "acre":
            return self.n_sink + self.n_local + self.l1_budget + self.acre_range[1] * self.block_size
        return self.n_sink + self.n_local + self.block_range[1] * self.block_size

    # ----------------------------------------------------------------- construction
    @classmethod
    def for_model(cls, native_window: int, **options: Any) -> "RetrievalConfig":
        """Defaults scaled to a model's native window, then the caller's options on top.

        Models with a window of at least 8K get ActQKV's defaults unchanged; smaller windows
        (tiny test models) get the same proportions scaled down.
        """
        unknown = set(options) - {f.name for f in fields(cls) if not f.name.startswith("_")}
        if unknown:
            raise ConfigError(
                f"unknown retrieval option(s) {sorted(unknown)}; known: "
                f"{sorted(f.name for f in fields(cls) if not f.name.startswith('_'))}"
            )
        if not isinstance(native_window, int) or native_window < 16:
            raise ConfigError(f"native_window must be an integer >= 16, got {native_window!r}")
        base: dict[str, Any] = {}
        if native_window < REFERENCE_WINDOW:
            s = native_window / REFERENCE_WINDOW

            def scaled(v: int, floor: int) -> int:
                return max(floor, int(v * s))

            base = dict(
                block_size=min(32, max(4, native_window // 64)),
                n_sink=scaled(64, 2),
                n_local=scaled(512, 8),
                exec_block=scaled(256, 4),
                budget=scaled(2048, 16),
                l1_budget=scaled(256, 2),
                prefill_chunk=max(16, scaled(4096, 16)),
            )
            base["budget"] = max(base["budget"], base["n_sink"] + base["n_local"] + 2 * base["block_size"])
        base.update(options)
        cfg = cls(**base, _explicit=frozenset(options))
        cfg.check_window(native_window)
        return cfg

    def replace(self, **options: Any) -> "RetrievalConfig":
        explicit = self._explicit | frozenset(options)
        return dataclasses.replace(self, **options, _explicit=explicit)

    def kv_options(self) -> dict[str, Any]:
        """The options that change a document's stored KV (recorded in cache manifests): the layout,
        and the selection options that differ from the method's preset (the prefill attends with them)."""
        out = {name: getattr(self, name) for name in KV_SHAPING_OPTIONS}
        if self.host_kv_dtype != "model":   # recorded only when it departs (older caches keep their keys)
            out["host_kv_dtype"] = self.host_kv_dtype
        for name in SELECTION_OPTIONS:
            if getattr(self, name) is not None and self.uses_memory \
                    and getattr(self, name) != METHOD_PRESETS[self.method][name]:
                out[name] = getattr(self, name)
        return out

    def prefill_options(self) -> dict[str, Any]:
        """Every option a prefill depends on (all but ``ANSWER_ONLY_OPTIONS``, presets resolved):
        configs with equal ``prefill_options`` prefill a document to the same KV and retrieval state,
        so one prefill may serve them all (``bench recall`` shares it across variants)."""
        out = {k: v for k, v in self.to_dict().items() if k not in ANSWER_ONLY_OPTIONS}
        if self.uses_memory:
            out.update({name: self.selection(name) for name in SELECTION_OPTIONS})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        ints = ("block_size", "n_sink", "n_local", "exec_block", "repr_topk", "budget", "device_cache_blocks")
        for name in ints:
            v = getattr(self, name)
            if not is_int(v):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        positive = {"block_size": 1, "n_local": 1, "exec_block": 1, "repr_topk": 1, "budget": 1,
                    "device_cache_blocks": 1, "n_sink": 0}
        for name, lo in positive.items():
            if getattr(self, name) < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if self.prefill_chunk != "auto" and not (is_int(self.prefill_chunk) and self.prefill_chunk >= 1):
            raise ConfigError(f"prefill_chunk must be an integer >= 1 or 'auto', got {self.prefill_chunk!r}")
        if self.repr_topk > self.block_size:
            raise ConfigError(f"repr_topk ({self.repr_topk}) cannot exceed block_size ({self.block_size})")
        if self.exec_block + self.block_size > self.n_local:
            raise ConfigError(
                f"n_local ({self.n_local}) must be at least exec_block + block_size "
                f"({self.exec_block} + {self.block_size}): the window has to hold one execution "
                "block plus one block waiting to be evicted"
            )
        if not is_number(self.question_weight) \
                or not (0 <= self.question_weight < float("inf")):
            raise ConfigError(f"question_weight must be a finite number >= 0, got {self.question_weight!r}")
        choices = {"probe": PROBES, "scorer": SCORERS, "token_reduce": TOKEN_REDUCES,
                   "positions": POSITIONS, "budget_rule": BUDGET_RULES}
        for name, allowed in choices.items():
            v = getattr(self, name)
            if v is not None and v not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)} (or None for the method's "
                                  f"preset), got {v!r}")
        for name in ("per_head", "keep_edges"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"{name} must be True, False or None, got {getattr(self, name)!r}")
        if (self.scorer == "l1") != (self.method == "acre") and self.scorer is not None:
            raise ConfigError("scorer 'l1' is ACRE's first level: only with method 'acre', which needs it")
        if self.uses_memory and self.selection("scorer") == "cosine" and self.selection("per_head"):
            raise ConfigError("scorer 'cosine' compares one concatenated query with one block summary: "
                              "it picks one block set per layer (per_head=False)")
        if self.uses_memory and self.selection("scorer") in ("dot", "cosine") \
                and self.selection("probe") in ("tokens", "activation-tokens"):
            raise ConfigError(f"scorer {self.selection('scorer')!r} takes one probe query: use probe "
                              "'mean' or 'activation' (per-token probes go with 'bound' or 'l1')")
        for name in ("l1_budget", "rerank", "question_rerank", "reselect_every", "rescore_every"):
            v = getattr(self, name)
            if (v is not None or name == "l1_budget") and (not is_int(v) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.question_rerank is not None and self.uses_memory \
                and self.question_rerank > self.selection("rerank"):
            raise ConfigError(f"question_rerank ({self.question_rerank}) reads a share of the rerank's "
                              f"candidates: at most rerank ({self.selection('rerank')})")
        for name in ("min_refill", "max_refill"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 0):
                raise ConfigError(f"{name} must be a non-negative integer or None, got {v!r}")
        if self.method == "acre":
            lo, hi = self.acre_range
            if hi < max(lo, 1):
                raise ConfigError(
                    f"acre: the budget ({self.budget}) leaves room for {hi} refilled block(s) after sinks "
                    f"({self.n_sink}), window ({self.n_local}) and L1 entries ({self.l1_budget}); it needs "
                    f"at least max(min_refill, 1) = {max(lo, 1)}: raise the budget or lower l1_budget")
        for name in ("batch_prefill", "decode_graph", "decode_compile", "decode_static_scoring"):
            v = getattr(self, name)
            if not (isinstance(v, bool) or v == "auto"):
                raise ConfigError(f"{name} must be True, False or 'auto', got {v!r}")
        if not isinstance(self.question_batch, bool):
            raise ConfigError(f"question_batch must be True or False, got {self.question_batch!r}")
        if not isinstance(self.decode_joined_projections, bool):
            raise ConfigError(f"decode_joined_projections must be True or False, got {self.decode_joined_projections!r}")
        if not is_int(self.decode_pad_rows) or not 1 <= self.decode_pad_rows <= 64:
            raise ConfigError(f"decode_pad_rows must be an integer from 1 to 64, got {self.decode_pad_rows!r}")
        for name in ("prefill_kernel", "decode_kernel"):
            if getattr(self, name) not in ("auto", "triton", "torch"):
                raise ConfigError(f"{name} must be 'auto', 'triton' or 'torch', got {getattr(self, name)!r}")
        if self.offload not in (True, False, "auto"):
            raise ConfigError(f"offload must be True, False or 'auto', got {self.offload!r}")
        if self.host_kv_dtype not in HOST_KV_DTYPES:
            raise ConfigError(f"host_kv_dtype must be one of {', '.join(HOST_KV_DTYPES)}; got {self.host_kv_dtype!r}")
        if self.host_kv_dtype != "model" and self.offload is False:
            raise ConfigError(f"host_kv_dtype={self.host_kv_dtype!r} is how offloaded blocks are held: "
                              "it needs offload=True (or 'auto')")
        if self.uses_memory:
            need = self.n_sink + self.n_local + self.block_size
            if self.budget < need:
                raise ConfigError(
                    f"budget ({self.budget}) must cover the sinks, the local window and at least one "
                    f"block: >= n_sink + n_local + block_size = {need}"
                )
            for name in ("min_blocks", "max_blocks"):
                v = getattr(self, name)
                if v is not None and (not is_int(v) or v < 0):
                    raise ConfigError(f"{name} must be a non-negative integer or None, got {v!r}")
            lo, hi = self.block_range
            if self.method != "acre" and hi < max(lo, 1):  # acre draws from acre_range, checked above
                raise ConfigError(f"max_blocks ({hi}) must be >= max(min_blocks, 1) ({max(lo, 1)})")
            if hi < self.avg_blocks:
                raise ConfigError(
                    f"max_blocks ({hi}) is below the average the budget gives each layer "
                    f"({self.avg_blocks}); raise it or lower the budget"
                )

    def check_window(self, native_window: int) -> None:
        """Refuse a layout whose distances exceed what the model was trained on."""
        if self.bounded and self.n_local + self.block_size > native_window:
            raise ConfigError(
                f"n_local + block_size ({self.n_local} + {self.block_size}) exceeds the model's native "
                f"window ({native_window}): memory would sit at distances the model never saw"
            )
