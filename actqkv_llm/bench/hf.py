"""Plain Hugging Face attention as a benchmark system: the model as loaded, SDPA, a
``DynamicCache``, greedy decoding; the bar a user holds the engine to (with YaRN past the window)."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch

from ..chat import document_prefix, question_suffix


@contextlib.contextmanager
def plain_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with Hugging Face's SDPA attention, whatever an engine registered on it."""
    configs = [m.config for m in model.modules() if hasattr(m, "config")
               and hasattr(m.config, "_attn_implementation")]
    before = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = "sdpa"
    try:
        yield
    finally:
        for c, impl in zip(configs, before):
            c._attn_implementation = impl


def cache_argument(model: Any) -> str:
    """The name ``model.forward`` takes its KV cache by: ``cache`` in newer transformers 5.x
    (``past_key_values`` is deprecated there, removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prompt_ids(eng: Any, document: str, suffix: str, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids the engine itself runs for ``document`` and for ``suffix``: the raw text and a
    continuation (``completion``), or the chat template around the document and question (``ask``)."""
    if layout == "completion":
        return eng._encode(document, special=True), eng._encode(suffix, special=False)
    messages = [{"role": "user", "content": suffix}]
    return (eng._encode(document_prefix(eng.tokenizer, document), special=False),
            eng._encode(question_suffix(eng.tokenizer, messages), special=False))


@torch.inference_mode()
def greedy(model: Any, ids: torch.Tensor, max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    """Greedy continuation of ``ids`` ``[T]`` under plain attention (only the last position's logits)."""
    from transformers import DynamicCache
    device = next(model.parameters()).device
    kv = {cache_argument(model): DynamicCache(config=model.config)}
    out: list[int] = []
    x = ids.to(device)[None]
    with plain_attention(model):
        for _ in range(max_new_tokens):
            token = int(model(input_ids=x, use_cache=True, logits_to_keep=1, **kv).logits[0, -1].argmax())
            if token in stop_ids:
                break
            out.append(token)
            x = torch.tensor([[token]], device=device)
    return out


def answer(eng: Any, document: str, suffix: str, layout: str, max_new_tokens: int) -> tuple[str, int]:
    """Plain attention's answer text and the document's length in tokens."""
    doc, tail = prompt_ids(eng, document, suffix, layout)
    stop = eng.model.generation_config.eos_token_id
    stop_ids = set(stop if isinstance(stop, (list, tuple)) else [stop]) - {None}
    if eng.tokenizer.eos_token_id is not None:
        stop_ids.add(eng.tokenizer.eos_token_id)
    tokens = greedy(eng.model, torch.cat([doc, tail]), max_new_tokens, stop_ids)
    return eng.tokenizer.decode(tokens, skip_special_tokens=True), doc.numel()
