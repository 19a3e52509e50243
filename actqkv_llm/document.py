"""Document: a prefilled document's KV memory, ready to answer many questions.

It is immutable once built: every question forks its own :class:`Session` from it, so questions
(also from several threads at once) never see each other's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .session import Session

if TYPE_CHECKING:
    from .engine import Engine

CHAT, RAW = "chat", "raw"


@dataclass(frozen=True)
class Source:
    """A span of the document that retrieval attended to while answering."""

    start: int      # first token (position in the prefilled sequence)
    end: int        # one past the last token
    text: str
    score: float    # share of the attention mass that went to retrieved blocks (0..1)


class Document:
    def __init__(self, engine: "Engine", state: Session, token_ids: torch.Tensor, text: str,
                 layout: str, last_logits: torch.Tensor, key: str | None = None, path: Path | None = None):
        self.engine, self._state = engine, state
        self.token_ids, self.text, self.layout = token_ids.cpu(), text, layout
        self.last_logits = last_logits
        self.key, self.path = key, path

    def __repr__(self) -> str:
        return f"Document({self.n_tokens} tokens, {self.n_blocks} blocks, layout={self.layout!r}, key={self.key!r})"

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def n_blocks(self) -> int:
        layers = self.engine.adapter.memory_layers
        return self._state.memory[layers[0]].n_blocks if layers else 0

    @property
    def state(self) -> Session:
        """The prefilled state (read-only: use :meth:`session` to run more tokens)."""
        return self._state

    def session(self, engine: "Engine | None" = None) -> Session:
        """A fresh session for one question, starting right after the document; with ``engine``
        (one whose ``kv_options`` match this document's), under that engine's retrieval options."""
        if engine is None:
            return self._state.fork()
        return self._state.fork(engine.config, engine.method)

    def block_span(self, block: int) -> tuple[int, int]:
        """Token range ``[start, end)`` of memory block ``block``."""
        cfg = self.engine.config
        start = cfg.n_sink + block * cfg.block_size
        return start, start + cfg.block_size

    def sources(self, mass: dict[int, float], top: int = 4) -> list[Source]:
        """The document blocks that received the most attention mass, in decreasing order."""
        own = {b: m for b, m in mass.items() if b < self.n_blocks}
        total = sum(own.values()) or 1.0
        out = []
        for b, m in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
            start, end = self.block_span(b)
            text = self.engine.tokenizer.decode(self.token_ids[start:end].tolist()) if self.engine.tokenizer else ""
            out.append(Source(start, end, text, m / total))
        return out

    def save(self, path: str | Path | None = None, kv_dtype: str | None = None) -> Path:
        """Write this document's KV memory to disk (default: under the engine's cache root): see
        :meth:`Engine.save`."""
        return self.engine.save(self, path, kv_dtype=kv_dtype)
