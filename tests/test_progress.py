"""Prefill progress from Python: the bar moves after every layer of a chunk (every chunk / layers
tokens), without changing results."""

from __future__ import annotations

import torch

from actqkv_llm import Engine
from actqkv_llm import engine as engine_module
from tiny_models import byte_tokenizer, tiny_model


# ------------------------------------------------------------------------------------ prefill progress
def test_prefill_bar_moves_with_every_layer_and_changes_nothing(monkeypatch):
    updates: list[int] = []

    class Bar:
        def __init__(self, total, **kw):
            self.total = total

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(engine_module, "tqdm", Bar)
    eng = Engine(tiny_model(), byte_tokenizer(), progress=True, cache=False, prefill_chunk=1536)
    text = "the keeper counts gulls on the quay. " * 80  # about 3,000 tokens
    shown = eng.prefill(text, chat=False)
    assert sum(updates) == shown.n_tokens and max(updates) <= 1536 // 3 and len(updates) >= 5
    quiet = eng.prefill(text, chat=False, progress=False)
    assert torch.equal(shown.last_logits, quiet.last_logits)
    assert sum(updates) == shown.n_tokens  # no bar when progress is off
