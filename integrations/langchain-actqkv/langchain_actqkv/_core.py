"""What the LangChain classes share: the engine, documents (bound or per call), sampling, token
counts, cache keys and result metadata.

No retrieval or generation logic lives here: everything is a call into :mod:`actqkv_llm`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from actqkv_llm import Answer, CacheError, Document, Engine
from actqkv_llm.shared import DEFAULT_MODEL_NAME, engine_name, shared_engine, short_model_name  # noqa: F401

#: Standard LangChain constructor arguments that mean nothing for a local model: accepted, ignored.
IGNORED_STANDARD_PARAMS = frozenset({"api_key", "timeout", "max_retries", "base_url", "request_timeout"})
#: Per-call keyword arguments (``model.invoke(..., max_tokens=8)``) that override the fields.
CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "seed")
#: The ways to name a document, as fields and per call (``invoke(..., document=...)``, ``bind``,
#: ``config={"configurable": {"document": ...}}``).
DOCUMENT_ARGS = ("document", "document_path", "cache_key")
#: Per-call keywords set by ``bind_tools`` / ``with_structured_output`` (chat model only).
STRUCTURE_ARGS = ("tools", "tool_choice", "response_format")


def source_dicts(answer: Answer) -> list[dict[str, Any]]:
    return [{"start": s.start, "end": s.end, "text": s.text, "score": float(s.score)} for s in answer.sources]


def usage_metadata(answer: Answer) -> dict[str, Any]:
    u = answer.usage
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "input_token_details": {"cache_read": u.cached_tokens}}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DocumentSpec:
    """A document named by a field or a call: ``kind`` is text, path, document or cache_key."""

    kind: str
    value: Any

    @classmethod
    def of(cls, name: str, value: Any) -> "DocumentSpec":
        if name == "document":
            if isinstance(value, Document):
                return cls("document", value)
            if isinstance(value, os.PathLike):
                return cls.of("document_path", value)
            if not isinstance(value, str):
                raise ValueError(f"document must be text, a path (pathlib.Path), an actqkv_llm.Document or "
                                 f"None; got {type(value).__name__}")
            if not value.strip():
                raise ValueError("document is empty: give the text of the document to answer about")
            return cls("text", value)
        if name == "document_path":
            if not isinstance(value, (str, os.PathLike)) or not Path(value).is_file():
                raise ValueError(f"document_path {str(value)!r} is not a readable file")
            return cls("path", Path(value))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"cache_key must be a non-empty string, got {value!r}")
        return cls("cache_key", value)

    def text(self) -> str:
        """The document's text (a path is read now, so a changed file is seen)."""
        if self.kind == "text":
            return self.value
        try:
            return Path(self.value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read document_path {str(self.value)!r}: {exc}") from exc

    def fingerprint(self) -> str:
        """What identifies the content: a sha256 of the text (of the file's current text for a
        path), the cache key, or the prefilled document's text and key."""
        if self.kind in ("text", "path"):
            return "sha256:" + _sha256(self.text())
        if self.kind == "cache_key":
            return "cache_key:" + self.value
        doc: Document = self.value
        if doc.key:
            return "cache_key:" + doc.key
        return f"sha256:{_sha256(doc.text)}:{doc.layout}" if doc.text else f"document:{id(doc)}"


# ---------------------------------------------------------------------------------------- the fields
class ActQKVParams(BaseModel):
    """Fields and engine/document plumbing shared by :class:`ChatActQKV` and :class:`ActQKVLLM`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    engine: Optional[Engine] = Field(default=None, exclude=True, repr=False)
    """The engine to run on. Default: a process-wide engine on ``model_name`` (None: the embedded
    Qwen2.5-Coder-0.5B-Instruct), created on first use and shared by every instance."""
    model_name: Optional[str] = Field(default=None, alias="model")
    """Without ``engine``: the local model (directory, cached hub id or GGUF path) to load; None for the
    embedded default. With ``engine``: only the name reported in metadata (default: the engine's)."""
    method: Optional[str] = None
    """Retrieval method (``actqkv``, ``infllm``, ``full``...); None keeps the engine's."""
    document: Union[str, Document, Path, None] = Field(default=None, repr=False)
    """The default document to answer about: its text, a ``pathlib.Path``, or an already prefilled
    :class:`actqkv_llm.Document`. A call can name another (``invoke(..., document=...)``)."""
    document_path: Optional[Union[str, Path]] = None
    """A UTF-8 text file to answer about (read on each call, prefilled again only when it changed)."""
    cache_key: Optional[str] = None
    """The key (or path) of a document already in the engine's disk cache (``eng.load(key)``)."""
    max_tokens: int = Field(default=256, ge=1)
    """Most tokens to generate per call."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 is greedy (deterministic)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Optional[list[str]] = None
    """Stop sequences: the answer is cut before the first one. A per-call ``stop`` replaces these."""
    seed: Optional[int] = None
    """Seed for sampling (temperature > 0)."""
    max_open_documents: int = Field(default=4, ge=1)
    """Prefilled documents kept in memory by this model object (least recently used dropped first;
    the engine's disk cache still has them)."""

    _docs: Any = PrivateAttr(default_factory=OrderedDict)
    _doc_lock: Any = PrivateAttr(default_factory=threading.RLock)
    _engine: Optional[Engine] = PrivateAttr(default=None)
    _helpers: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_meaningless(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = {k: v for k, v in values.items() if k not in IGNORED_STANDARD_PARAMS}
        known = set()
        for klass in cls.__mro__:
            for name, f in getattr(klass, "model_fields", {}).items():
                known.add(name)
                if f.alias:
                    known.add(f.alias)
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown argument(s) {unknown}", UserWarning, stacklevel=4)
        return values

    @model_validator(mode="after")
    def _check_document_args(self) -> "ActQKVParams":
        given = [n for n in DOCUMENT_ARGS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of document, document_path and cache_key (got {', '.join(given)})")
        if given:
            DocumentSpec.of(given[0], getattr(self, given[0]))  # fails early on an empty text or a missing file
        if self.stop is not None and any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        return self

    # ------------------------------------------------------------------ engine
    def get_engine(self) -> Engine:
        """The engine this instance runs on (loads the shared default on first use)."""
        if self._engine is not None:
            return self._engine
        with self._doc_lock:
            if self._engine is not None:
                return self._engine
            if isinstance(self.document, Document) and self.engine is None:
                eng = self.document.engine
            elif self.engine is not None:
                eng = self.engine
            else:
                eng = shared_engine(self.model_name, self.method)
            self._engine = self._with_method(eng)
            return self._engine

    def _with_method(self, eng: Engine) -> Engine:
        if self.method is not None and self.method != eng.config.method:
            return eng.with_method(self.method)
        return eng

    def _tokenizer(self) -> Any:
        tok = self.get_engine().tokenizer
        if tok is None:
            raise ValueError(f"{self.reported_model_name()} has no tokenizer to count tokens with")
        return tok

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's own tokenizer (no special tokens added)."""
        if getattr(self, "custom_get_token_ids", None) is not None:
            return self.custom_get_token_ids(text)
        return list(self._tokenizer().encode(text, add_special_tokens=False))

    # ------------------------------------------------------------------ documents
    def _chat_layout(self) -> bool:
        return True

    def document_spec(self, call: Optional[dict[str, Any]] = None) -> Optional[DocumentSpec]:
        """The document of a call: named in the call's keywords (or config), else the bound one."""
        call = call or {}
        given = [n for n in DOCUMENT_ARGS if call.get(n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of document, document_path and cache_key (got {', '.join(given)})")
        if given:
            return DocumentSpec.of(given[0], call[given[0]])
        for n in DOCUMENT_ARGS:
            if getattr(self, n) is not None:
                return DocumentSpec.of(n, getattr(self, n))
        return None

    def get_document(self, document: Any = None, *, document_path: Any = None, cache_key: Any = None,
                     tools: Optional[list[dict]] = None) -> Optional[Document]:
        """The prefilled document for these arguments (default: the bound one), None if there is none.

        Prefilled (or loaded from the engine's disk cache) once per content and kept in memory
        (``max_open_documents``): a text or file is known by its content hash, so a changed file
        is read again and an unchanged one never is. Thread-safe.
        """
        spec = self.document_spec({"document": document, "document_path": document_path, "cache_key": cache_key})
        return self._open(spec, tools)

    def _open(self, spec: Optional[DocumentSpec], tools: Optional[list[dict]] = None) -> Optional[Document]:
        if spec is None:
            return None
        if spec.kind == "document":
            if tools:
                raise ValueError("this call has tools, which the chat template renders before the document; "
                                 "a prefilled actqkv_llm.Document has none: pass the document's text or path")
            return spec.value
        eng = self.get_engine()
        if spec.kind == "cache_key":
            if tools:
                raise ValueError("this call has tools, which must be prefilled with the document; a cached "
                                 "document has none: pass the document's text or path")
            memo_key: tuple = ("cache_key", spec.value, id(eng))
        else:
            text = spec.text()
            if not text.strip():
                raise ValueError("document is empty: give the text of the document to answer about")
            memo_key = ("sha256", _sha256(text), self._chat_layout(), repr(tools or None), id(eng))
        with self._doc_lock:
            doc = self._docs.get(memo_key)
            if doc is None:
                if spec.kind == "cache_key":
                    try:
                        doc = eng.load(spec.value)
                    except (CacheError, FileNotFoundError, KeyError) as exc:
                        raise ValueError(f"cannot open cached document {spec.value!r}: {exc}") from exc
                else:
                    doc = eng.prefill(text, chat=self._chat_layout(), tools=tools or None)
                self._docs[memo_key] = doc
                while len(self._docs) > self.max_open_documents:
                    self._docs.popitem(last=False)
            self._docs.move_to_end(memo_key)
            return doc

    def _engine_for(self, doc: Optional[Document]) -> Engine:
        """The engine to answer on: the one that read the document (the same as ``get_engine()``
        for documents this object prefilled), with this object's ``method``."""
        if doc is None:
            return self.get_engine()
        if doc.engine is self.get_engine() or isinstance(self.document, Document) and doc is self.document:
            return self.get_engine()
        return self._with_method(doc.engine)

    # ------------------------------------------------------------------ calls
    def _known_call_args(self) -> tuple[str, ...]:
        return CALL_OPTIONS + DOCUMENT_ARGS

    def _sampling(self, stop: Optional[list[str]], kwargs: dict[str, Any]) -> dict[str, Any]:
        known = self._known_call_args()
        bad = sorted(k for k in kwargs if k not in known and not k.startswith("ls_"))
        if "model" in bad:
            raise ValueError(f"{type(self).__name__} cannot switch models per call (model={kwargs['model']!r}); "
                             "create another instance with model=... or engine=...")
        if bad:
            raise ValueError(f"unsupported keyword argument(s) {bad}; per-call options are "
                             f"{[k for k in known]} and stop")
        stops = stop if stop is not None else self.stop
        return {"max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
                "temperature": kwargs.get("temperature", self.temperature),
                "top_p": kwargs.get("top_p", self.top_p),
                "seed": kwargs.get("seed", self.seed),
                "stop": list(stops) if stops else None}

    def _tracing_params(self, model_type: str, stop: Optional[list[str]], kwargs: dict[str, Any]) -> dict[str, Any]:
        """LangSmith's ``ls_*`` parameters of a call (``kwargs``: the call's own options)."""
        name = kwargs.get("model")
        params: dict[str, Any] = {
            "ls_provider": "actqkv", "ls_model_type": model_type,
            "ls_model_name": name if isinstance(name, str) else self.reported_model_name(),
            "ls_temperature": kwargs.get("temperature", self.temperature),
            "ls_max_tokens": kwargs.get("max_tokens", self.max_tokens)}
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def reported_model_name(self) -> str:
        """The model name for tracing, metadata and cache keys: from the constructor arguments only,
        so it is the same before and after the weights load."""
        if self.model_name:
            return self.model_name if self.engine is not None else short_model_name(self.model_name)
        if self.engine is not None:
            return engine_name(self.engine)
        if isinstance(self.document, Document):
            return engine_name(self.document.engine)
        return DEFAULT_MODEL_NAME

    def response_metadata(self, answer: Answer, doc: Optional[Document]) -> dict[str, Any]:
        meta: dict[str, Any] = {"model_name": self.reported_model_name(), "finish_reason": answer.finish_reason,
                                "model_provider": "actqkv", "sources": source_dicts(answer)}
        if doc is not None:
            meta["document_tokens"] = doc.n_tokens
            if doc.key:
                meta["cache_key"] = doc.key
        return meta

    def _document_label(self) -> Optional[str]:
        spec = self.document_spec()
        return spec.fingerprint() if spec is not None else None

    def _cache_string(self, stop: Optional[list[str]], kwargs: dict[str, Any]) -> str:
        """The LangChain cache's ``llm_string``: the model's parameters, the document's content hash
        (never its path or text) and the call's options."""
        params = {k: v for k, v in self._identifying_params.items() if k != "document"}
        params["_type"] = self._llm_type
        params["stop"] = stop if stop is not None else self.stop
        spec = self.document_spec(kwargs)
        params["document"] = spec.fingerprint() if spec is not None else None
        for k, v in kwargs.items():
            if k not in DOCUMENT_ARGS and not k.startswith("ls_"):
                params[k] = v
        return str(sorted(params.items()))


def config_document_kwargs(config: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``config={"configurable": {"document": ...}}`` (or document_path / cache_key) as call keywords,
    unless the call names a document itself."""
    conf = (config or {}).get("configurable") or {} if isinstance(config, dict) else {}
    if any(kwargs.get(n) is not None for n in DOCUMENT_ARGS):
        return kwargs
    found = {n: conf[n] for n in DOCUMENT_ARGS if conf.get(n) is not None}
    return {**kwargs, **found} if found else kwargs
