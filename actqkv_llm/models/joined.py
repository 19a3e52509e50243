"""Llama-like decoder layers run with their projections joined: the query, key and value projections
as one matrix product, and the MLP's gate and up projections as one (``decode_joined_projections``).

A decode step's products are matrix-vector-like (a few rows against each weight): each launches its
own kernel, and cuBLAS splits the narrow ones (keys and values: 1,024 outputs on the Llama-3.1-8B
shape) into partial products plus a reduction kernel. Joined, a layer runs 4 products instead of 7.
The weights are joined once per layer and the model's own parameters become views of the joined
tensors (the same values in the same memory: nothing is held twice, and the model's ``forward`` runs
unchanged). :func:`joined_layer_call` then does what the model's layer does around our attention
(its norms, q/k norms, biases, residuals and activation are the model's own modules), without the
identity rotary the engine hands a layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# layer code this module reproduces (transformers' Llama, Mistral, Qwen2 and Qwen3 decoder layers)
JOINABLE = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class JoinedProjections:
    """One layer's joined weights: ``qkv`` ``[(H + 2 Hkv) d, D]`` (and its bias, Qwen2), ``gate_up``
    ``[2 F, D]``; how ``qkv``'s output splits into query, key and value features."""

    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor
    split: tuple[int, int, int]


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and not hasattr(m, "_hf_hook") and m.weight.device.type != "meta"


def joinable(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` has the Llama-like shape :func:`joined_layer_call` reproduces: plain linear
    projections on one device and dtype, biases only on query, key and value (all or none), a
    gated MLP, and the residual norms."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if attn is None or mlp is None or not all(hasattr(attn, n) for n in names) \
            or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")) \
            or not all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm")):
        return False
    lin = [getattr(attn, n) for n in names] + [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if not all(_plain_linear(m) for m in lin):
        return False
    if len({(m.weight.device, m.weight.dtype) for m in lin}) != 1:
        return False
    biases = [m.bias is not None for m in lin[:3]]
    return (all(biases) or not any(biases)) and attn.o_proj.bias is None and not any(
        m.bias is not None for m in lin[4:])


def _as_views(joined: torch.Tensor, modules: list[torch.nn.Linear], attr: str) -> None:
    """Each module's ``attr`` parameter replaced by its rows of ``joined`` (the same values; the
    parameter's ``requires_grad`` kept)."""
    a = 0
    for m in modules:
        old = getattr(m, attr)
        n = old.shape[0]
        setattr(m, attr, torch.nn.Parameter(joined[a:a + n], requires_grad=old.requires_grad))
        a += n


def join_projections(layer: torch.nn.Module) -> JoinedProjections:
    """Join ``layer``'s query/key/value and gate/up weights (one layer at a time: at most one layer's
    projections exist twice while joining) and leave its parameters as views of them. The joined
    tensors are plain ones even when joined under ``torch.inference_mode`` (the model's parameters
    must stay usable outside it)."""
    with torch.inference_mode(False), torch.no_grad():
        return _join(layer)


def _join(layer: torch.nn.Module) -> JoinedProjections:
    attn, mlp = layer.self_attn, layer.mlp
    qkv_mods = [attn.q_proj, attn.k_proj, attn.v_proj]
    qkv = torch.cat([m.weight for m in qkv_mods])
    bias = torch.cat([m.bias for m in qkv_mods]) if attn.q_proj.bias is not None else None
    split = tuple(m.weight.shape[0] for m in qkv_mods)
    _as_views(qkv, qkv_mods, "weight")
    if bias is not None:
        _as_views(bias, qkv_mods, "bias")
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    _as_views(gate_up, [mlp.gate_proj, mlp.up_proj], "weight")
    return JoinedProjections(qkv, bias, gate_up, split)


def joined_layer_call(layer: torch.nn.Module, joined: JoinedProjections, hidden: torch.Tensor,
                      attention, attention_kwargs: dict) -> torch.Tensor:
    """What the model's Llama-like ``layer`` computes on ``hidden`` ``[B, T, D]`` with identity
    rotary (:func:`~actqkv_llm.models.adapter.call_layer`), with the joined products.
    ``attention``: the registered attention function the model's own layer would call."""
    attn, mlp = layer.self_attn, layer.mlp
    b, t, _ = hidden.shape
    d = attn.head_dim
    x = layer.input_layernorm(hidden)
    q, k, v = F.linear(x, joined.qkv, joined.qkv_bias).split(joined.split, -1)
    q, k, v = q.view(b, t, -1, d), k.view(b, t, -1, d), v.view(b, t, -1, d)
    if hasattr(attn, "q_norm"):   # Qwen3: per-head norms before the (identity) rotary
        q, k = attn.q_norm(q), attn.k_norm(k)
    out, _ = attention(attn, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None,
                       dropout=0.0, scaling=attn.scaling, **attention_kwargs)
    hidden = hidden + attn.o_proj(out.reshape(b, t, -1))
    gate, up = F.linear(layer.post_attention_layernorm(hidden), joined.gate_up).chunk(2, -1)
    return hidden + mlp.down_proj(mlp.act_fn(gate) * up)
