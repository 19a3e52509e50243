"""Block scores: how well each block's summary keys match a probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dot_scores(probe: torch.Tensor, summaries: list[torch.Tensor]) -> torch.Tensor:
    """InfLLM: dot product of the probe with each block's summary, per KV head (their sum over
    heads is InfLLM's score with the heads concatenated).

    probe ``[Hkv, d]``; summaries: parts of ``[n_i, Hkv, d]``. Returns ``[Hkv, sum n_i]``.
    """
    p = probe.float()
    return torch.cat([torch.einsum("nhd,hd->hn", s.float(), p) for s in summaries], 1)


def inverse_norms(summaries: torch.Tensor) -> torch.Tensor:
    """``1 / ||s||`` of each ``[n, Hkv, d]`` summary with its heads concatenated (float32 ``[n]``)."""
    return summaries.reshape(summaries.shape[0], -1).float().norm(dim=1).clamp_min(1e-12).reciprocal()


def cosine_scores(probe: torch.Tensor, summaries: list[torch.Tensor],
                  question: torch.Tensor | None = None, question_weight: float = 0.0,
                  inv_norms: list[torch.Tensor] | None = None) -> torch.Tensor:
    """ActQKV: cosine(probe, summary) + lambda * cosine(question summary, summary).

    Both terms share the summary's norm, so they are one product with
    ``unit(probe) + lambda * unit(question)``. ``inv_norms`` (one ``[n_i]`` per part, see
    :func:`inverse_norms`) saves recomputing the summaries' norms at every step.
    """
    target = F.normalize(probe.reshape(-1).float(), dim=0)
    if question is not None and question_weight != 0:
        target = target + question_weight * F.normalize(question.reshape(-1).float(), dim=0)
    out = []
    for i, s in enumerate(summaries):
        inv = inv_norms[i] if inv_norms is not None else inverse_norms(s)
        out.append((s.reshape(s.shape[0], -1).float() @ target) * inv)
    return torch.cat(out)


def bound_logits(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Quest's upper bound of each query token's best logit in each block.

    q ``[H, T, d]`` (query heads, already at the memory's rotation); lo/hi ``[n, Hkv, d]``.
    ``sum_c max(q_c lo_c, q_c hi_c) = q+ . hi + q- . lo``: two matrix products, in ``dtype`` (the
    model's: a bound only ranks blocks, and bf16 products run on the GPU's matrix units).
    Returns float32 ``[H, T, n]``.
    """
    return bound_logits_parts(q, [(lo, hi)], dtype)


def _signed_parts(q: torch.Tensor, hkv: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` ``[H, T, d]`` grouped by KV head ``[Hkv, G*T, d]`` in ``dtype``, split into its positive
    and negative parts (what :func:`bound_logits` multiplies with the maxima and the minima)."""
    h, t, d = q.shape
    qg = in_dtype(q, dtype).reshape(hkv, (h // hkv) * t, d)
    return qg.clamp(min=0), qg.clamp(max=0)


def bound_logits_parts(q: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:func:`bound_logits` over bounds given in consecutive parts (``LayerMemory.bound_parts``):
    ``[H, T, n]`` for all their blocks, in order. The query's signed parts are made once for all."""
    h, t, _ = q.shape
    pos, neg = _signed_parts(q, parts[0][0].shape[1], dtype)
    # q- . lo, then q+ . hi added to it inside the second product's call (baddbmm): one rounding of
    # the sum in the products' dtype, and three calls per part where two products and a sum took ~15
    # (a decode step that scores again runs them eagerly in every layer)
    u = [torch.baddbmm(torch.bmm(neg, in_dtype(lo, dtype).permute(1, 2, 0)), pos, in_dtype(hi, dtype).permute(1, 2, 0))
         for lo, hi in parts]
    return (u[0] if len(u) == 1 else torch.cat(u, -1)).float().reshape(h, t, -1)


def in_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` (itself, without a call, where it is already)."""
    return x if x.dtype == dtype else x.to(dtype)


def key_logits(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Each query token's logit against one key per block (ACRE's first-level entries).

    q ``[H, T, d]``; keys ``[n, Hkv, d]``. Returns ``[H, T, n]``.
    """
    h, t, d = q.shape
    hkv = keys.shape[1]
    u = torch.matmul(q.float().reshape(hkv, (h // hkv) * t, d), keys.float().permute(1, 2, 0))
    return u.reshape(h, t, -1)


def reduce_tokens(logits: torch.Tensor, weights: torch.Tensor | None, kv_heads: int, how: str,
                  scaling: float) -> torch.Tensor:
    """Per-token block logits ``[H, T, n]`` -> evidence per KV head ``[Hkv, n]``.

    ``softmax``: every query token's softmax over blocks (at the model's scaling), weighted by
    ``weights`` ``[T]`` (None: every token weight 1, as a decode step's one token) and summed over
    the tokens and the query heads of a group: an estimate of the attention mass each block would
    receive. ``max``: the largest logit any of them gives the block.
    """
    h, t, n = logits.shape
    g = logits.view(kv_heads, h // kv_heads, t, n)
    if how == "max":
        return g.amax((1, 2))
    p = torch.softmax(g * scaling, -1)
    if weights is None:
        return p.sum((1, 2))
    return torch.einsum("gstn,t->gn", p, weights.float())
