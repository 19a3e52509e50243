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

from .errors import ConfigError

Method = Literal["actqkv", "infllm", "streaming", "full"]
METHODS: tuple[str, ...] = ("actqkv", "infllm", "streaming", "full")

# The window ActQKV's defaults were tuned for (Llama-3-8B-Instruct).
REFERENCE_WINDOW = 8192
# ActQKV clamps each layer's share to [32, 92] blocks around an average of 46.
MIN_BLOCKS_RATIO = 32 / 46
MAX_BLOCKS_RATIO = 92 / 46

# Options that change the KV stored for a document (a cache built with others is refused).
KV_SHAPING_OPTIONS = ("method", "block_size", "n_sink", "n_local", "exec_block", "repr_topk")


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
        prefill_chunk: tokens sent through the model per forward pass during prefill (larger
            is faster on a GPU; attention inside is still done per execution block).
        offload: keep full blocks in host memory and stream the ones retrieval picks through a
            bounded device-side cache (``"auto"``: only when the model runs on an accelerator).
        device_cache_blocks: capacity of that device-side cache, in blocks per layer.
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
    prefill_chunk: int = 4096
    offload: bool | Literal["auto"] = False
    device_cache_blocks: int = 512
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived values
    @property
    def uses_memory(self) -> bool:
        return self.method in ("actqkv", "infllm")

    @property
    def bounded(self) -> bool:
        """False only for ``full``: every token stays in the local window."""
        return self.method != "full"

    @property
    def avg_blocks(self) -> int:
        """Retrieved blocks per layer on average: what the budget leaves after sinks and window."""
        if not self.uses_memory:
            return 0
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
        """The options that change a document's stored KV (recorded in cache manifests)."""
        return {name: getattr(self, name) for name in KV_SHAPING_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        ints = ("block_size", "n_sink", "n_local", "exec_block", "repr_topk", "budget",
                "prefill_chunk", "device_cache_blocks")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        positive = {"block_size": 1, "n_local": 1, "exec_block": 1, "repr_topk": 1, "budget": 1,
                    "prefill_chunk": 1, "device_cache_blocks": 1, "n_sink": 0}
        for name, lo in positive.items():
            if getattr(self, name) < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if self.repr_topk > self.block_size:
            raise ConfigError(f"repr_topk ({self.repr_topk}) cannot exceed block_size ({self.block_size})")
        if self.exec_block + self.block_size > self.n_local:
            raise ConfigError(
                f"n_local ({self.n_local}) must be at least exec_block + block_size "
                f"({self.exec_block} + {self.block_size}): the window has to hold one execution "
                "block plus one block waiting to be evicted"
            )
        if isinstance(self.question_weight, bool) or not isinstance(self.question_weight, (int, float)) \
                or not (0 <= self.question_weight < float("inf")):
            raise ConfigError(f"question_weight must be a finite number >= 0, got {self.question_weight!r}")
        if self.offload not in (True, False, "auto"):
            raise ConfigError(f"offload must be True, False or 'auto', got {self.offload!r}")
        if self.uses_memory:
            need = self.n_sink + self.n_local + self.block_size
            if self.budget < need:
                raise ConfigError(
                    f"budget ({self.budget}) must cover the sinks, the local window and at least one "
                    f"block: >= n_sink + n_local + block_size = {need}"
                )
            for name in ("min_blocks", "max_blocks"):
                v = getattr(self, name)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise ConfigError(f"{name} must be a non-negative integer or None, got {v!r}")
            lo, hi = self.block_range
            if hi < max(lo, 1):
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
