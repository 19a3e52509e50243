"""LlamaIndex integration (llama_index.llms.actqkv), on a tiny random model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from llama_index.core import Document as LIDocument
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.base.response.schema import Response
from llama_index.core.schema import NodeWithScore, TextNode

from actqkv_llm import Engine
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.prompts import PromptTemplate

from llama_index.llms.actqkv import ActQKVLLM, ActQKVQueryEngine, ActQKVRetriever, readable_tokens
from tiny_models import byte_tokenizer, tiny_model

LONG = ("The ferry to Inchmurrin leaves at seven. Its captain, Alasdair Bain, has crossed the loch "
        "four thousand times and never once been late. ") * 4
SHORT = "The bakery on Mill Lane sells rye bread on Tuesdays."


@pytest.fixture(scope="module")
def eng():
    return Engine(tiny_model("llama"), byte_tokenizer(), progress=False, cache=False)


def user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


# ---------------------------------------------------------------------------------------- LLM
def test_metadata_is_honest(eng):
    """context_window is what the bound model and method can read, not a constant."""
    meta = ActQKVLLM(engine=eng, max_new_tokens=12).metadata
    assert meta.num_output == 12 and meta.is_chat_model and not meta.is_function_calling_model
    assert meta.model_name == "llama"
    a = eng.adapter
    kv_bytes = 2 * len(a.memory_layers) * a.n_kv_heads * a.head_dim * 4  # float32
    import os
    assert meta.context_window == readable_tokens(eng) == \
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // kv_bytes > eng.native_window
    assert ActQKVLLM(engine=eng.with_method("full")).metadata.context_window == eng.native_window == 1024
    streaming = eng.with_method("streaming")
    assert ActQKVLLM(engine=streaming).metadata.context_window == \
        streaming.config.n_sink + streaming.config.n_local < eng.native_window
    other = Engine(tiny_model("gemma3"), byte_tokenizer(), progress=False, cache=False)  # 2 of 4 layers keep KV
    assert ActQKVLLM(engine=other).metadata.context_window != meta.context_window  # another KV size


def test_complete_chat_and_streams_agree(eng):
    llm = ActQKVLLM(engine=eng, document=LONG, max_tokens=8)
    done = llm.complete("Who is the captain?")
    info = done.additional_kwargs
    doc = llm.get_document()
    assert info["cached_tokens"] == doc.n_tokens and info["completion_tokens"] <= 8
    assert info["finish_reason"] in ("stop", "length") and info["sources"]
    streamed = list(llm.stream_complete("Who is the captain?"))
    assert len(streamed) >= 2 and streamed[-1].text == done.text
    assert "".join(r.delta for r in streamed) == done.text
    assert streamed[-1].additional_kwargs["sources"] == info["sources"]
    chat = llm.chat([user("Who is the captain?")])
    assert chat.message.role == MessageRole.ASSISTANT and chat.message.content == done.text
    chunks = list(llm.stream_chat([user("Who is the captain?")]))
    assert chunks[-1].message.content == done.text == "".join(c.delta for c in chunks)


def test_async_variants(eng):
    llm = ActQKVLLM(engine=eng, document=LONG, max_tokens=6)
    expected = llm.complete("When does the ferry leave?").text

    async def main():
        a = await llm.acomplete("When does the ferry leave?")
        b = await llm.achat([user("When does the ferry leave?")])
        c = [r.delta async for r in await llm.astream_complete("When does the ferry leave?")]
        d = [r async for r in await llm.astream_chat([user("When does the ferry leave?")])]
        return a.text, b.message.content, "".join(c), d[-1].message.content

    assert asyncio.run(main()) == (expected,) * 4


def test_system_messages_and_unbound(eng):
    llm = ActQKVLLM(engine=eng, max_tokens=4)
    r = llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="Be brief."), user("Hello")])
    assert isinstance(r.message.content, str)
    assert r.additional_kwargs["cached_tokens"] == 0 and r.additional_kwargs["sources"] == []


def test_llm_threads_get_independent_answers(eng):
    llm = ActQKVLLM(engine=eng, document=LONG, max_tokens=8)
    questions = ["Who?", "When?", "Where does the ferry go?", "How many crossings?"]
    alone = {q: llm.complete(q).text for q in questions}
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda q: llm.complete(q).text, questions * 2))
    assert together == [alone[q] for q in questions * 2]


def test_llm_bad_input(eng):
    with pytest.raises(ValueError, match="empty"):
        ActQKVLLM(engine=eng, document="   ")
    llm = ActQKVLLM(engine=eng, max_tokens=4)
    with pytest.raises(ValueError, match="no messages"):
        llm.chat([])
    with pytest.raises(ValueError, match="empty"):
        llm.complete("  ")
    with pytest.raises(ValueError, match="tool"):
        llm.chat([user("hi"), ChatMessage(role=MessageRole.TOOL, content="42")])
    with pytest.raises(ValueError, match="ImageBlock"):
        llm.chat([ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="look"),
                                                             ImageBlock(url="http://example.invalid/x.png")])])


# ---------------------------------------------------------------------------------------- async calls together
def spy_many(monkeypatch) -> list:
    """Records each ``Engine.chat_many`` / ``complete_many`` call: (name, number of inputs)."""
    calls = []
    for name in ("chat_many", "complete_many"):
        real = getattr(Engine, name)

        def spy(self, doc, inputs, _name=name, _real=real, **sampling):
            calls.append((_name, len(inputs)))
            return _real(self, doc, inputs, **sampling)

        monkeypatch.setattr(Engine, name, spy)
    return calls


def said(response) -> tuple:
    """Text and usage of a response (source scores may differ in the last bits when batched)."""
    info = response.additional_kwargs
    text = response.text if hasattr(response, "text") else response.message.content
    return (text, info["finish_reason"], info["prompt_tokens"], info["completion_tokens"], info["cached_tokens"],
            [(s["start"], s["end"]) for s in info["sources"]])


def test_concurrent_async_calls_are_answered_together(eng, monkeypatch):
    llm = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6)
    questions = ["Who is the captain?", "When does the ferry leave?", "How many crossings?"]
    one = [llm.complete(q) for q in questions] + [llm.chat([user(questions[0])])]
    calls = spy_many(monkeypatch)

    async def main():
        return await asyncio.gather(*(llm.acomplete(q) for q in questions), llm.achat([user(questions[0])]))

    got = asyncio.run(main())
    assert [said(r) for r in got] == [said(r) for r in one]
    assert calls == [("chat_many", 4)], "completions and chats of a chat model: one batch"
    assert got[3].message.role == MessageRole.ASSISTANT
    # a plain-text model: complete_many
    raw = ActQKVLLM(engine=eng, document=LONG, is_chat_model=False, max_new_tokens=6)
    prompts = [" The captain is", " The ferry"]
    expected = [raw.complete(p) for p in prompts]

    async def raw_main():
        return await asyncio.gather(*(raw.acomplete(p) for p in prompts))

    assert [said(r) for r in asyncio.run(raw_main())] == [said(r) for r in expected]
    assert calls[1:] == [("complete_many", 2)]


def test_async_calls_batch_by_options_and_wait(eng, monkeypatch):
    llm = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6)
    questions = ["Who?", "When?", "Where?", "Why?"]
    expected = [llm.complete(q) for q in questions[:2]] + [llm.complete(q, max_new_tokens=3) for q in questions[2:]]
    calls = spy_many(monkeypatch)

    async def by_options():
        return await asyncio.gather(llm.acomplete(questions[0]), llm.acomplete(questions[1]),
                                    llm.acomplete(questions[2], max_new_tokens=3),
                                    llm.acomplete(questions[3], generate_kwargs={"max_new_tokens": 3}))

    assert [said(r) for r in asyncio.run(by_options())] == [said(r) for r in expected]
    assert sorted(calls) == [("chat_many", 2), ("chat_many", 2)], "a batch per set of options"

    async def one_tick_apart(model):
        first = asyncio.ensure_future(model.acomplete(questions[0]))
        for _ in range(3):  # the first call has been submitted, and with no wait its batch has closed
            await asyncio.sleep(0)
        return await asyncio.gather(first, model.acomplete(questions[1]))

    calls.clear()
    assert [said(r) for r in asyncio.run(one_tick_apart(llm))] == [said(r) for r in expected[:2]]
    assert calls == [], "no wait: calls in different ticks run alone"
    waiting = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6, batch_wait=1.0)
    assert [said(r) for r in asyncio.run(one_tick_apart(waiting))] == [said(r) for r in expected[:2]]
    assert calls == [("chat_many", 2)], "within batch_wait: together"


def test_async_streams_are_not_batched(eng, monkeypatch):
    llm = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6)
    expected = [llm.complete("Who?").text, llm.chat([user("When?")]).message.content]
    calls = spy_many(monkeypatch)

    async def main():
        async def text(stream):
            return "".join([r.delta async for r in await stream])

        return await asyncio.gather(text(llm.astream_complete("Who?")), text(llm.astream_chat([user("When?")])))

    assert asyncio.run(main()) == expected and calls == []


def test_async_batch_errors_reach_their_own_caller(eng, monkeypatch):
    llm = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6)
    expected = [llm.complete("Who?"), llm.complete("When?")]
    calls = spy_many(monkeypatch)
    refused = [ChatMessage(role=MessageRole.ASSISTANT, content="I start.")]  # the engine wants a user turn first

    async def main():
        return await asyncio.gather(llm.acomplete("Who?"), llm.achat(refused), llm.acomplete("  "),
                                    llm.acomplete("When?"), return_exceptions=True)

    good, bad, empty, good2 = asyncio.run(main())
    assert isinstance(bad, ValueError) and "user message" in str(bad)
    assert isinstance(empty, ValueError) and "empty" in str(empty)  # refused before it joined the batch
    assert [said(good), said(good2)] == [said(r) for r in expected]
    assert calls == [("chat_many", 3)], "tried together, refused before decoding, then each alone"


def test_call_gatherer_drops_cancelled_callers_and_splits_a_failed_batch():
    from llama_index.llms.actqkv.base import CallGatherer

    seen = []

    def run(tag, items):
        seen.append(items)
        if len(items) > 1 and "bad" in items:
            raise RuntimeError("one bad item")
        if items == ["bad"]:
            raise ValueError("bad item")
        return [f"{tag}{i}" for i in items]

    async def main():
        gatherer = CallGatherer()
        a = asyncio.ensure_future(gatherer.submit(run, ("x",), 1))
        b = asyncio.ensure_future(gatherer.submit(run, ("x",), 2))
        c = asyncio.ensure_future(gatherer.submit(run, ("y",), 3))
        await asyncio.sleep(0)  # all three submitted, their batches not run yet
        b.cancel()
        first = await asyncio.gather(a, c)
        split = await asyncio.gather(*(gatherer.submit(run, ("z",), i) for i in (4, "bad", 5)),
                                     return_exceptions=True)
        return first, split

    first, split = asyncio.run(main())
    assert first == ["x1", "y3"] and seen[:2] == [[1], [3]]  # b was cancelled before its batch ran
    assert split[0] == "z4" and split[2] == "z5" and isinstance(split[1], ValueError)
    assert seen[2:] == [[4, "bad", 5], [4], ["bad"], [5]]


# ---------------------------------------------------------------------------------------- query engine
@pytest.fixture(scope="module")
def docs():
    return [LIDocument(text=LONG, id_="ferry", metadata={"file_name": "ferry.txt"}),
            LIDocument(text=SHORT, id_="bakery", metadata={"file_name": "bakery.txt"})]


@pytest.fixture(scope="module")
def qe(eng, docs):
    return ActQKVQueryEngine(docs, engine=eng, max_tokens=6)


def test_query_one_document_sources_are_attended_spans(qe, eng):
    one = qe.for_document("ferry")
    r = one.query("Who is the captain?")
    assert isinstance(r, Response)
    entry = one.documents[0]
    turns = [{"role": "user", "content": "Who is the captain?"}]
    assert r.response == eng.chat(entry.document, turns, max_new_tokens=6).text
    read = eng.chat(entry.document, turns, max_new_tokens=1)  # what retrieval attends to reading the question
    assert len(read.sources) > 2
    expected = read.sources[:2]  # spans_per_document
    assert [(n.node.metadata["start_token"], n.node.metadata["end_token"]) for n in r.source_nodes] == \
        [(s.start, s.end) for s in expected]
    for n, s in zip(r.source_nodes, expected):
        assert isinstance(n, NodeWithScore) and isinstance(n.node, TextNode)
        assert n.node.text == s.text and n.score == pytest.approx(s.score)
        assert n.node.metadata["doc_id"] == "ferry" and n.node.ref_doc_id == "ferry"
        assert n.node.metadata["file_name"] == "ferry.txt"


def test_query_over_documents_answers_once_from_the_relevant_one(eng, docs, monkeypatch):
    lighthouse = LIDocument(text=("The lighthouse on Skerry Point was built in 1851 and its lamp burns whale "
                                  "oil. ") * 6, id_="lighthouse", metadata={"file_name": "lighthouse.txt"})
    qe = ActQKVQueryEngine(docs + [lighthouse], engine=eng, max_tokens=6)
    generations = []
    real = eng.chat

    def chat(doc, messages, **kw):
        if kw.get("max_new_tokens") != 1:  # 1 token: the retrieval pass; more: an answer
            generations.append((doc, messages))
        return real(doc, messages, **kw)

    monkeypatch.setattr(eng, "chat", chat)
    question = "What bread is sold on Tuesdays?"
    r = qe.query(question)
    assert len(generations) == 1, "one answer, not one per document"
    bakery = qe.documents[1]
    assert generations[0][0] is bakery.document
    assert [d["doc_id"] for d in r.metadata["documents"]] == ["bakery"]
    assert {n.node.metadata["doc_id"] for n in r.source_nodes} == {"bakery"}
    monkeypatch.setattr(eng, "chat", real)
    assert r.response == eng.chat(bakery.document, [{"role": "user", "content": question}], max_new_tokens=6).text
    whole = r.source_nodes
    assert len(whole) == 1 and whole[0].node.metadata["whole_document"] and whole[0].score is None
    assert whole[0].node.text == SHORT and whole[0].node.metadata["document_score"] > 0

    # a question about two documents: both picked, still one answer, sources from each
    monkeypatch.setattr(eng, "chat", chat)
    generations.clear()
    r = qe.query("When does the ferry to Inchmurrin leave, and when was the lighthouse built?")
    picked = [d["doc_id"] for d in r.metadata["documents"]]
    assert sorted(picked) == ["ferry", "lighthouse"] and len(generations) == 1
    assert {n.node.metadata["doc_id"] for n in r.source_nodes} == {"ferry", "lighthouse"}
    primary = {e.doc_id: e for e in qe.documents}[picked[0]]
    assert generations[0][0] is primary.document
    other_label = "lighthouse.txt" if picked[0] == "ferry" else "ferry.txt"
    asked = generations[0][1][-1]["content"]
    assert f"[{other_label}]" in asked and asked.endswith("Question: When does the ferry to Inchmurrin leave, and "
                                                          "when was the lighthouse built?")
    assert not r.response.startswith("["), "not concatenated per-document answers"
    assert list(r.metadata["answers"]) == [picked[0]]


def test_response_modes(eng, docs):
    qe = ActQKVQueryEngine(docs, engine=eng, max_tokens=4, response_mode="accumulate", relevance=0.0)
    r = qe.query("When does the ferry leave on Tuesdays?")
    per_doc = r.metadata["answers"]
    assert set(per_doc) == {"ferry", "bakery"}
    order = [d["doc_id"] for d in r.metadata["documents"]]
    assert r.response == "\n\n".join(f"[{d}.txt] {per_doc[d]['text'].strip()}" for d in order)
    nothing = ActQKVQueryEngine(docs, engine=eng, response_mode="no_text").query("When does the ferry leave?")
    assert nothing.response is None and nothing.source_nodes
    for mode in ("refine", "tree_summarize", "generation"):
        with pytest.raises(ValueError, match=f"response_mode '{mode}' is not supported"):
            ActQKVQueryEngine(docs, engine=eng, response_mode=mode)
    with pytest.raises(ValueError, match="does not stream"):
        ActQKVQueryEngine(docs, engine=eng, response_mode="accumulate", streaming=True).query("ferry?")


def test_query_engine_events_and_streaming(eng, docs):
    handler = LlamaDebugHandler()
    qe = ActQKVQueryEngine(docs, engine=eng, max_tokens=6, callback_manager=CallbackManager([handler]))
    r = qe.query("When does the ferry leave?")
    for kind in (CBEventType.QUERY, CBEventType.RETRIEVE, CBEventType.SYNTHESIZE, CBEventType.LLM):
        pairs = handler.get_event_pairs(kind)
        assert len(pairs) == 1, kind
    llm_end = handler.get_llm_inputs_outputs()[0][1]
    assert llm_end.payload["response"].message.content == r.response
    retrieved = handler.get_event_pairs(CBEventType.RETRIEVE)[0][1].payload["nodes"]
    assert [n.node.id_ for n in retrieved] == [n.node.id_ for n in r.source_nodes]

    handler.flush_event_logs()
    streaming = ActQKVQueryEngine(docs, engine=eng, max_tokens=6, streaming=True,
                                  callback_manager=CallbackManager([handler]))
    s = streaming.query("When does the ferry leave?")
    assert isinstance(s, StreamingResponse)
    assert [n.node.id_ for n in s.source_nodes] == [n.node.id_ for n in r.source_nodes]
    [started] = handler.get_event_pairs(CBEventType.LLM)
    assert len(started) == 1, "the LLM event ends when the stream does"
    pieces = list(s.response_gen)
    assert len(pieces) >= 2 and "".join(pieces) == r.response
    [(start, end)] = handler.get_llm_inputs_outputs()
    assert end.payload["response"].message.content == r.response


def test_async_query_and_retriever(qe):
    sync = qe.query("When does the ferry leave?")
    r = asyncio.run(qe.aquery("When does the ferry leave?"))
    assert r.response == sync.response
    retriever = qe.as_retriever(top_k=2)
    assert isinstance(retriever, ActQKVRetriever)
    nodes = retriever.retrieve("When does the ferry leave?")
    ferry = [n for n in nodes if n.node.metadata["doc_id"] == "ferry"]
    assert 1 <= len(ferry) <= 2 and all(n.score is not None for n in ferry)
    assert asyncio.run(retriever.aretrieve("When does the ferry leave?"))[0].node.id_ == nodes[0].node.id_


def test_query_engine_bad_input(eng, qe):
    with pytest.raises(ValueError, match="no documents"):
        ActQKVQueryEngine([], engine=eng)
    with pytest.raises(ValueError, match="empty-doc"):
        ActQKVQueryEngine([LIDocument(text="  ", id_="empty-doc")], engine=eng)
    with pytest.raises(ValueError, match="duplicate"):
        ActQKVQueryEngine([LIDocument(text=SHORT, id_="a"), LIDocument(text=SHORT, id_="a")], engine=eng)
    with pytest.raises(ValueError, match="no document with id"):
        qe.for_document("nope")
    with pytest.raises(ValueError, match="empty"):
        qe.query("   ")


def test_documents_are_cached_and_reused_across_engines(tmp_path, docs):
    # two engines on the same weights and cache folder stand for two runs (processes) of a program
    first = Engine(tiny_model("llama"), byte_tokenizer(), progress=False, cache=tmp_path / "cache")
    a = ActQKVQueryEngine(docs, engine=first, max_tokens=6)
    assert [e.from_cache for e in a.documents] == [False, False]
    second = Engine(tiny_model("llama"), byte_tokenizer(), progress=False, cache=tmp_path / "cache")
    b = ActQKVQueryEngine(docs, engine=second, max_tokens=6)
    assert [e.from_cache for e in b.documents] == [True, True]
    assert b.query("Who is the captain?").response == a.query("Who is the captain?").response
    changed = [LIDocument(text=SHORT + " And scones.", id_="bakery")]
    assert [e.from_cache for e in ActQKVQueryEngine(changed, engine=second).documents] == [False]


# ---------------------------------------------------------------------------------------- HuggingFaceLLM arguments
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model saved as a local Hugging Face directory (what model_name= points at)."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def test_model_name_tokenizer_name_model_kwargs_device_map(model_dir, eng):
    llm = ActQKVLLM(model_name=str(model_dir), tokenizer_name=str(model_dir), device_map="cpu",
                    model_kwargs={"dtype": "float32", "question_weight": 0.5, "cache": False, "progress": False},
                    max_new_tokens=4)
    assert llm.metadata.model_name == "tiny-llama"  # known before the weights load
    loaded = llm.get_engine()
    assert loaded.model_id.endswith("tiny-llama") and loaded.config.question_weight == 0.5
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert isinstance(llm.complete("Hello").text, str)
    with pytest.raises(ValueError, match="tokenizer_name='gpt2' differs from the model"):
        ActQKVLLM(model_name=str(model_dir), tokenizer_name="gpt2")
    with pytest.raises(ValueError, match=r"model_kwargs \['load_in_4bit'\] are not supported"):
        ActQKVLLM(model_name=str(model_dir), model_kwargs={"load_in_4bit": True})
    with pytest.raises(ValueError, match="multi-device map"):
        ActQKVLLM(model_name=str(model_dir), device_map={"": 0})
    with pytest.raises(ValueError, match="already loaded"):
        ActQKVLLM(engine=eng, model_kwargs={"budget": 96})


def test_loaded_model_and_tokenizer_objects():
    llm = ActQKVLLM(model=tiny_model("llama"), tokenizer=byte_tokenizer(), model_kwargs={"budget": 96},
                    max_new_tokens=3)
    assert llm.get_engine().config.budget == 96 and llm.metadata.model_name == "llama"
    assert llm.complete("Hi").additional_kwargs["completion_tokens"] <= 3
    with pytest.raises(ValueError, match="needs its tokenizer"):
        ActQKVLLM(model=tiny_model("llama"))
    with pytest.raises(ValueError, match="goes with a loaded model object"):
        ActQKVLLM(tokenizer=byte_tokenizer())
    with pytest.raises(ValueError, match="already on its device"):
        ActQKVLLM(model=tiny_model("llama"), tokenizer=byte_tokenizer(), model_kwargs={"dtype": "float16"})


def test_max_new_tokens_and_generate_kwargs(eng):
    turns = [{"role": "user", "content": "Who is the captain?"}]
    doc = eng.prefill(LONG)
    llm = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=5)
    assert llm.complete("Who is the captain?").text == eng.chat(doc, turns, max_new_tokens=5).text
    assert llm.complete("Who is the captain?", max_new_tokens=2).additional_kwargs["completion_tokens"] <= 2
    assert ActQKVLLM(engine=eng, max_tokens=7).max_new_tokens == 7  # this class's former name
    sampled = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6,
                        generate_kwargs={"do_sample": True, "top_p": 0.9, "seed": 3})
    expected = eng.chat(doc, turns, max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3).text
    assert sampled.complete("Who is the captain?").text == expected
    assert sampled.complete("Who is the captain?", generate_kwargs={"do_sample": False}).text == \
        eng.chat(doc, turns, max_new_tokens=6, top_p=0.9, seed=3).text
    with pytest.raises(ValueError, match=r"generate_kwargs \['num_beams', 'top_k'\] not supported"):
        ActQKVLLM(engine=eng, generate_kwargs={"top_k": 5, "num_beams": 2})
    with pytest.raises(ValueError, match=r"keyword \['repetition_penalty'\] not supported"):
        llm.complete("Hi", repetition_penalty=1.2)


def test_context_window_is_an_upper_bound(eng):
    small = ActQKVLLM(engine=eng, context_window=4096)
    assert small.metadata.context_window == 4096
    with pytest.raises(ValueError, match="more than context_window=100"):
        ActQKVLLM(engine=eng, document=LONG, context_window=100).complete("Who?")
    full = ActQKVLLM(engine=eng.with_method("full"), context_window=10**6)
    with pytest.warns(UserWarning, match="more than llama with method 'full' can read"):
        assert full.metadata.context_window == eng.native_window


def test_is_chat_model_false_is_plain_text_continuation(eng):
    raw = ActQKVLLM(engine=eng, document=LONG, is_chat_model=False, max_new_tokens=6)
    assert not raw.metadata.is_chat_model
    doc = eng.prefill(LONG, chat=False)
    assert raw.complete(" The captain is").text == eng.generate(doc, " The captain is", max_new_tokens=6)
    seen = []

    def messages_to_prompt(messages):
        seen.append(messages)
        return " " + " / ".join(m.content for m in messages)

    custom = ActQKVLLM(engine=eng, document=LONG, is_chat_model=False, max_new_tokens=6,
                       messages_to_prompt=messages_to_prompt)
    assert custom.chat([user("The captain is")]).message.content == \
        eng.generate(doc, " The captain is", max_new_tokens=6) and len(seen) == 1
    with pytest.raises(ValueError, match="pass is_chat_model=False"):
        ActQKVLLM(engine=eng, messages_to_prompt=messages_to_prompt)
    with pytest.raises(ValueError, match="pass is_chat_model=False"):
        ActQKVLLM(engine=eng, completion_to_prompt=lambda p: p)


def test_system_prompt_and_query_wrapper_prompt(eng):
    doc = eng.prefill(LONG)
    llm = ActQKVLLM(engine=eng, document=LONG, max_new_tokens=6, system_prompt="Answer in one word.",
                    query_wrapper_prompt="Question: {query_str}")  # a str, as HuggingFaceLLM takes it
    assert isinstance(llm.query_wrapper_prompt, PromptTemplate)
    expected = eng.chat(doc, [{"role": "system", "content": "Answer in one word."},
                              {"role": "user", "content": "Question: Who?"}], max_new_tokens=6).text
    assert llm.complete("Who?").text == expected
    # formatted=True: the prompt is used as it is (LlamaIndex's predict() has already extended it)
    assert llm.complete("Who?", formatted=True).text == \
        eng.chat(doc, [{"role": "user", "content": "Who?"}], max_new_tokens=6).text


def test_stopping_ids_tokenizer_options_and_callbacks(eng):
    eos = sorted(eng.eos_ids)
    assert ActQKVLLM(engine=eng, stopping_ids=eos).stopping_ids == eos
    with pytest.raises(ValueError, match=r"stopping_ids \[5\] are not end-of-turn ids"):
        ActQKVLLM(engine=eng, stopping_ids=[5])
    with pytest.raises(ValueError, match="tokenizer_kwargs"):
        ActQKVLLM(engine=eng, tokenizer_kwargs={"max_length": 10})
    with pytest.raises(ValueError, match=r"no argument\(s\) \['trust_remote_code'\]"):
        ActQKVLLM(engine=eng, trust_remote_code=True)  # never silently dropped
    with pytest.raises(ValueError, match="tokenizer_outputs_to_remove is not needed"):
        ActQKVLLM(engine=eng, tokenizer_outputs_to_remove=["token_type_ids"])
    handler = LlamaDebugHandler()
    llm = ActQKVLLM(engine=eng, max_new_tokens=3, callback_manager=CallbackManager([handler]))
    out = llm.complete("Hello")
    [(start, end)] = handler.get_llm_inputs_outputs()
    assert end.payload["completion"].text == out.text
