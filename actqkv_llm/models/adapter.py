"""One small adapter per architecture family: where the layers, embeddings and rotary tables are,
and which layers are sliding-window layers. Everything model-specific lives here.

We drive the decoder layers ourselves with identity rotary (cos=1, sin=0), so the model's own
attention code hands our attention function queries and keys WITHOUT position; q/k norms (Qwen3,
Gemma3), biases (Qwen2) and scalings stay the model's own.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass

import torch

from ..attention.rope import signed_sin
from ..errors import UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
# where a decoder layer keeps its joined projections (models/joined.py), for every adapter on the model
JOINED_ATTR = "_actqkv_joined"
GLOBAL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class LayerKind:
    memory: bool            # global layer: may keep memory blocks (sliding layers never do)
    window: int | None      # sliding window of a sliding layer, else None
    rope_type: str          # which rotary table this layer uses


def call_layer(layer: torch.nn.Module, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               attention_kwargs: dict) -> torch.Tensor:
    """One decoder layer as we drive it: no mask, no cache, the given rotary tables."""
    # No cache argument at all: it defaults to None, and naming it (past_key_values / cache)
    # draws a FutureWarning from transformers 5.x that lands in the middle of the progress bar.
    out = layer(hidden, attention_mask=None, position_embeddings=rope, position_ids=None, use_cache=False,
                **attention_kwargs)
    return out[0] if isinstance(out, tuple) else out


class ModelAdapter:
    def __init__(self, model: torch.nn.Module):
        cfg = getattr(model.config, "text_config", None) or model.config
        mt = getattr(cfg, "model_type", None)
        if mt not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"model type {mt!r} is not supported; supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self.model, self.config, self.model_type = model, cfg, mt
        self.backbone = model.model
        self.layers = list(self.backbone.layers)
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.native_window = int(cfg.max_position_embeddings)
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)
        types = list(getattr(cfg, "layer_types", None) or [GLOBAL] * self.n_layers)
        sw = getattr(cfg, "sliding_window", None)
        self.kinds = [LayerKind(memory=(t != SLIDING), window=(sw if t == SLIDING else None), rope_type=t)
                      for t in types]
        self._rope_takes_type = "layer_type" in inspect.signature(self.backbone.rotary_emb.forward).parameters
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._compiled = None     # compiled_layer(), made on first use
        self._compiled_joined = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def memory_layers(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k.memory]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(ids)

    def identity_rope(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = hidden.shape[1]
        ones = torch.ones((1, t, self.head_dim), dtype=hidden.dtype, device=hidden.device)
        return ones, torch.zeros_like(ones)

    def run_layer(self, i: int, hidden: torch.Tensor, **attention_kwargs) -> torch.Tensor:
        """Decoder layer ``i`` on ``[B, T, D]`` hidden states, with identity rotary and our attention's
        arguments."""
        return call_layer(self.layers[i], hidden, self.identity_rope(hidden), attention_kwargs)

    def layer_caller(self, compiled: bool = False, joined: bool = False):
        """How to call one decoder layer as :func:`call_layer` does: the compiled one
        (:meth:`compiled_layer`) or the plain function; ``joined``: with the layer's projections
        joined where :meth:`join_projections` joined them (:func:`~actqkv_llm.models.joined.joined_layer_call`).
        Attention code calls layers through this, so it never imports the model layer."""
        if not joined:
            return self.compiled_layer() if compiled else call_layer
        from .joined import joined_layer_call

        attention = self._attention_function()
        run_joined = self.compiled_joined() if compiled else joined_layer_call
        run_plain = self.compiled_layer() if compiled else call_layer

        def call(layer, hidden, rope, attention_kwargs):
            j = getattr(layer, JOINED_ATTR, None)
            if j is None:
                return run_plain(layer, hidden, rope, attention_kwargs)
            return run_joined(layer, j, hidden, attention, attention_kwargs)
        return call

    def join_projections(self) -> int:
        """Join the query/key/value and the gate/up projections of every Llama-like layer
        (:mod:`~actqkv_llm.models.joined`; the model's parameters become views of the joined
        weights), once per model: a layer keeps its joined weights as ``JOINED_ATTR``, which every
        adapter on the model reads. Each layer is checked against the model's own layer on a random
        input (one whose result differs beyond its dtype's rounding is left to the model's code, with
        a warning). Returns how many layers run joined."""
        from .joined import JOINABLE, joinable

        with self._lock:
            attention = self._attention_function()
            if self.model_type not in JOINABLE or attention is None:   # None: transformers' eager code
                return 0
            n = 0
            for i, layer in enumerate(self.layers):
                j = getattr(layer, JOINED_ATTR, None)
                if j is None or layer.self_attn.q_proj.weight.data_ptr() != j.qkv.data_ptr() \
                        or layer.mlp.gate_proj.weight.data_ptr() != j.gate_up.data_ptr():
                    j = self._join_checked(i, layer, attention) if joinable(layer) else None
                    setattr(layer, JOINED_ATTR, j)
                n += j is not None
            return n

    def _join_checked(self, i: int, layer: torch.nn.Module, attention):
        """Layer ``i``'s projections joined (:func:`~actqkv_llm.models.joined.join_projections`) if the
        joined call gives the model's own result on a random input, else None (with a warning)."""
        from .joined import join_projections, joined_layer_call

        x = torch.randn((1, 1, self.config.hidden_size), generator=torch.Generator().manual_seed(i)).to(
            device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            want = call_layer(layer, x, self.identity_rope(x), {})
        j = join_projections(layer)
        with torch.inference_mode():
            got = joined_layer_call(layer, j, x, attention, {})
        tol = 1e-4 if self.dtype in (torch.float32, torch.float64) else 3e-2
        if torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * float(want.float().abs().max())):
            return j
        import warnings
        warnings.warn(f"decode_joined_projections: layer {i} with joined projections differs from the model's layer "
                      f"(largest difference {float((got - want).abs().max()):.3g}); it runs the model's code",
                      RuntimeWarning, stacklevel=3)
        return None

    def _attention_function(self):
        """The attention function the model's layers call (the one registered for its implementation)."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS.get(self.config._attn_implementation)

    def compiled_joined(self):
        """:func:`~actqkv_llm.models.joined.joined_layer_call` through ``torch.compile`` (as
        :meth:`compiled_layer`)."""
        from .joined import joined_layer_call

        with self._lock:
            if self._compiled_joined is None:
                self._compiled_joined = torch.compile(joined_layer_call)
        return self._compiled_joined

    def compiled_layer(self):
        """:func:`call_layer` through ``torch.compile`` (made once per adapter, compiled at its first
        call): one compilation serves every layer of the model, whose parameters it takes as inputs;
        a second batch size compiles once more for any batch size (PyTorch's automatic dynamic
        shapes). Our attention function is left out (``torch.compiler.disable``), so a layer runs as
        the fused code before it, our attention, and the fused code after."""
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(call_layer)
        return self._compiled

    def last_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on the last position of ``[B, T, D]`` hidden states -> float32 ``[B, V]``."""
        x = self.backbone.norm(hidden[:, -1])
        logits = self.model.lm_head(x).float()
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def rope_table(self, rope_type: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and signed sin (see :func:`~actqkv_llm.attention.rope.signed_sin`) ``[>=n, d]``
        for positions 0..n-1 of one layer type (cached, grows by doubling)."""
        table = self._tables.get(rope_type)
        if table is None or table[0].shape[0] < n:
            with self._lock:
                table = self._tables.get(rope_type)
                if table is None or table[0].shape[0] < n:
                    size = max(n, 2 * (0 if table is None else table[0].shape[0]), 1024)
                    pos = torch.arange(size, device=self.device)[None]
                    x = torch.zeros(1, dtype=torch.float32, device=self.device)
                    args = (rope_type,) if self._rope_takes_type else ()
                    cos, sin = self.backbone.rotary_emb(x, pos, *args)
                    table = (cos[0].float(), signed_sin(sin[0].float()))
                    self._tables[rope_type] = table
        return table
