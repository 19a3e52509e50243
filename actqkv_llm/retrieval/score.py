"""Block scores: how well each block's summary keys match a probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dot_scores(probe: torch.Tensor, summaries: list[torch.Tensor]) -> torch.Tensor:
    """InfLLM: dot product of the probe with each block's summary, heads concatenated.

    probe ``[Hkv, d]``; summaries: parts of ``[n_i, Hkv, d]``. Returns ``[sum n_i]``.
    """
    p = probe.reshape(-1).float()
    return torch.cat([s.reshape(s.shape[0], -1).float() @ p for s in summaries])


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
