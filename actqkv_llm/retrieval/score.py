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


def cosine_scores(probe: torch.Tensor, summaries: list[torch.Tensor],
                  question: torch.Tensor | None = None, question_weight: float = 0.0) -> torch.Tensor:
    """ActQKV: cosine(probe, summary) + lambda * cosine(question summary, summary)."""
    p = F.normalize(probe.reshape(-1).float(), dim=0)
    qn = None if question is None or question_weight == 0 else F.normalize(question.reshape(-1).float(), dim=0)
    out = []
    for s in summaries:
        sn = F.normalize(s.reshape(s.shape[0], -1).float(), dim=1)
        sc = sn @ p
        if qn is not None:
            sc = sc + question_weight * (sn @ qn)
        out.append(sc)
    return torch.cat(out)
