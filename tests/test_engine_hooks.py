"""The engine's hooks for the integrations: a per-step logits processor (constrained decoding) and
tool definitions rendered by the chat template."""

from __future__ import annotations

import pytest
import torch

from actqkv_llm import InputError
from actqkv_llm.chat import supports_tools
from tiny_models import byte_tokenizer

TEXT = "The river runs slow and green past the mill where Maren keeps twelve hives. " * 6
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {% for t in tools %}{{ t['function']['name'] }} {% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOOL = {"type": "function", "function": {"name": "count_hives", "parameters": {"type": "object"}}}


def test_logits_processor_sees_each_step_and_chooses_the_tokens(make_engine):
    eng = make_engine()
    doc = eng.prefill(TEXT)
    before = doc.last_logits.clone()
    x = eng.tokenizer.convert_tokens_to_ids("x")
    seen = []

    def only_x(ids, logits):
        seen.append(list(ids))
        out = torch.full_like(logits, float("-inf"))
        out[x] = 0.0
        return out

    answer = eng.chat(doc, [{"role": "user", "content": "Hives?"}], max_new_tokens=4, logits_processor=only_x)
    assert answer.text == "xxxx" and answer.finish_reason == "length"
    assert seen == [[], [x], [x, x], [x, x, x]]
    assert torch.equal(doc.last_logits, before)
    streamed = eng.chat(doc, [{"role": "user", "content": "Hives?"}], stream=True, max_new_tokens=3,
                        logits_processor=only_x)
    assert "".join(streamed) == "xxx"


def test_tools_are_rendered_in_the_head_before_the_document(make_engine):
    eng = make_engine()
    assert not supports_tools(eng.tokenizer)
    with pytest.raises(InputError, match="does not render tool definitions"):
        eng.prefill(TEXT, tools=[TOOL])
    tok = byte_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    eng.tokenizer = tok
    assert supports_tools(tok)
    doc = eng.prefill(TEXT, tools=[TOOL])
    head = tok.decode(doc.token_ids)
    assert head.index("Tools: count_hives") < head.index("The river")
    plain = eng.prefill(TEXT)
    assert "count_hives" not in tok.decode(plain.token_ids)
    turns = [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": "calling"},
             {"role": "tool", "content": "12"}]
    answer = eng.chat(doc, turns, tools=[TOOL], max_new_tokens=2)
    assert answer.usage.cached_tokens == doc.n_tokens
    with pytest.raises(InputError, match="role"):
        eng.chat(plain, turns, max_new_tokens=2)  # a tool message needs tools
    with pytest.raises(InputError, match="chat layout"):
        eng.prefill(TEXT, chat=False, tools=[TOOL])
