"""Constrained decoding with llguidance: a JSON schema (or a tool-call format) becomes a mask over the
model's next-token logits at every step, so what is generated always matches it.

llguidance compiles JSON schemas and Lark grammars against the model's own Hugging Face tokenizer
(byte-level or not) and computes each step's token mask on the CPU; :class:`GrammarConstraint`
plugs it into ``Engine.chat(..., logits_processor=...)``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import torch

from actqkv_llm import Engine

#: Compact JSON (no free whitespace between tokens): shorter outputs, fewer ways for a small model to ramble.
_JSON_DEFAULTS = {"whitespace_flexible": False}


def _llguidance():
    import llguidance
    import llguidance.hf
    import llguidance.torch

    return llguidance


def vocab_size(engine: Engine) -> int:
    """Rows of the model's logits (may exceed the tokenizer's vocabulary: padding)."""
    out = engine.model.get_output_embeddings()
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(engine.model.config.vocab_size)


def ll_tokenizer(engine: Engine) -> Any:
    """llguidance's view of the engine's tokenizer (built in a few ms to a second; callers memoise it)."""
    if engine.tokenizer is None:
        raise ValueError("structured output needs the model's tokenizer; this engine has none")
    eos = sorted(engine.eos_ids) or None
    return _llguidance().hf.from_tokenizer(engine.tokenizer, n_vocab=vocab_size(engine), eos_token=eos)


def closed(schema: Any, max_string_length: Optional[int] = None) -> Any:
    """``schema`` narrowed for decoding; what it allows is a subset of what ``schema`` allows, so
    still valid for it:

    * every object that lists its ``properties`` and says nothing about others is closed to them
      (``additionalProperties: false``, as OpenAI's strict mode does), so a small model cannot
      invent keys without end;
    * with ``max_string_length``, strings the schema leaves unbounded get that ``maxLength``, so a
      model that loops inside a string still finishes its answer.
    """
    if isinstance(schema, list):
        return [closed(s, max_string_length) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("enum", "const", "default", "examples") else closed(v, max_string_length))
           for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema \
            and "unevaluatedProperties" not in schema:
        out["additionalProperties"] = False
    kinds = schema.get("type")
    if max_string_length is not None and (kinds == "string" or isinstance(kinds, list) and "string" in kinds) \
            and not any(k in schema for k in ("maxLength", "enum", "const", "pattern", "format")):
        out["maxLength"] = max_string_length
    return out


def json_schema_grammar(schema: dict, max_string_length: Optional[int] = None) -> str:
    return _llguidance().LLMatcher.grammar_from_json_schema(closed(schema, max_string_length),
                                                            defaults=_JSON_DEFAULTS)


def tool_call_grammar(tools: list[dict], names: Optional[list[str]] = None) -> str:
    """One ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` block (Qwen2.5/Hermes
    format) calling one of ``names`` (default: any of ``tools``) with arguments valid for it."""
    options = []
    for t in tools:
        fn = t["function"]
        if names is not None and fn["name"] not in names:
            continue
        options.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                        "properties": {"name": {"const": fn["name"]},
                                       "arguments": closed(fn.get("parameters") or {"type": "object"})}})
    if not options:
        raise ValueError(f"tool_choice names no bound tool: {names!r}")
    call = options[0] if len(options) == 1 else {"anyOf": options}
    call = {**call, "x-guidance": _JSON_DEFAULTS}
    lark = 'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: %json ' + json.dumps(call)
    return _llguidance().LLMatcher.grammar_from_lark(lark)


class GrammarConstraint:
    """``logits_processor`` for :meth:`actqkv_llm.Engine.chat`: every step, the tokens the grammar
    does not allow next get ``-inf``; once it is complete only end-of-turn is allowed.

    One instance per generation (it follows the generated tokens). ``complete`` says whether the
    output is a full match (False when ``max_tokens`` cut it short).
    """

    def __init__(self, tokenizer: Any, grammar: str):
        llg = _llguidance()
        self._llg = llg
        self.matcher = llg.LLMatcher(tokenizer, grammar)
        if self.matcher.is_error():
            raise ValueError(f"cannot build the output grammar: {self.matcher.get_error()}")
        self._mask = llg.torch.allocate_token_bitmask(1, tokenizer.vocab_size)
        self._seen = 0

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        for tok in generated[self._seen:]:
            if not self.matcher.consume_token(tok):
                raise RuntimeError(f"token {tok} broke the output grammar: {self.matcher.get_error()}")
        self._seen = len(generated)
        self._llg.torch.fill_next_token_bitmask(self.matcher, self._mask, 0)
        masked = logits.detach().float().cpu().clone()  # never touch the caller's tensor
        self._llg.torch.apply_token_bitmask_inplace(masked, self._mask[0])
        return masked

    @property
    def complete(self) -> bool:
        return self.matcher.is_accepting()


__all__ = ["GrammarConstraint", "closed", "json_schema_grammar", "tool_call_grammar", "ll_tokenizer", "vocab_size"]
