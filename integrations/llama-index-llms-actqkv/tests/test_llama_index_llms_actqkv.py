"""LlamaIndex integration (llama_index.llms.actqkv), on a tiny random model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from llama_index.core import Document as LIDocument
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.base.response.schema import Response
from llama_index.core.schema import NodeWithScore, TextNode

from actqkv_llm import Engine
from llama_index.llms.actqkv import ActQKVLLM, ActQKVQueryEngine, ActQKVRetriever
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
    meta = ActQKVLLM(engine=eng, max_tokens=12).metadata
    assert meta.context_window == eng.max_context > eng.native_window
    assert meta.num_output == 12 and meta.is_chat_model and not meta.is_function_calling_model
    assert meta.model_name == "llama"


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
    expected = eng.chat(entry.document, [{"role": "user", "content": "Who is the captain?"}], max_new_tokens=6)
    assert r.response == expected.text
    assert [(n.node.metadata["start_token"], n.node.metadata["end_token"]) for n in r.source_nodes] == \
        [(s.start, s.end) for s in expected.sources]
    for n, s in zip(r.source_nodes, expected.sources):
        assert isinstance(n, NodeWithScore) and isinstance(n.node, TextNode)
        assert n.node.text == s.text and n.score == pytest.approx(s.score)
        assert n.node.metadata["doc_id"] == "ferry" and n.node.ref_doc_id == "ferry"
        assert n.node.metadata["file_name"] == "ferry.txt"


def test_query_all_documents_combines_answers(qe):
    r = qe.query("What is sold on Tuesdays?")
    per_doc = r.metadata["answers"]
    assert set(per_doc) == {"ferry", "bakery"}
    assert r.response == "\n\n".join(f"[{name}.txt] {per_doc[name]['text'].strip()}" for name in ("ferry", "bakery"))
    assert {n.node.metadata["doc_id"] for n in r.source_nodes} == {"ferry", "bakery"}
    whole = [n for n in r.source_nodes if n.node.metadata["doc_id"] == "bakery"]
    assert len(whole) == 1 and whole[0].node.metadata["whole_document"] and whole[0].score is None
    assert whole[0].node.text == SHORT
    assert per_doc["bakery"]["cached_tokens"] == qe.documents[1].document.n_tokens


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
