"""Does a tokenizer read text the way its own vocabulary says?

A GGUF carries no ``tokenizer.json``: transformers rebuilds the tokenizer from the file's
vocabulary, and how well depends on its version. transformers 5.17 (the GPU machine's) rebuilds
Gemma 3's as a Unigram model whose pieces all score alike, saved and reloaded as the library does:
every word then falls apart into single characters ("The" -> "T", "h", "e"), the model reads a
document it was never trained on, and nothing fails (docs/limitations.md). A correct tokenizer
encodes the text of (nearly) any of its own word tokens back into that one token; the broken one
encodes none of them so. That is what :func:`check_tokenizer` measures, on a fixed sample of the
vocabulary, before a model converted from a GGUF answers anything.
"""

from __future__ import annotations

import random
from typing import Any

from ..errors import UnsupportedModelError

SAMPLE = 200          # word tokens tried
LEAST_TRIED = 20      # fewer word tokens than this (a byte-level toy vocabulary): no verdict
LEAST_SHARE = 0.9     # share that must encode back to themselves (all of them did, for every model here)


def vocabulary_roundtrip(tokenizer: Any, sample: int = SAMPLE, seed: int = 0) -> tuple[int, int]:
    """``(encoded back, tried)``: of up to ``sample`` word tokens of the vocabulary (decoded text of
    three or more letters; drawn with a fixed seed), how many ``tokenizer`` encodes into exactly
    that one token."""
    size = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    rng = random.Random(seed)
    order = rng.sample(range(size), min(size, 20 * sample))
    ok = tried = 0
    for i in order:
        if i in special:
            continue
        text = tokenizer.decode([i])
        word = text.strip()
        if len(word) < 3 or not word.isalpha():
            continue
        tried += 1
        ok += tokenizer(text, add_special_tokens=False)["input_ids"] == [i]
        if tried >= sample:
            break
    return ok, tried


def check_tokenizer(tokenizer: Any, source: str, made_by: str | None = None) -> None:
    """Raise :class:`UnsupportedModelError` if ``tokenizer`` (built from ``source``, by transformers
    ``made_by``) encodes fewer than 90% of its sampled word tokens back into themselves."""
    ok, tried = vocabulary_roundtrip(tokenizer)
    if tried < LEAST_TRIED or ok >= LEAST_SHARE * tried:
        return
    by = f" by transformers {made_by}" if made_by else ""
    raise UnsupportedModelError(
        f"the tokenizer built{by} from {source} does not read text as its vocabulary says: {ok} of {tried} "
        f"of its own word tokens encode back into themselves (a sound tokenizer: all of them), so the model "
        f"would read every text cut into the wrong pieces (transformers 5.17 cuts a Gemma 3 GGUF's words into "
        f"single characters). Upgrade transformers (pip install -U 'transformers>=5.18') and load the model "
        f"again: its conversion is made anew by the new version.")


__all__ = ["check_tokenizer", "vocabulary_roundtrip"]
