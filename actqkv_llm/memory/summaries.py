"""Summary keys: the always-resident first level of a document's memory (ACRE's L1, InfLLM's
representative keys). One vector per KV head and block, on the compute device."""

from __future__ import annotations

import torch

from ..retrieval.score import inverse_norms


def representative_keys(keys: torch.Tensor, scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Summaries of blocks: per KV head, the mean of the ``topk`` keys that received the most attention.

    keys: ``[n, Hkv, B, d]`` (unrotated); scores: ``[n, Hkv, B]`` attention mass each token received
    while it sat in the local window. Returns ``[n, Hkv, d]``.
    """
    top = scores.topk(topk, dim=-1).indices  # [n, Hkv, topk]
    picked = keys.gather(2, top.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1]))
    return picked.float().mean(2).to(keys.dtype)


class SummaryKeys:
    """Growing ``[n, Hkv, d]`` summaries, optionally on top of a shared read-only base."""

    def __init__(self, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str,
                 base: torch.Tensor | None = None, capacity: int = 16):
        self.device, self.dtype = torch.device(device), dtype
        self.base = base  # [n_base, Hkv, d] shared with the document, never written
        self._own = torch.empty((capacity, kv_heads, head_dim), dtype=dtype, device=self.device)
        self.n_own = 0
        self._inv: dict[str, tuple[int, torch.Tensor]] = {}  # part -> (blocks covered, 1/norm)

    @property
    def n_blocks(self) -> int:
        return (0 if self.base is None else self.base.shape[0]) + self.n_own

    def append(self, s: torch.Tensor) -> None:
        n = s.shape[0]
        if self.n_own + n > self._own.shape[0]:
            new = torch.empty((max(2 * self._own.shape[0], self.n_own + n), *self._own.shape[1:]),
                              dtype=self.dtype, device=self.device)
            new[: self.n_own] = self._own[: self.n_own]
            self._own = new
        self._own[self.n_own: self.n_own + n] = s.to(self.device, self.dtype)
        self.n_own += n

    def parts(self) -> list[torch.Tensor]:
        """The summaries as a list of ``[n_i, Hkv, d]`` tensors (scored part by part, never copied)."""
        out = [] if self.base is None or self.base.shape[0] == 0 else [self.base]
        if self.n_own:
            out.append(self._own[: self.n_own])
        return out

    def inverse_norms(self) -> list[torch.Tensor]:
        """``1 / ||summary||`` per block for each of :meth:`parts` (cached; a part only grows)."""
        out = []
        for name, part in zip(("base", "own") if self.base is not None and self.base.shape[0] else ("own",),
                              self.parts()):
            seen, inv = self._inv.get(name, (0, None))
            if seen != part.shape[0]:
                fresh = inverse_norms(part[seen:])
                inv = fresh if inv is None else torch.cat([inv, fresh])
                self._inv[name] = (part.shape[0], inv)
            out.append(inv)
        return out

    def all(self) -> torch.Tensor:
        parts = self.parts()
        if not parts:
            return self._own[:0]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def fork(self) -> "SummaryKeys":
        """A new view whose base is everything here now; appends to it do not touch this one."""
        return SummaryKeys(self._own.shape[1], self._own.shape[2], self.dtype, self.device, base=self.all())
