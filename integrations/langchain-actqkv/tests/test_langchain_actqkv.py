"""LangChain integration (langchain_actqkv).

Fast tests run on a tiny random model; the LangChain standard suites run on the embedded
SmolLM2-135M-Instruct (unit suite: never calls the model; integration suite: slow).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from actqkv_llm import Engine
from langchain_actqkv import ActQKVLLM, ChatActQKV
from tiny_models import byte_tokenizer, tiny_model

TEXT = ("In the valley of Arden the river runs slow and green. The miller's daughter, Maren, keeps "
        "bees behind the old mill, and every spring she counts the hives: there are twelve. ") * 4


@pytest.fixture(scope="module")
def eng():
    return Engine(tiny_model("llama"), byte_tokenizer(), progress=False, cache=False)


@pytest.fixture(scope="module")
def bound(eng):
    return ChatActQKV(engine=eng, document=TEXT, max_tokens=8)


def count_prefills(monkeypatch, eng) -> list:
    calls = []
    real = eng.prefill

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(eng, "prefill", spy)
    return calls


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


# ---------------------------------------------------------------------------------------- tiny model
def test_invoke_usage_and_metadata(bound):
    msg = bound.invoke("How many hives are there?")
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str)
    doc = bound.get_document()
    usage = msg.usage_metadata
    assert usage["input_token_details"]["cache_read"] == doc.n_tokens
    assert usage["input_tokens"] > doc.n_tokens
    assert 1 <= usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = msg.response_metadata
    assert meta["finish_reason"] in ("stop", "length")
    assert meta["model_name"] and meta["document_tokens"] == doc.n_tokens
    assert meta["sources"], "a document longer than the window must report retrieved spans"
    for s in meta["sources"]:
        assert 0 <= s["start"] < s["end"] <= doc.n_tokens
        assert 0 <= s["score"] <= 1 and s["text"] in TEXT


def test_document_is_prefilled_once(eng, monkeypatch):
    calls = count_prefills(monkeypatch, eng)
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=2)
    assert calls == []  # lazy: nothing happens at construction
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(llm.invoke, ["a?", "b?", "c?", "d?"]))
    llm.invoke("e?")
    list(llm.stream("f?"))
    asyncio.run(llm.ainvoke("g?"))
    assert len(calls) == 1


def test_stream_token_by_token_matches_invoke(bound):
    handler = Tokens()
    chunks = list(bound.stream("Who keeps bees?", config={"callbacks": [handler]}))
    assert len(chunks) >= 3  # several pieces + the final metadata chunk
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata and chunks[-1].response_metadata["finish_reason"]
    text = "".join(c.content for c in chunks)
    assert handler.tokens and "".join(handler.tokens) == text
    assert text == bound.invoke("Who keeps bees?").content  # greedy: the same answer


def test_invoke_with_streaming_true_fires_token_callbacks(eng):
    handler = Tokens()
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=5, streaming=True)
    msg = llm.invoke("Who?", config={"callbacks": [handler]})
    assert handler.tokens and "".join(handler.tokens) == msg.content


def test_max_tokens_and_per_call_override(bound):
    msg = bound.invoke("Tell me everything.", max_tokens=3)
    assert msg.usage_metadata["output_tokens"] <= 3
    assert msg.response_metadata["finish_reason"] in ("length", "stop")


def test_stop_sequence_cuts_the_answer(eng):
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=12)
    full = llm.invoke("Where is the mill?").content
    stop = next((full[i:i + 2] for i in range(3, len(full) - 1) if full[i:i + 2].strip()), None)
    if stop is None:
        pytest.skip("the random model's answer has no usable stop string")
    cut = full[:full.find(stop)]
    assert llm.invoke("Where is the mill?", stop=[stop]).content == cut
    assert ChatActQKV(engine=eng, document=TEXT, max_tokens=12, stop=[stop]).invoke("Where is the mill?").content == cut
    assert "".join(c.content for c in llm.stream("Where is the mill?", stop=[stop])) == cut


def test_temperature_sampling_is_seeded(eng):
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    assert llm.invoke("Name the river.").content == llm.invoke("Name the river.").content


def test_batch_and_lcel_chain(bound):
    a, b = bound.batch(["Who?", "Where?"])
    assert a.content == bound.invoke("Who?").content and b.content == bound.invoke("Where?").content
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    chain = prompt | bound | StrOutputParser()
    out = chain.invoke({"question": "How many hives?"})
    assert isinstance(out, str)
    assert out == bound.invoke([SystemMessage("Answer briefly."), HumanMessage("How many hives?")]).content


def test_conversation_and_message_kinds(bound):
    msg = bound.invoke([SystemMessage("Be brief."), HumanMessage([{"type": "text", "text": "Hi"}]),
                        AIMessage([{"type": "thinking", "thinking": "greet"}, {"type": "text", "text": "Hello"}]),
                        HumanMessage("How many hives?", name="reader")])
    assert isinstance(msg.content, str)


def test_async_does_not_block_the_event_loop(eng):
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=24)
    llm.get_document()

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        msg = await llm.ainvoke("Who keeps bees?")
        ticks_invoke = ticks
        handler = Tokens()
        pieces = [c.content async for c in llm.astream("Who keeps bees?", config={"callbacks": [handler]})]
        done.set()
        await task
        return msg, ticks_invoke, ticks, pieces, handler.tokens

    msg, ticks_invoke, ticks, pieces, tokens = asyncio.run(main())
    assert ticks_invoke > 3 and ticks > ticks_invoke + 3, "the event loop was blocked"
    assert "".join(pieces) == msg.content == "".join(tokens)


def test_astream_stopped_early_stops_generating(eng):
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=200)

    async def main():
        async for _ in llm.astream("Tell a long story."):
            break

    asyncio.run(main())
    time.sleep(0.5)
    assert not any(t.name == "actqkv-astream" for t in threading.enumerate())


def test_threads_get_independent_answers(eng):
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=10)
    questions = ["How many hives?", "Who keeps bees?", "What colour is the river?", "Where is the mill?",
                 "What happens in spring?", "Name the valley."]
    alone = {q: llm.invoke(q).content for q in questions}
    jobs = questions * 2
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda q: llm.invoke(q).content, jobs))
    assert together == [alone[q] for q in jobs]
    assert len(set(alone.values())) > 1, "different questions should give different (random-model) answers"


def test_unbound_is_a_plain_chat_model(eng):
    msg = ChatActQKV(engine=eng, max_tokens=4).invoke("Hello")
    assert msg.usage_metadata["input_token_details"]["cache_read"] == 0
    assert msg.response_metadata["sources"] == [] and "document_tokens" not in msg.response_metadata


def test_document_path_and_prefilled_document(eng, tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    a = ChatActQKV(engine=eng, document_path=path, max_tokens=6).invoke("Who?").content
    doc = eng.prefill(TEXT)
    b = ChatActQKV(document=doc, max_tokens=6).invoke("Who?").content  # engine taken from the document
    c = ChatActQKV(engine=eng, document=TEXT, max_tokens=6).invoke("Who?").content
    assert a == b == c


def test_string_llm(eng):
    llm = ActQKVLLM(engine=eng, document=TEXT, max_tokens=6)
    out = llm.invoke("Who keeps bees?")
    assert isinstance(out, str)
    assert out == ChatActQKV(engine=eng, document=TEXT, max_tokens=6).invoke("Who keeps bees?").content
    handler = Tokens()
    assert "".join(llm.stream("Who keeps bees?", config={"callbacks": [handler]})) == out
    assert "".join(handler.tokens) == out
    result = llm.generate(["Who keeps bees?"])
    info = result.generations[0][0].generation_info
    assert info["usage"]["input_token_details"]["cache_read"] > 0 and "sources" in info
    chain = PromptTemplate.from_template("Question: {q}") | llm | StrOutputParser()
    assert isinstance(chain.invoke({"q": "Who?"}), str)


def test_string_llm_raw_completion(eng):
    raw = ActQKVLLM(engine=eng, document=TEXT, max_tokens=6, raw=True)
    doc = eng.prefill(TEXT, chat=False)
    assert raw.invoke(" The miller") == eng.generate(doc, " The miller", max_new_tokens=6)


# ---------------------------------------------------------------------------------------- bad input
def test_no_messages_is_a_value_error(bound):
    with pytest.raises(ValueError, match="no messages"):
        bound.invoke([])
    with pytest.raises(ValueError, match="no messages"):
        ChatActQKV(engine=bound.engine, max_tokens=2).invoke([])


def test_empty_document_is_a_value_error(eng):
    for bad in ("", "  \n\t "):
        with pytest.raises(ValueError, match="empty"):
            ChatActQKV(engine=eng, document=bad)
        with pytest.raises(ValueError, match="empty"):
            ActQKVLLM(engine=eng, document=bad)


def test_empty_file_fails_to_prefill_with_a_value_error(eng, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("   \n", encoding="utf-8")
    llm = ChatActQKV(engine=eng, document_path=path)
    with pytest.raises(ValueError, match="empty"):
        llm.invoke("Hi")


def test_bad_document_arguments(eng, tmp_path):
    with pytest.raises(ValueError, match="at most one"):
        ChatActQKV(engine=eng, document=TEXT, cache_key="abc")
    with pytest.raises(ValueError, match="not a readable file"):
        ChatActQKV(engine=eng, document_path=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="stop"):
        ChatActQKV(engine=eng, stop=[""])


def test_unknown_cache_key_is_a_value_error(tmp_path):
    eng = Engine(tiny_model("llama"), byte_tokenizer(), progress=False, cache=tmp_path / "cache")
    llm = ChatActQKV(engine=eng, cache_key="0123456789abcdef-no-such-document")
    with pytest.raises(ValueError, match="0123456789abcdef-no-such-document"):
        llm.invoke("Hi")


def test_unsupported_messages_and_options(bound):
    with pytest.raises(ValueError, match="tool"):
        bound.invoke([HumanMessage("hi"), AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "1"}]),
                      ToolMessage("42", tool_call_id="1")])
    with pytest.raises(ValueError, match="image"):
        bound.invoke([HumanMessage([{"type": "text", "text": "look"},
                                    {"type": "image", "base64": "AAAA", "mime_type": "image/png"}])])
    with pytest.raises(ValueError, match="user message"):
        bound.invoke([AIMessage("I start.")])
    with pytest.raises(ValueError, match="unsupported keyword"):
        bound.invoke("hi", frequency_penalty=0.5)
    with pytest.raises(ValueError, match="switch models"):
        bound.invoke("hi", model="gpt-4")
    with pytest.raises(ValueError, match="max_new_tokens"):
        bound.invoke("hi", max_tokens=0)
    with pytest.raises(NotImplementedError):
        bound.bind_tools([])


def test_async_errors_propagate(bound):
    async def main():
        with pytest.raises(ValueError, match="no messages"):
            await bound.ainvoke([])
        with pytest.raises(ValueError, match="no messages"):
            async for _ in bound.astream([]):
                pass

    asyncio.run(main())


# ---------------------------------------------------------------------------------------- standard suites
class DeclaredOff:
    """What ChatActQKV does not support, declared to both standard suites (never faked)."""

    @property
    def chat_model_class(self):
        return ChatActQKV

    has_tool_calling = has_tool_choice = has_structured_output = property(lambda self: False)
    supports_json_mode = supports_model_override = property(lambda self: False)
    supports_image_inputs = supports_image_urls = supports_pdf_inputs = property(lambda self: False)
    supports_audio_inputs = supports_video_inputs = property(lambda self: False)
    supports_anthropic_inputs = property(lambda self: False)


class TestChatActQKVStandardUnit(DeclaredOff, ChatModelUnitTests):
    """LangChain's standard unit tests (construction, params, serialisation): no model call."""


# The standard suite's async tests are plain ``async def``; LangChain runs them under pytest-asyncio's
# auto mode. This project runs in strict mode, so mark them (in place: the test functions stay the
# suite's own, as its test_no_overrides_DO_NOT_OVERRIDE requires).
for _name, _fn in vars(ChatModelIntegrationTests).items():
    if _name.startswith("test_") and inspect.iscoroutinefunction(_fn):
        pytest.mark.asyncio(_fn)


@pytest.mark.slow
class TestChatActQKVStandardIntegration(DeclaredOff, ChatModelIntegrationTests):
    """LangChain's standard integration tests on the embedded SmolLM2-135M-Instruct (CPU, offline)."""

    @property
    def chat_model_params(self):
        return {"max_tokens": 16}

    @property
    def returns_usage_metadata(self):
        return True

    @property
    def supported_usage_metadata_details(self):
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        llm = ChatActQKV(document="The lighthouse keeper's cat is called Pepper. " * 4, max_tokens=8)
        if stream:
            full = None
            for chunk in llm.stream("What is the cat called?"):
                full = chunk if full is None else full + chunk
            return full
        return llm.invoke("What is the cat called?")
