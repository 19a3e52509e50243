"""Generation stops when the answer loops, and says so (Answer.stop_reason, a note from the CLI)."""

from __future__ import annotations

import itertools
import json

import pytest

from actqkv_llm import Engine, cli
from actqkv_llm import answer as answer_module
from actqkv_llm.generation import REPEAT_MIN_SPAN, Sampling, repeating_period
from tiny_models import byte_tokenizer, tiny_model


@pytest.mark.parametrize("ids, period", [
    ([7] * 31, None),                                   # too short a run
    ([7] * 32, 1),
    ([1, 2, 3] + [7] * 32, 1),                          # a loop after some text
    ([5] * 7, None),                                    # "1111111": a number, not a loop
    ([1, 2, 3, 4] * 7, None),                           # 28 tokens < the minimum span
    ([1, 2, 3, 4] * 8, 4),
    (list(range(20)) * 2, None),                        # two copies of a sentence: not yet
    (list(range(20)) * 3, 20),
    (list(range(33)) * 4, None),                        # period above 32
    (list(range(40)), None),
    ([1, 2] * 15 + [1, 3] + [1, 2] * 2, None),          # broken inside the span
])
def test_repeating_period(ids, period):
    assert repeating_period(ids) == period


def _constant_model():
    """A tiny model whose logits are all zero: greedy decoding repeats token 0 forever."""
    model = tiny_model()
    model.lm_head.weight.data.zero_()
    return model


def _engine(model=None):
    return Engine(model or _constant_model(), byte_tokenizer(), progress=False, cache=False)


def test_a_constant_model_stops_on_repetition_before_the_limit():
    eng = _engine()
    doc = eng.prefill("a short document about lighthouses")
    answer = eng.answer(doc, "what?", max_new_tokens=200)
    assert answer.stop_reason == "repetition" and answer.finish_reason == "stop"
    assert answer.usage.completion_tokens == REPEAT_MIN_SPAN < 200
    assert len(set(answer.text)) == 1


def test_repetition_stop_can_be_turned_off():
    eng = _engine()
    doc = eng.prefill("a short document about lighthouses")
    answer = eng.answer(doc, "what?", max_new_tokens=40, stop_on_repetition=False)
    assert answer.stop_reason == "length" and answer.finish_reason == "length"
    assert answer.usage.completion_tokens == 40
    with pytest.raises(Exception, match="stop_on_repetition"):
        Sampling.make(stop_on_repetition="yes")


def test_a_three_token_loop_is_caught(monkeypatch):
    tok = byte_tokenizer()
    cycle = itertools.cycle(tok.convert_tokens_to_ids(list("abc")))
    monkeypatch.setattr(answer_module, "choose_token", lambda logits, sampling, gen: next(cycle))
    eng = _engine(tiny_model())
    doc = eng.prefill("some text", chat=False)
    answer = eng.complete(doc, " and", max_new_tokens=100)
    assert answer.stop_reason == "repetition" and answer.text.startswith("abcabc")
    assert answer.usage.completion_tokens == 32  # the first 32 tokens already repeat a 3-token period


def test_eos_reason(monkeypatch):
    eos_id = byte_tokenizer().eos_token_id
    monkeypatch.setattr(answer_module, "choose_token", lambda logits, sampling, gen: eos_id)
    eng = _engine(tiny_model())
    answer = eng.answer(eng.prefill("text"), "q", max_new_tokens=5)
    assert answer.stop_reason == "eos" and answer.finish_reason == "stop" and answer.text == ""


def test_cli_notes_a_repetition_stop_on_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "make_engine", lambda args: _engine())
    doc = tmp_path / "doc.txt"
    doc.write_text("a short document about lighthouses")
    code = cli.main(["ask", str(doc), "what?", "--no-cache", "--max-new-tokens", "100"])
    out, err = capsys.readouterr()
    assert code == 0 and "stopped early: the answer started repeating itself" in err
    assert "repeating" not in out
    code = cli.main(["-q", "ask", str(doc), "what?", "--no-cache", "--max-new-tokens", "100", "--json"])
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["stop_reason"] == "repetition" and record["finish_reason"] == "stop" and err == ""

