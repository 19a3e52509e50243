"""An answer, and the loop state of one being generated.

:class:`Decoding` is one answer in progress: its session, its text so far and why it stopped. The
engine drives it one token at a time, alone (``Engine.answer``) or beside others in one batch
(``Engine.answer_many``); the stop rules live here once for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .generation import Sampling, TextAssembler, choose_token, repeating_period

if TYPE_CHECKING:
    from .document import Document, Source
    from .session import Session


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int      # document + question tokens the model read
    completion_tokens: int  # tokens generated
    cached_tokens: int      # document tokens served from the prefilled (possibly disk-cached) state


@dataclass(frozen=True)
class Answer:
    text: str
    sources: "list[Source]" = field(default_factory=list)
    usage: Usage = Usage(0, 0, 0)
    finish_reason: str = "stop"  # "stop" (the answer ended) or "length" (max_new_tokens reached)
    # Why it ended, in detail: "eos" (end of turn), "stop_string", "repetition" (caught in a loop:
    # finish_reason is then "stop") or "length".
    stop_reason: str = "eos"


class AnswerStream:
    """Iterate for text pieces as they are generated; ``.answer`` holds the full Answer afterwards."""

    def __init__(self, pieces: Iterator[str | Answer]):
        self._pieces = pieces
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        for item in self._pieces:
            if isinstance(item, Answer):
                self.answer = item
            elif item:
                yield item

    def text(self) -> str:
        """Consume the stream and return the whole answer text."""
        for _ in self:
            pass
        return self.answer.text if self.answer else ""


class TokenLog:
    """The token ids of an answer without text (ids in, ids out: no tokenizer involved)."""

    stopped = False
    text = ""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def add(self, token: int) -> str:
        self.ids.append(token)
        return ""

    def flush(self) -> str:
        return ""


class Decoding:
    """One answer being generated: ``choose(logits)`` picks its next token and applies the stop
    rules (end of turn, a stop string, a repetition loop, the token limit)."""

    def __init__(self, session: "Session", doc: "Document | None", n_prompt: int, sampling: Sampling,
                 text: "TextAssembler | TokenLog", eos_ids: frozenset, logits_processor: Any = None):
        self.session, self.doc, self.n_prompt = session, doc, n_prompt
        self.sampling, self.text, self.eos_ids = sampling, text, eos_ids
        self.logits_processor = logits_processor
        self.generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        self.n_chosen = 0
        self.reason: str | None = None  # why it ended; None while it runs

    def choose(self, logits: torch.Tensor) -> tuple[str, int | None]:
        """Choose the next token from float32 logits ``[V]``: returns the text now safe to show and
        the token to run through the model next (None: the answer has ended)."""
        if self.reason is not None:
            raise RuntimeError("this answer has ended")
        if self.logits_processor is not None:  # e.g. a grammar mask: (generated ids, logits) -> logits
            logits = self.logits_processor(self.text.ids, logits)
        tok = choose_token(logits, self.sampling, self.generator)
        self.n_chosen += 1
        if tok in self.eos_ids:
            self.reason = "eos"
            return "", None
        piece = self.text.add(tok)
        if self.text.stopped:
            self.reason = "stop_string"
        elif self.sampling.stop_on_repetition and repeating_period(self.text.ids) is not None:
            self.reason = "repetition"
        elif self.n_chosen >= self.sampling.max_new_tokens:
            self.reason = "length"
        return piece, (tok if self.reason is None else None)

    def answer(self) -> Answer:
        doc = self.doc
        cached = doc.n_tokens if doc is not None else 0
        reason = self.reason or "length"
        return Answer(text=self.text.text,
                      sources=doc.sources(self.session.attention_mass) if doc is not None else [],
                      usage=Usage(cached + self.n_prompt, len(self.text.ids), cached),
                      finish_reason="length" if reason == "length" else "stop", stop_reason=reason)
