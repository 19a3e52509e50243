"""A LlamaIndex query engine (and retriever) over long documents read once and cached on disk.

    from llama_index.core import SimpleDirectoryReader
    from llama_index.llms.actqkv import ActQKVQueryEngine
    docs = SimpleDirectoryReader("books/", filename_as_id=True).load_data()
    qe = ActQKVQueryEngine(docs)               # prefills each document, or reuses its disk cache
    r = qe.query("Who is the narrator?")       # picks the relevant documents, answers once
    qe.for_document(docs[0].doc_id).query("...")   # one document only

Nothing is chunked or embedded for the model: each document is read whole (block memory), and
the "sources" are the spans its retrieval actually attended to while reading the question.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response, StreamingResponse
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.response_synthesizers.type import ResponseMode
from llama_index.core.schema import (Document as LIDocument, NodeRelationship, NodeWithScore, QueryBundle,
                                     RelatedNodeInfo, TextNode)

from actqkv_llm import Answer, AnswerStream, Document, Engine
from actqkv_llm.aio import run_in_thread_async

from ._engine import engine_name, shared_engine

_SPAN_KEYS = ["doc_id", "start_token", "end_token", "whole_document", "document_score"]
#: response_mode values this engine implements (others are refused with the reason).
RESPONSE_MODES = ("compact", "accumulate", "no_text")
#: Words per passage of the lexical first pass (a document scores as its best passage).
PASSAGE_WORDS = 200


@dataclass
class PrefilledDocument:
    """One LlamaIndex document, read by the engine."""

    doc_id: str
    source: LIDocument
    document: Document
    from_cache: bool        # True when its KV came from the engine's disk cache (no prefill ran)
    seconds: float          # time spent prefilling or loading it

    @property
    def label(self) -> str:
        meta = self.source.metadata or {}
        return str(meta.get("file_name") or meta.get("title") or self.doc_id)


def _loaded_from_cache(doc: Document) -> bool:
    """Whether ``engine.prefill`` served this document from the disk cache: the cache reader
    attaches the manifest it loaded, a fresh prefill has none."""
    return getattr(doc, "manifest", None) is not None


def source_nodes(entry: PrefilledDocument, answer: Answer,
                 document_score: Optional[float] = None) -> list[NodeWithScore]:
    """The spans retrieval attended to, as LlamaIndex nodes (score: share of the attention mass).

    A document short enough to sit entirely in the attention window has no retrieval: it is
    returned whole, with no score.
    """
    base_meta = dict(entry.source.metadata or {})
    spans = [(s.start, s.end, s.text, float(s.score), False) for s in answer.sources]
    if not spans and entry.document.n_blocks == 0:
        spans = [(0, entry.document.n_tokens, entry.source.text, None, True)]
    nodes = []
    for start, end, text, score, whole in spans:
        node = TextNode(id_=f"{entry.doc_id}:{start}-{end}", text=text,
                        metadata={**base_meta, "doc_id": entry.doc_id, "start_token": start, "end_token": end,
                                  "whole_document": whole, "document_score": document_score},
                        excluded_llm_metadata_keys=_SPAN_KEYS, excluded_embed_metadata_keys=_SPAN_KEYS,
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=entry.doc_id)})
        nodes.append(NodeWithScore(node=node, score=score))
    return nodes


class LexicalSelector:
    """The cheap first pass over many documents: BM25 (bm25s) over passages of each document's
    text; a document scores as its best passage. No model call, no embedding."""

    def __init__(self, texts: Sequence[str], passage_words: int = PASSAGE_WORDS):
        import bm25s

        self._bm25s = bm25s
        passages, self.owner = [], []
        for i, text in enumerate(texts):
            words = text.split()
            for start in range(0, max(len(words), 1), passage_words):
                passages.append(" ".join(words[start:start + passage_words]))
                self.owner.append(i)
        self.n = len(texts)
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(passages, stopwords="en", show_progress=False), show_progress=False)

    def scores(self, question: str) -> list[float]:
        terms = self._bm25s.tokenize([question], stopwords="en", return_ids=False, show_progress=False)[0]
        per_doc = [0.0] * self.n
        if terms:
            for score, i in zip(self.index.get_scores(terms), self.owner):
                per_doc[i] = max(per_doc[i], float(score))
        return per_doc


class ActQKVQueryEngine(BaseQueryEngine):
    """Answers questions about LlamaIndex ``Document`` s, each read once by an actqkv engine.

    Each document's text is prefilled into block memory through ``engine.prefill``, which stores it
    in the engine's disk cache keyed by the text's content hash and the model fingerprint: a later
    run (another process) on the same text and model reuses it instead of reading it again.
    ``self.documents[i].from_cache`` says which happened.

    A query runs like LlamaIndex's retriever query engine -- ``retrieve`` then ``synthesize``,
    with the usual callback events (``QUERY``, ``RETRIEVE``, ``SYNTHESIZE``, ``LLM``):

    1. **Pick the relevant documents** (cheap first pass, :class:`LexicalSelector`: BM25 over each
       document's passages). The best one and those scoring at least ``relevance`` times it are
       kept, ``max_documents`` at most; when the question shares no word with any document, the
       first ``max_documents`` are kept.
    2. **Retrieve**: the question is read against each picked document's prefilled memory; the spans
       its retrieval attends to are the source nodes (``spans_per_document`` per document).
    3. **Answer once** (``response_mode="compact"``, the default): on the most relevant document's
       prefilled state, with the retrieved spans of the other picked documents given as passages
       in the question. ``"accumulate"`` answers on each picked document instead and joins the
       answers as ``[name] answer`` paragraphs; ``"no_text"`` only retrieves. Other response modes
       are refused: they chunk text into an LLM's prompt, which is what this engine avoids.

    ``streaming=True`` returns a ``StreamingResponse`` (``response_gen``). Source nodes are
    ``TextNode`` s with ``doc_id``, ``start_token``, ``end_token`` and ``document_score`` (the
    first pass's score); ``response.metadata["documents"]`` lists the picked documents.
    """

    def __init__(self, documents: Sequence[LIDocument], engine: Optional[Engine] = None, *,
                 model: Optional[str] = None, method: Optional[str] = None, max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, stop: Optional[list[str]] = None,
                 seed: Optional[int] = None, system_prompt: Optional[str] = None,
                 callback_manager: Optional[CallbackManager] = None, streaming: bool = False,
                 response_mode: Union[str, ResponseMode] = "compact", max_documents: int = 3,
                 relevance: float = 0.5, spans_per_document: int = 2,
                 _prefilled: Optional[list[PrefilledDocument]] = None) -> None:
        super().__init__(callback_manager)
        mode = response_mode.value if isinstance(response_mode, ResponseMode) else str(response_mode)
        if mode not in RESPONSE_MODES:
            raise ValueError(f"response_mode {mode!r} is not supported: ActQKVQueryEngine reads whole documents "
                             "into the model's memory instead of packing chunks into prompts; use 'compact' (one "
                             "answer from the relevant documents), 'accumulate' (one answer per relevant "
                             "document) or 'no_text' (sources only)")
        if not isinstance(max_documents, int) or max_documents < 1:
            raise ValueError(f"max_documents must be a positive integer, got {max_documents!r}")
        if not 0 <= relevance <= 1:
            raise ValueError(f"relevance must be in [0, 1], got {relevance!r}")
        if not isinstance(spans_per_document, int) or spans_per_document < 1:
            raise ValueError(f"spans_per_document must be a positive integer, got {spans_per_document!r}")
        if engine is None:
            engine = shared_engine(model, method)
        elif method is not None and method != engine.config.method:
            engine = engine.with_method(method)
        self.engine = engine
        self.sampling = {"max_new_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                         "stop": list(stop) if stop else None, "seed": seed}
        self.system_prompt = system_prompt
        self.streaming, self.response_mode = streaming, mode
        self.max_documents, self.relevance, self.spans_per_document = max_documents, relevance, spans_per_document
        if _prefilled is not None:
            self.documents = _prefilled
        else:
            documents = list(documents or [])
            if not documents:
                raise ValueError("no documents: give at least one llama_index Document")
            for d in documents:
                if not isinstance(d, LIDocument):
                    raise ValueError(f"documents must be llama_index Documents, got {type(d).__name__}")
            ids = [d.doc_id for d in documents]
            if len(set(ids)) != len(ids):
                raise ValueError("documents have duplicate doc ids; give each a distinct id_")
            self.documents = [self._read(d) for d in documents]
        self.selector = LexicalSelector([e.source.text for e in self.documents]) if len(self.documents) > 1 else None

    def _read(self, source: LIDocument) -> PrefilledDocument:
        text = source.text
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"document {source.doc_id!r} cannot be prefilled: it has no text")
        t0 = time.perf_counter()
        try:
            doc = self.engine.prefill(text)
        except ValueError as exc:
            raise ValueError(f"document {source.doc_id!r} cannot be prefilled: {exc}") from exc
        return PrefilledDocument(source.doc_id, source, doc, _loaded_from_cache(doc), time.perf_counter() - t0)

    # ------------------------------------------------------------------ selection
    def for_document(self, doc_id: str) -> "ActQKVQueryEngine":
        """A query engine over one of these documents (shares the prefilled state)."""
        for entry in self.documents:
            if entry.doc_id == doc_id:
                qe = ActQKVQueryEngine([], self.engine, callback_manager=self.callback_manager,
                                       system_prompt=self.system_prompt, streaming=self.streaming,
                                       response_mode=self.response_mode, spans_per_document=self.spans_per_document,
                                       _prefilled=[entry])
                qe.sampling = dict(self.sampling)
                return qe
        raise ValueError(f"no document with id {doc_id!r}; known: {[e.doc_id for e in self.documents]}")

    def select(self, question: str) -> list[tuple[PrefilledDocument, Optional[float]]]:
        """The documents relevant to ``question``, best first, with their first-pass scores."""
        self._messages(question)  # an empty question fails here
        if self.selector is None:
            return [(self.documents[0], None)]
        scores = self.selector.scores(question)
        best = max(scores)
        if best <= 0:
            return [(e, 0.0) for e in self.documents[: self.max_documents]]
        ranked = sorted(zip(self.documents, scores), key=lambda p: -p[1])
        return [(e, s) for e, s in ranked if s >= self.relevance * best][: self.max_documents]

    def as_retriever(self, top_k: Optional[int] = None, **kwargs: Any) -> "ActQKVRetriever":
        return ActQKVRetriever(self, top_k=top_k, **kwargs)

    # ------------------------------------------------------------------ answering
    def _messages(self, question: str, passages: str = "") -> list[dict[str, str]]:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the query is empty")
        content = f"{passages}\n\nQuestion: {question}" if passages else question
        turns = [{"role": "user", "content": content}]
        if self.system_prompt:
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def ask(self, entry: PrefilledDocument, question: str, passages: str = "", stream: bool = False,
            **sampling: Any) -> Union[Answer, AnswerStream]:
        return self.engine.chat(entry.document, self._messages(question, passages), stream=stream,
                                **{**self.sampling, **sampling})

    def _generate(self, entry: PrefilledDocument, question: str, passages: str = "") -> Union[Answer, Iterator]:
        """One model call, as an ``LLM`` event (a generator of text pieces when streaming)."""
        turns = self._messages(question, passages)
        payload = {EventPayload.MESSAGES: [ChatMessage(role=t["role"], content=t["content"]) for t in turns],
                   EventPayload.SERIALIZED: {"model": engine_name(self.engine), "document": entry.doc_id}}
        event_id = self.callback_manager.on_event_start(CBEventType.LLM, payload=payload)

        def end(answer: Answer) -> None:
            self.callback_manager.on_event_end(CBEventType.LLM, event_id=event_id, payload={
                EventPayload.MESSAGES: payload[EventPayload.MESSAGES],
                EventPayload.RESPONSE: ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT,
                                                                        content=answer.text))})

        if not self.streaming:
            answer = self.ask(entry, question, passages)
            end(answer)
            return answer
        stream = self.ask(entry, question, passages, stream=True)

        def pieces() -> Iterator[str]:
            yield from stream
            end(stream.answer)

        return pieces()

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.as_retriever(top_k=self.spans_per_document).retrieve(query_bundle)

    def synthesize(self, query_bundle: QueryBundle, nodes: list[NodeWithScore],
                   additional_source_nodes: Optional[Sequence[NodeWithScore]] = None) -> RESPONSE_TYPE:
        """Answer from retrieved nodes: once, on the document of the first node (the most relevant),
        with the other documents' spans as passages (see the class doc for the response modes)."""
        question = query_bundle.query_str
        with self.callback_manager.event(CBEventType.SYNTHESIZE,
                                         payload={EventPayload.QUERY_STR: question}) as event:
            response = self._synthesize(question, list(nodes) + list(additional_source_nodes or []))
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _synthesize(self, question: str, nodes: list[NodeWithScore]) -> RESPONSE_TYPE:
        by_id = {e.doc_id: e for e in self.documents}
        order: list[str] = []
        for n in nodes:
            doc_id = n.node.metadata.get("doc_id")
            if doc_id not in by_id:
                raise ValueError(f"a node of an unknown document ({doc_id!r}) cannot be answered from")
            if doc_id not in order:
                order.append(doc_id)
        if not order:
            order = [self.documents[0].doc_id]
        meta: dict[str, Any] = {"model_name": engine_name(self.engine), "response_mode": self.response_mode,
                                "documents": [{"doc_id": d, "label": by_id[d].label,
                                               "score": next((n.node.metadata.get("document_score") for n in nodes
                                                              if n.node.metadata.get("doc_id") == d), None)}
                                              for d in order]}
        if self.response_mode == "no_text":
            return Response(response=None, source_nodes=nodes, metadata=meta)
        if self.response_mode == "accumulate":
            if self.streaming:
                raise ValueError("response_mode='accumulate' answers each document in turn; it does not stream")
            answers = [(by_id[d], self._generate(by_id[d], question)) for d in order]
            text = answers[0][1].text if len(answers) == 1 else \
                "\n\n".join(f"[{e.label}] {a.text.strip()}" for e, a in answers)
            meta["answers"] = {e.doc_id: _answer_meta(a) for e, a in answers}
            return Response(response=text, source_nodes=nodes, metadata=meta)
        primary = by_id[order[0]]
        passages = "\n".join(f"[{by_id[n.node.metadata['doc_id']].label}] {n.node.get_content().strip()}"
                             for n in nodes if n.node.metadata["doc_id"] != primary.doc_id)
        if passages:
            passages = "Passages from other documents:\n" + passages
        result = self._generate(primary, question, passages)
        if self.streaming:
            return StreamingResponse(response_gen=result, source_nodes=nodes, metadata=meta)
        meta["answers"] = {primary.doc_id: _answer_meta(result)}
        return Response(response=result.text, source_nodes=nodes, metadata=meta)

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        self._messages(query_bundle.query_str)  # fail before any work on an empty query
        with self.callback_manager.event(CBEventType.QUERY,
                                         payload={EventPayload.QUERY_STR: query_bundle.query_str}) as event:
            nodes = self.retrieve(query_bundle)
            response = self.synthesize(query_bundle, nodes)
            event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        return await run_in_thread_async(lambda: self._query(query_bundle))

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}


def _answer_meta(a: Answer) -> dict[str, Any]:
    return {"text": a.text, "finish_reason": a.finish_reason, "prompt_tokens": a.usage.prompt_tokens,
            "completion_tokens": a.usage.completion_tokens, "cached_tokens": a.usage.cached_tokens}


class ActQKVRetriever(BaseRetriever):
    """The relevant documents' spans for a question, as nodes (``RETRIEVE`` events included).

    Picks the relevant documents (:meth:`ActQKVQueryEngine.select`), reads the question against each
    one's memory (the question and one generated token) and returns the spans its retrieval
    attends to (:attr:`Answer.sources`); scores are shares of that document's attention mass, so
    they rank spans within a document, and ``document_score`` in the metadata ranks documents.
    ``top_k`` keeps the best ``top_k`` spans per document.
    """

    def __init__(self, query_engine: ActQKVQueryEngine, top_k: Optional[int] = None,
                 callback_manager: Optional[CallbackManager] = None, **kwargs: Any) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.query_engine, self.top_k = query_engine, top_k
        super().__init__(callback_manager=callback_manager or query_engine.callback_manager, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        out = []
        for entry, score in self.query_engine.select(query_bundle.query_str):
            answer = self.query_engine.ask(entry, query_bundle.query_str, max_new_tokens=1)
            out.extend(source_nodes(entry, answer, score)[: self.top_k])
        return out

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await run_in_thread_async(lambda: self._retrieve(query_bundle))


__all__ = ["ActQKVQueryEngine", "ActQKVRetriever", "LexicalSelector", "PrefilledDocument", "source_nodes"]
