"""LangChain integration (langchain_actqkv).

Fast tests run on a tiny random model; the LangChain standard suites run on the embedded
SmolLM2-135M-Instruct, named explicitly (the smallest real model; unit suite: never calls the model;
integration suite: slow).
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

from actqkv_llm import Engine, InputError
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


def test_string_llm_batch_answers_together_as_one_by_one(eng, monkeypatch):
    questions = ["Who keeps bees?", "Where is the mill?", "How many hives?"]
    together = []
    real = Engine.answer_many
    monkeypatch.setattr(Engine, "answer_many", lambda self, *a, **k: together.append(a[1]) or real(self, *a, **k))
    llm = ActQKVLLM(engine=eng, document=TEXT, max_tokens=6)
    one = [llm.invoke(q) for q in questions]
    assert llm.batch(questions) == one and together == [questions]  # one batch on the engine
    result = llm.generate(questions)
    assert [g[0].text for g in result.generations] == one
    assert all("sources" in g[0].generation_info for g in result.generations)
    raw = ActQKVLLM(engine=eng, document=TEXT, max_tokens=6, raw=True)
    prompts = [" The miller", " Bees", " On the hill"]
    assert raw.batch(prompts) == [raw.invoke(p) for p in prompts]
    with pytest.raises(ValueError, match="empty"):
        llm.batch(["Who?", "  "])


# ---------------------------------------------------------------------------------------- chat batch
def spy_chat_many(monkeypatch) -> list:
    """Records how many conversations each ``Engine.chat_many`` call got (then runs it)."""
    calls = []
    real = Engine.chat_many

    def spy(self, doc, conversations, **sampling):
        calls.append(len(conversations))
        return real(self, doc, conversations, **sampling)

    monkeypatch.setattr(Engine, "chat_many", spy)
    return calls


class Runs(BaseCallbackHandler):
    def __init__(self):
        self.ended: list = []

    def on_llm_end(self, response, *, run_id, **kwargs):
        self.ended.append(run_id)


def _said(messages) -> list:
    return [(m.content, m.usage_metadata) for m in messages]


def test_chat_batch_answers_together_as_one_by_one(eng, monkeypatch):
    questions = ["Who keeps bees?", "Where is the mill?", "How many hives?"]
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=6)
    one = [llm.invoke(q) for q in questions]
    calls = spy_chat_many(monkeypatch)
    alone = CountingEngine(monkeypatch, eng)
    runs = Runs()
    assert _said(llm.batch(questions, config={"callbacks": [runs]})) == _said(one)
    assert calls == [3] and alone.n == 0, "one batch on the engine, nothing decoded again"
    assert len(set(runs.ended)) == 3, "each input is still its own run for callbacks"
    conversations = [[SystemMessage("Be brief."), HumanMessage(q)] for q in questions]
    expected = [llm.invoke(c) for c in conversations]
    result = llm.generate(conversations)
    assert [(g[0].message.content, g[0].message.usage_metadata) for g in result.generations] == _said(expected)
    assert all("sources" in g[0].message.response_metadata for g in result.generations)
    assert calls == [3, 3]
    # through a chain (a config per input), with the document named per call or in the config
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | llm
    assert _said(chain.batch([{"q": q} for q in questions])) == _said(one)
    unbound = ChatActQKV(engine=eng, max_tokens=6)
    assert _said(unbound.batch(questions, document=TEXT)) == _said(one)
    assert _said(unbound.batch(questions, config={"configurable": {"document": TEXT}})) == _said(one)
    assert _said(llm.batch([questions[0]] * 2)) == _said([one[0]] * 2)  # the same question twice
    assert calls == [3, 3, 3, 3, 3, 2] and alone.n == 3  # the three invokes of `expected`


def test_chat_batch_falls_back_to_one_by_one(eng, tool_eng, monkeypatch):
    from langchain_core.caches import InMemoryCache
    from langchain_core.runnables import ConfigurableField

    calls = spy_chat_many(monkeypatch)
    questions = ["Who keeps bees?", "How many hives?"]
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=6)
    one = [llm.invoke(q) for q in questions]
    # not plain: streaming, an LLM cache, structured output (a grammar per answer), tools
    assert _said(ChatActQKV(engine=eng, document=TEXT, max_tokens=6, streaming=True).batch(questions)) == _said(one)
    assert [m.content for m in ChatActQKV(engine=eng, document=TEXT, max_tokens=6,
                                          cache=InMemoryCache()).batch(questions)] == [m.content for m in one]
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    structured = ChatActQKV(engine=eng, document=TEXT, max_tokens=40).with_structured_output(schema)
    assert structured.batch(questions) == [structured.invoke(q) for q in questions]
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city.",
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string",
                                                                                       "maxLength": 8}}}}}
    tools = ChatActQKV(engine=tool_eng, document=TEXT, max_tokens=60).bind_tools([weather], tool_choice="get_weather")
    asks = ["Weather in Arden?", "Weather in the valley?"]
    batched = tools.batch(asks)
    assert [[(c["name"], c["args"]) for c in m.tool_calls] for m in batched] == \
        [[(c["name"], c["args"]) for c in tools.invoke(a).tool_calls] for a in asks]
    # a document per input, sampling options per input (a model object per configuration)
    unbound = ChatActQKV(engine=eng, max_tokens=6)
    per_doc = unbound.batch(["Who?", "Who?"], config=[{"configurable": {"document": TEXT}},
                                                      {"configurable": {"document": OTHER}}])
    assert _said(per_doc) == _said([unbound.invoke("Who?", document=t) for t in (TEXT, OTHER)])
    sized = llm.configurable_fields(max_tokens=ConfigurableField(id="n"))
    per_size = sized.batch(questions, config=[{"configurable": {"n": 2}}, {"configurable": {"n": 5}}])
    assert _said(per_size) == _said([ChatActQKV(engine=eng, document=TEXT, max_tokens=n).invoke(q)
                                     for n, q in zip((2, 5), questions)])
    assert calls == [], "none of these was decoded as one batch"


def test_chat_batch_errors_reach_their_own_input(eng, monkeypatch):
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=6)
    expected = [llm.invoke("Who?"), llm.invoke("How many hives?")]
    calls = spy_chat_many(monkeypatch)
    alone = CountingEngine(monkeypatch, eng)
    refused = [AIMessage("I start.")]  # the engine refuses it: a conversation starts with a user turn
    got = llm.batch(["Who?", refused, "How many hives?"], return_exceptions=True)
    assert isinstance(got[1], ValueError) and "user message" in str(got[1])
    assert _said([got[0], got[2]]) == _said(expected)
    assert calls == [3] and alone.n == 3, "tried together, refused before decoding, then each alone"
    with pytest.raises(ValueError, match="user message"):
        llm.batch(["Who?", refused])
    with pytest.raises(ValueError, match="user message"):
        llm.generate([[HumanMessage("Who?")], refused])
    with pytest.raises(ValueError, match="unsupported keyword"):
        llm.batch(["Who?", "Where?"], frequency_penalty=0.5)
    doc = llm.get_document()
    for conversations in ([], "Who?", [[{"role": "user", "content": "Who?"}], "Who?"], [[]]):
        with pytest.raises(InputError):
            eng.chat_many(doc, conversations)


# ---------------------------------------------------------------------------------------- documents per call
OTHER = ("The lighthouse on Skerry Point was built in 1851. Its keeper, Ishbel Mackay, logs every ship that "
         "passes, and she has counted nine hundred and four this year alone. ") * 4


def test_document_chosen_per_call(eng, monkeypatch, tmp_path):
    """invoke(..., document=...), bind(document=...) and config={"configurable": {"document": ...}}
    answer about that document, each the same as a model bound to it."""
    llm = ChatActQKV(engine=eng, max_tokens=6)
    expected = {t: ChatActQKV(engine=eng, document=t, max_tokens=6).invoke("Who?") for t in (TEXT, OTHER)}
    assert expected[TEXT].usage_metadata["input_token_details"]["cache_read"] != \
        expected[OTHER].usage_metadata["input_token_details"]["cache_read"]
    calls = count_prefills(monkeypatch, eng)
    path = tmp_path / "other.txt"
    path.write_text(OTHER, encoding="utf-8")
    for text in (TEXT, OTHER):
        want = (expected[text].content, expected[text].usage_metadata)
        for got in (llm.invoke("Who?", document=text),
                    llm.bind(document=text).invoke("Who?"),
                    llm.invoke("Who?", config={"configurable": {"document": text}}),
                    llm.with_config(configurable={"document": text}).invoke("Who?")):
            assert (got.content, got.usage_metadata) == want
        streamed = list(llm.stream("Who?", document=text))
        assert "".join(c.content for c in streamed) == want[0]
        assert asyncio.run(llm.ainvoke("Who?", config={"configurable": {"document": text}})).content == want[0]
    assert len(calls) == 2, "each document is prefilled once, whichever way the call names it"
    assert llm.invoke("Who?", document=path).content == expected[OTHER].content  # a pathlib.Path is a file
    assert llm.invoke("Who?", document_path=str(path)).content == expected[OTHER].content
    doc = eng.prefill(OTHER)
    assert llm.invoke("Who?", document=doc).content == expected[OTHER].content
    # a bound document is the default; a call's own document wins over it and over the config's
    bound = ChatActQKV(engine=eng, document=TEXT, max_tokens=6)
    assert bound.invoke("Who?").content == expected[TEXT].content
    assert bound.invoke("Who?", document=OTHER).content == expected[OTHER].content
    assert bound.invoke("Who?", config={"configurable": {"document": OTHER}}).content == expected[OTHER].content
    # LangChain's own configurable fields work too (a model object per configuration)
    from langchain_core.runnables import ConfigurableField

    configurable = llm.configurable_fields(document=ConfigurableField(id="doc", name="Document"))
    assert configurable.invoke("Who?", config={"configurable": {"doc": OTHER}}).content == expected[OTHER].content
    # a chain passes the config down to the model
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | llm | StrOutputParser()
    assert chain.invoke({"q": "Who?"}, config={"configurable": {"document": OTHER}}) == expected[OTHER].content
    # the string LLM takes a document per call too
    s = ActQKVLLM(engine=eng, max_tokens=6)
    assert s.invoke("Who?", document=OTHER) == expected[OTHER].content
    assert s.bind(document=TEXT).invoke("Who?") == expected[TEXT].content
    assert s.batch(["Who?", "Who?"], config=[{"configurable": {"document": TEXT}},
                                             {"configurable": {"document": OTHER}}]) == \
        [expected[TEXT].content, expected[OTHER].content]


def test_document_per_call_from_the_disk_cache(tmp_path):
    eng = Engine(tiny_model("llama"), byte_tokenizer(), progress=False, cache=tmp_path / "cache")
    doc = eng.prefill(OTHER)
    assert doc.key
    llm = ChatActQKV(engine=eng, max_tokens=6)
    a = llm.invoke("Who?", cache_key=doc.key)
    assert a.content == llm.invoke("Who?", document=OTHER).content
    assert a.response_metadata["cache_key"] == doc.key
    with pytest.raises(ValueError, match="at most one"):
        llm.invoke("Who?", document=OTHER, cache_key=doc.key)


def test_several_documents_through_one_model_object(eng, monkeypatch):
    """One loaded engine, one model object, many documents: each prefilled once while it stays open."""
    texts = [f"Ledger {i}: the vault holds {i * 7} gold coins and {i} silver cups. " * 6 for i in range(5)]
    llm = ChatActQKV(engine=eng, max_tokens=4, max_open_documents=5)
    calls = count_prefills(monkeypatch, eng)
    first = [llm.invoke("How many coins?", document=t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda t: llm.invoke("How many coins?", document=t), texts * 2))
    assert len(calls) == 5
    assert [m.content for m in again] == [m.content for m in first] * 2
    assert [m.usage_metadata["input_token_details"]["cache_read"] for m in first] == \
        [llm.get_document(t).n_tokens for t in texts]
    small = ChatActQKV(engine=eng, max_tokens=2, max_open_documents=2)
    calls.clear()
    for t in texts[:3] + texts[:1]:
        small.invoke("?", document=t)
    assert len(calls) == 4, "only the last two documents stay open; the first is read again"


# ---------------------------------------------------------------------------------------- cache, tokens
class CountingEngine:
    """Counts generations that reached the engine (not answered by the LangChain cache)."""

    def __init__(self, monkeypatch, eng):
        self.n = 0
        real = eng.chat

        def chat(*args, **kwargs):
            self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(eng, "chat", chat)


def test_llm_cache_is_keyed_by_content_and_a_stable_model_name(eng, monkeypatch, tmp_path):
    from langchain_core.caches import InMemoryCache

    import langchain_actqkv._core as core

    # the default engine (here the tiny one): the model name is the same before and after loading
    monkeypatch.setattr(core, "shared_engine", lambda model=None, method=None: eng)
    lazy = ChatActQKV(document=TEXT, max_tokens=4, cache=InMemoryCache())
    key_before = lazy._get_llm_string()
    counter = CountingEngine(monkeypatch, eng)
    first = lazy.invoke("Who?")
    assert lazy._get_llm_string() == key_before
    assert lazy.invoke("Who?").content == first.content and counter.n == 1, "the first repeat is a cache hit"

    # a file is keyed by its content: a changed file is read again, never a stale answer
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    llm = ChatActQKV(engine=eng, document_path=path, max_tokens=4, cache=InMemoryCache())
    counter.n = 0
    a = llm.invoke("Who?")
    assert llm.invoke("Who?").content == a.content and counter.n == 1
    path.write_text(OTHER, encoding="utf-8")
    b = llm.invoke("Who?")
    assert counter.n == 2
    assert b.usage_metadata["input_token_details"]["cache_read"] == eng.prefill(OTHER).n_tokens
    path.write_text(TEXT, encoding="utf-8")
    assert llm.invoke("Who?").content == a.content and counter.n == 2  # same content as before: a hit
    # the same content under another name (text, path) hits the same entry
    assert "sha256:" in llm._get_llm_string() and str(path) not in llm._get_llm_string()
    assert llm._get_llm_string() == ChatActQKV(engine=eng, document=TEXT, max_tokens=4)._get_llm_string()

    # per-call documents and options are part of the key
    per_call = ChatActQKV(engine=eng, max_tokens=4, cache=InMemoryCache())
    counter.n = 0
    x = per_call.invoke("Who?", document=TEXT)
    y = per_call.invoke("Who?", document=OTHER)
    assert counter.n == 2 and x.usage_metadata != y.usage_metadata
    per_call.invoke("Who?", document=TEXT)
    per_call.invoke("Who?", document=TEXT, max_tokens=3)
    assert counter.n == 3
    s = ActQKVLLM(engine=eng, max_tokens=4, cache=InMemoryCache())
    counter.n = 0
    sx, sy = s.invoke("Who?", document=TEXT), s.invoke("Who?", document=OTHER)
    assert counter.n == 2 and sx == ActQKVLLM(engine=eng, document=TEXT, max_tokens=4).invoke("Who?")
    assert sy == ActQKVLLM(engine=eng, document=OTHER, max_tokens=4).invoke("Who?")
    counter.n = 0
    assert s.invoke("Who?", document=TEXT) == sx and counter.n == 0


def test_get_num_tokens_uses_the_models_own_tokenizer(eng):
    tok = eng.tokenizer
    text = "Maren keeps twelve hives — déjà vu."
    for llm in (ChatActQKV(engine=eng), ActQKVLLM(engine=eng)):
        assert llm.get_num_tokens(text) == len(tok.encode(text, add_special_tokens=False)) == len(text.encode())
        assert llm.get_token_ids(text) == tok.encode(text, add_special_tokens=False)
    messages = [SystemMessage("Be brief."), HumanMessage("How many hives?")]
    rendered = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "How many hives?"}],
                                       tokenize=False, add_generation_prompt=True)
    n = ChatActQKV(engine=eng).get_num_tokens_from_messages(messages)
    assert n == len(tok.encode(rendered, add_special_tokens=False)) > ChatActQKV(engine=eng).get_num_tokens(
        "Be brief.How many hives?")


# ---------------------------------------------------------------------------------------- structured output
def _jsonschema_valid(obj, schema):
    import jsonschema

    jsonschema.validate(obj, schema)
    return True


def test_structured_output_is_valid_against_the_schema(eng):
    from typing import Literal

    from pydantic import BaseModel, Field

    class Hives(BaseModel):
        """What the document says about the bees."""

        keeper: str = Field(max_length=12)
        hives: int = Field(ge=0, le=99)
        season: Literal["spring", "summer", "autumn", "winter"]
        river_is_fast: bool

    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=120)
    out = llm.with_structured_output(Hives).invoke("Describe the bees.")
    assert isinstance(out, Hives)
    assert _jsonschema_valid(out.model_dump(), Hives.model_json_schema())
    schema = {"title": "Mill", "type": "object", "additionalProperties": False,
              "properties": {"name": {"type": "string", "maxLength": 10},
                             "count": {"type": "integer", "minimum": 1, "maximum": 20},
                             "tags": {"type": "array", "items": {"enum": ["bees", "river", "mill"]},
                                      "minItems": 1, "maxItems": 3}},
              "required": ["name", "count", "tags"]}
    for method in ("json_schema", "function_calling"):
        got = llm.with_structured_output(schema, method=method).invoke("Describe the mill.")
        assert isinstance(got, dict) and _jsonschema_valid(got, schema)
    anything = llm.with_structured_output(None, method="json_mode").invoke("Describe the mill as JSON.")
    assert isinstance(anything, dict)
    raw = llm.with_structured_output(Hives, include_raw=True).invoke("Describe the bees.")
    assert raw["parsing_error"] is None and raw["parsed"] == out
    assert raw["raw"].response_metadata["structured_output_complete"] is True
    # streamed: partial objects grow into the same answer
    chunks = list(llm.with_structured_output(schema).stream("Describe the mill."))
    assert chunks and chunks[-1] == llm.with_structured_output(schema).invoke("Describe the mill.")


def test_structured_output_with_a_document_per_call(eng):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    llm = ChatActQKV(engine=eng, max_tokens=40)
    expected = ChatActQKV(engine=eng, document=OTHER, max_tokens=40).with_structured_output(schema).invoke("How many?")
    assert _jsonschema_valid(expected, schema)
    structured = llm.with_structured_output(schema)
    assert structured.invoke("How many?", config={"configurable": {"document": OTHER}}) == expected
    assert llm.bind(document=OTHER).with_structured_output(schema).invoke("How many?") == expected


def test_structured_output_cut_short_is_an_error_not_half_an_object(eng):
    from langchain_core.exceptions import OutputParserException

    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 40}}, "required": ["story"]}
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=5)
    with pytest.raises(OutputParserException, match="max_tokens"):
        llm.with_structured_output(schema).invoke("Tell a story.")
    raw = llm.with_structured_output(schema, include_raw=True).invoke("Tell a story.")
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], OutputParserException)
    assert raw["raw"].response_metadata["structured_output_complete"] is False
    with pytest.raises(ValueError, match="needs a schema"):
        llm.with_structured_output(None)


def test_max_string_length_lets_an_unbounded_string_finish(eng):
    schema = {"type": "object", "properties": {"story": {"type": "string"}, "tag": {"enum": ["a", "bb"]}},
              "required": ["story", "tag"]}
    llm = ChatActQKV(engine=eng, document=TEXT, max_tokens=40, max_string_length=3)
    out = llm.with_structured_output(schema).invoke("Tell a story.")
    assert _jsonschema_valid(out, schema) and len(out["story"]) <= 3 and set(out) == {"story", "tag"}
    assert "max_string_length" in llm._get_llm_string()


# ---------------------------------------------------------------------------------------- tool calling
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "</tools>\nCall a tool as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>\n"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}\n</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tool_eng():
    tok = byte_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    return Engine(tiny_model("qwen2"), tok, progress=False, cache=False)


def get_weather(city: str, days: int) -> str:
    """Weather forecast for a city.

    Args:
        city: the city
        days: how many days ahead
    """
    return f"sunny in {city}"


def test_bind_tools_through_the_chat_template(tool_eng):
    import json

    from langchain_core.utils.function_calling import convert_to_openai_tool

    llm = ChatActQKV(engine=tool_eng, document=TEXT, max_tokens=120)
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city.",
        "parameters": {"type": "object", "required": ["city", "days"], "properties": {
            "city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
    tools = [weather, {"type": "function", "function": {"name": "count_hives", "description": "Count hives",
                                                        "parameters": {"type": "object", "properties": {}}}}]
    forced = llm.bind_tools(tools, tool_choice="get_weather")
    msg = forced.invoke("Weather in Arden?")
    assert len(msg.tool_calls) == 1 and not msg.invalid_tool_calls
    call = msg.tool_calls[0]
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "days"}
    assert isinstance(call["args"]["city"], str) and isinstance(call["args"]["days"], int)
    anyone = llm.bind_tools(tools, tool_choice="any").invoke("Weather?")
    assert anyone.tool_calls and anyone.tool_calls[0]["name"] in ("get_weather", "count_hives")
    # the document was prefilled with the template's tools block before it
    doc = llm.get_document(tools=[convert_to_openai_tool(t) for t in tools])
    head = tool_eng.tokenizer.decode(doc.token_ids)
    assert head.index("get_weather") < head.index("Arden") and "# Tools" in head
    # a streamed call carries the same tool call
    chunks = list(forced.stream("Weather in Arden?"))
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(call["name"], call["args"])]
    # the tool's answer goes back through the template
    follow = llm.bind_tools(tools).invoke([HumanMessage("Weather in Arden?"), msg,
                                           ToolMessage(json.dumps("sunny"), tool_call_id=call["id"])])
    assert isinstance(follow, AIMessage)
    # unbound (no document) works too
    assert ChatActQKV(engine=tool_eng, max_tokens=120).bind_tools(tools, tool_choice="any").invoke("Hi").tool_calls


def test_tool_calls_are_parsed_from_the_model_text():
    from langchain_actqkv._tools import parse_tool_calls

    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oban", "days": 2}}\n'
            '</tool_call>\n<tool_call>\n{"name": broken}\n</tool_call>')
    content, calls, invalid = parse_tool_calls(text)
    assert content == "Let me check."
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Oban", "days": 2})]
    assert len(invalid) == 1 and invalid[0]["args"] == '{"name": broken}'
    assert parse_tool_calls("no calls here") == ("no calls here", [], [])


def test_bind_tools_without_template_support_names_the_model(eng):
    with pytest.raises(ValueError, match=r"chat template of llama \(llama\) does not support tools"):
        ChatActQKV(engine=eng).bind_tools([get_weather])
    with pytest.raises(ValueError, match="does not support tools"):
        ChatActQKV(engine=eng).invoke("Hi", tools=[{"type": "function", "function": {"name": "f"}}])


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
    with pytest.raises(ValueError, match=r"chat template of llama .*does not support tools"):
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
    """What ChatActQKV does and does not support, declared to both standard suites (never faked):
    structured output and JSON mode by constrained decoding; no tool calling, because the embedded
    SmolLM2's chat template has no tools (tool calling is tested below on a template that has)."""

    @property
    def chat_model_class(self):
        return ChatActQKV

    has_structured_output = supports_json_mode = property(lambda self: True)
    has_tool_calling = has_tool_choice = property(lambda self: False)
    supports_model_override = property(lambda self: False)
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
    """LangChain's standard integration tests on SmolLM2-135M-Instruct (CPU, offline; named explicitly:
    the smallest real model keeps this suite's time, and its parameters are set for it)."""

    @property
    def chat_model_params(self):
        # room for a structured answer (a joke as JSON) to complete; SmolLM2-135M can loop inside a
        # string, so structured strings are capped (max_string_length) to let the JSON finish
        return {"model": "smollm2", "max_tokens": 64, "max_string_length": 48}

    @property
    def returns_usage_metadata(self):
        return True

    @property
    def supported_usage_metadata_details(self):
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        llm = ChatActQKV(model="smollm2", document="The lighthouse keeper's cat is called Pepper. " * 4,
                         max_tokens=8)
        if stream:
            full = None
            for chunk in llm.stream("What is the cat called?"):
                full = chunk if full is None else full + chunk
            return full
        return llm.invoke("What is the cat called?")


@pytest.mark.slow
class TestChatActQKVStandardIntegrationWithDocument(TestChatActQKVStandardIntegration):
    """The same standard suite, structured output included, with a document bound to the model: every
    call the suite makes is answered about that prefilled document (the product's own mode)."""

    @property
    def chat_model_params(self):
        return {**super().chat_model_params,
                "document": "The lighthouse on Gull Rock has 62 steps. Its keeper, Tobias, has a cat called "
                            "Pepper and a goat named Duchess. " * 3}
