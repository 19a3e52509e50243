"""Sampling options, stop strings, streaming and progress."""

import torch

from actqkv_llm.generation import Sampling, TextAssembler


def test_stop_strings_cut_and_are_never_streamed(tokenizer):
    asm = TextAssembler(tokenizer, ("STOP",))
    pieces = []
    for ch in "hello STOP world":
        pieces.append(asm.add(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(ch))[0]))
        if asm.stopped:
            break
    pieces.append(asm.flush())
    assert "".join(pieces) == "hello " and asm.text == "hello "


def test_stream_equals_answer(make_engine):
    eng = make_engine()
    doc = eng.prefill("some document text " * 5)
    stream = eng.stream(doc, "what?", max_new_tokens=12)
    pieces = list(stream)
    assert "".join(pieces) == stream.answer.text == eng.ask(doc, "what?", max_new_tokens=12)
    assert stream.answer.usage.completion_tokens <= 12


def test_sampling_is_seeded(make_engine):
    eng = make_engine()
    doc = eng.prefill("some document text")
    a = eng.ask(doc, "q", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=10)
    b = eng.ask(doc, "q", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=10)
    c = eng.ask(doc, "q", temperature=1.0, top_p=0.9, seed=8, max_new_tokens=10)
    assert a == b and a != c


def test_progress_bar_can_be_turned_off(make_engine, capsys):
    eng = make_engine(prefill_chunk=256)
    text = "x" * 5000
    eng.prefill(text, progress=True)
    assert "prefill" in capsys.readouterr().err
    eng.prefill(text + "y", progress=False)
    assert "prefill" not in capsys.readouterr().err


def test_greedy_choice_is_argmax():
    from actqkv_llm.generation import choose_token

    logits = torch.tensor([0.1, 3.0, -1.0])
    assert choose_token(logits, Sampling.make(), None) == 1
