"""Decoding: sampling options, stop strings, and text that streams out piece by piece."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from .errors import InputError, is_int

# A generation is caught in a loop when its last tokens are copies of one period of at most
# REPEAT_MAX_PERIOD tokens, at least REPEAT_MIN_COPIES copies covering at least REPEAT_MIN_SPAN tokens
# (so a short run such as the digits of "1111111" never counts).
REPEAT_MAX_PERIOD = 32
REPEAT_MIN_COPIES = 3
REPEAT_MIN_SPAN = 32


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen. ``temperature == 0`` is greedy (the default)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stop_on_repetition: bool = True  # end the answer when it loops (see repeating_period)

    @classmethod
    def make(cls, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             stop: str | Iterable[str] | None = None, seed: int | None = None,
             stop_on_repetition: bool = True) -> "Sampling":
        if not is_int(max_new_tokens) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 100:
            raise InputError(f"temperature must be a number in [0, 100], got {temperature!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
        if stop is None:
            stops: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stops = (stop,)
        else:
            stops = tuple(stop)
        if any(not isinstance(s, str) or not s for s in stops):
            raise InputError(f"stop must be non-empty strings, got {stop!r}")
        if not isinstance(stop_on_repetition, bool):
            raise InputError(f"stop_on_repetition must be True or False, got {stop_on_repetition!r}")
        return cls(max_new_tokens, float(temperature), float(top_p), stops, seed, stop_on_repetition)


def repeating_period(ids: list[int], max_period: int = REPEAT_MAX_PERIOD, min_copies: int = REPEAT_MIN_COPIES,
                     min_span: int = REPEAT_MIN_SPAN) -> int | None:
    """The period ``p <= max_period`` that the tail of ``ids`` repeats, or None.

    The last ``max(min_copies * p, min_span)`` tokens must all equal the token ``p`` before them:
    e.g. one token 32 times, a 4-token phrase 8 times, a 20-token sentence 3 times.
    """
    n = len(ids)
    for p in range(1, max_period + 1):
        span = max(min_copies * p, min_span)
        if span > n:
            return None  # span only grows with p
        if ids[-1] != ids[-1 - p]:
            continue
        start = n - span
        if all(ids[i] == ids[i + p] for i in range(start, n - p)):
            return p
    return None


def choose_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Pick the next token from float32 logits ``[V]``."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, -1)
    if sampling.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < sampling.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@dataclass
class TextAssembler:
    """Turns generated token ids into text pieces, holding back what might still become a stop
    string or an incomplete UTF-8 character, and cutting the text before the first stop string."""

    tokenizer: object
    stops: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    emitted: int = 0
    stopped: bool = False

    @property
    def text(self) -> str:
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stops:
            i = full.find(s)
            if i != -1:
                full = full[:i]
        return full

    def add(self, token: int) -> str:
        """Add a token; returns the new text that is safe to show now ('' if none)."""
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = len(full)
        for s in self.stops:
            i = full.find(s)
            if i != -1 and i < cut:
                cut, self.stopped = i, True
        if not self.stopped:
            hold = max((len(s) - 1 for s in self.stops), default=0)
            # hold back a tail that could be the start of a stop string
            for h in range(min(hold, cut), 0, -1):
                if any(s.startswith(full[cut - h:cut]) for s in self.stops):
                    cut -= h
                    break
            if full[cut - 1:cut] == "\ufffd":  # an unfinished multi-byte character
                cut -= 1
        piece = full[self.emitted:cut] if cut > self.emitted else ""
        self.emitted = max(self.emitted, cut)
        return piece

    def flush(self) -> str:
        """The rest of the text at the end of generation."""
        final = self.text
        piece = final[self.emitted:] if len(final) > self.emitted else ""
        self.emitted = len(final)
        return piece
