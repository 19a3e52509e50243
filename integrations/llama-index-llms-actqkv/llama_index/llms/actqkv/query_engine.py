"""A LlamaIndex query engine (and retriever) over long documents read once and cached on disk.

    from llama_index.core import SimpleDirectoryReader
    from llama_index_actqkv import ActQKVQueryEngine
    docs = SimpleDirectoryReader("books/", filename_as_id=True).load_data()
    qe = ActQKVQueryEngine(docs)               # prefills each document, or reuses its disk cache
    r = qe.query("Who is the narrator?")       # asks every document; r.source_nodes: attended spans
    qe.for_document(docs[0].doc_id).query("...")   # one document only

Nothing is chunked or embedded: each document is read whole by the model (block memory), and
the "sources" are the spans its retrieval actually attended to while answering.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import (Document as LIDocument, NodeRelationship, NodeWithScore, QueryBundle,
                                     RelatedNodeInfo, TextNode)

from actqkv_llm import Answer, Document, Engine
from actqkv_llm.aio import run_in_thread_async

from ._engine import engine_name, shared_engine

_SPAN_KEYS = ["doc_id", "start_token", "end_token", "whole_document"]


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


def source_nodes(entry: PrefilledDocument, answer: Answer) -> list[NodeWithScore]:
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
                                  "whole_document": whole},
                        excluded_llm_metadata_keys=_SPAN_KEYS, excluded_embed_metadata_keys=_SPAN_KEYS,
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=entry.doc_id)})
        nodes.append(NodeWithScore(node=node, score=score))
    return nodes


class ActQKVQueryEngine(BaseQueryEngine):
    """Answers questions about LlamaIndex ``Document`` s, each read once by an actqkv engine.

    Each document's text is prefilled into block memory through ``engine.prefill``, which stores it
    in the engine's disk cache keyed by the text's content hash and the model fingerprint: a later
    run (another process) on the same text and model reuses it instead of reading it again.
    ``self.documents[i].from_cache`` says which happened.

    A query is asked of every selected document separately (a model reads one document at a time),
    and the answers are combined in the order of the documents, each under its name
    (``file_name`` metadata, else the doc id): ``"[a.txt] ...\\n\\n[b.txt] ..."``. The attention-mass
    scores of different documents are not comparable (each is a share of that document's own
    retrieval), so no answer is picked over another. ``response.metadata["answers"]`` holds each
    document's answer; ``for_document(doc_id)`` queries one document only, with a plain answer.

    ``response.source_nodes`` are the spans retrieval attended to while answering
    (``Answer.sources``), as ``TextNode`` s with ``doc_id``, ``start_token``, ``end_token``.
    """

    def __init__(self, documents: Sequence[LIDocument], engine: Optional[Engine] = None, *,
                 model: Optional[str] = None, method: Optional[str] = None, max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, stop: Optional[list[str]] = None,
                 seed: Optional[int] = None, system_prompt: Optional[str] = None,
                 callback_manager: Optional[CallbackManager] = None,
                 _prefilled: Optional[list[PrefilledDocument]] = None) -> None:
        super().__init__(callback_manager)
        if engine is None:
            engine = shared_engine(model, method)
        elif method is not None and method != engine.config.method:
            engine = engine.with_method(method)
        self.engine = engine
        self.sampling = {"max_new_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                         "stop": list(stop) if stop else None, "seed": seed}
        self.system_prompt = system_prompt
        if _prefilled is not None:
            self.documents = _prefilled
            return
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
                                       system_prompt=self.system_prompt, _prefilled=[entry])
                qe.sampling = dict(self.sampling)
                return qe
        raise ValueError(f"no document with id {doc_id!r}; known: {[e.doc_id for e in self.documents]}")

    def as_retriever(self, top_k: Optional[int] = None, **kwargs: Any) -> "ActQKVRetriever":
        return ActQKVRetriever(self, top_k=top_k, **kwargs)

    # ------------------------------------------------------------------ answering
    def _messages(self, question: str) -> list[dict[str, str]]:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the query is empty")
        turns = [{"role": "user", "content": question}]
        if self.system_prompt:
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def ask(self, entry: PrefilledDocument, question: str, **sampling: Any) -> Answer:
        return self.engine.chat(entry.document, self._messages(question), **{**self.sampling, **sampling})

    def _query(self, query_bundle: QueryBundle) -> Response:
        question = query_bundle.query_str
        self._messages(question)  # fail before any work on an empty query
        answers = [(entry, self.ask(entry, question)) for entry in self.documents]
        nodes = [n for entry, answer in answers for n in source_nodes(entry, answer)]
        if len(answers) == 1:
            text = answers[0][1].text
        else:
            text = "\n\n".join(f"[{entry.label}] {answer.text.strip()}" for entry, answer in answers)
        meta = {"model_name": engine_name(self.engine),
                "answers": {entry.doc_id: {"text": a.text, "finish_reason": a.finish_reason,
                                           "prompt_tokens": a.usage.prompt_tokens,
                                           "completion_tokens": a.usage.completion_tokens,
                                           "cached_tokens": a.usage.cached_tokens}
                            for entry, a in answers}}
        return Response(response=text, source_nodes=nodes, metadata=meta)

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return await run_in_thread_async(lambda: self._query(query_bundle))

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.as_retriever().retrieve(query_bundle)

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}


class ActQKVRetriever(BaseRetriever):
    """The spans each document's retrieval attends to while reading a question, as nodes.

    It runs the question (and one generated token) on each document and returns the
    :attr:`Answer.sources`; scores are shares of that document's attention mass, so they rank spans
    within a document. ``top_k`` keeps the best ``top_k`` spans per document.
    """

    def __init__(self, query_engine: ActQKVQueryEngine, top_k: Optional[int] = None,
                 callback_manager: Optional[CallbackManager] = None, **kwargs: Any) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.query_engine, self.top_k = query_engine, top_k
        super().__init__(callback_manager=callback_manager or query_engine.callback_manager, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        out = []
        for entry in self.query_engine.documents:
            answer = self.query_engine.ask(entry, query_bundle.query_str, max_new_tokens=1)
            out.extend(source_nodes(entry, answer)[: self.top_k])
        return out

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await run_in_thread_async(lambda: self._retrieve(query_bundle))


__all__ = ["ActQKVQueryEngine", "ActQKVRetriever", "PrefilledDocument", "source_nodes"]
