"""What the LangChain classes share: the engine, the bound document, sampling and result metadata.

No retrieval or generation logic lives here: everything is a call into :mod:`actqkv_llm`.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from actqkv_llm import Answer, CacheError, Document, Engine
from actqkv_llm.shared import DEFAULT_MODEL_NAME, engine_name, shared_engine, short_model_name  # noqa: F401

#: Standard LangChain constructor arguments that mean nothing for a local model: accepted, ignored.
IGNORED_STANDARD_PARAMS = frozenset({"api_key", "timeout", "max_retries", "base_url", "request_timeout"})
#: Per-call keyword arguments (``model.invoke(..., max_tokens=8)``) that override the fields.
CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "seed")

def source_dicts(answer: Answer) -> list[dict[str, Any]]:
    return [{"start": s.start, "end": s.end, "text": s.text, "score": float(s.score)} for s in answer.sources]


def usage_metadata(answer: Answer) -> dict[str, Any]:
    u = answer.usage
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "input_token_details": {"cache_read": u.cached_tokens}}


# ---------------------------------------------------------------------------------------- the fields
class ActQKVParams(BaseModel):
    """Fields and engine/document plumbing shared by :class:`ChatActQKV` and :class:`ActQKVLLM`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    engine: Optional[Engine] = Field(default=None, exclude=True, repr=False)
    """The engine to run on. Default: a process-wide engine on ``model_name`` (None: the embedded
    SmolLM2-135M-Instruct), created on first use and shared by every instance."""
    model_name: Optional[str] = Field(default=None, alias="model")
    """Without ``engine``: the local model (directory, cached hub id or GGUF path) to load; None for the
    embedded default. With ``engine``: only the name reported in metadata (default: the engine's)."""
    method: Optional[str] = None
    """Retrieval method (``actqkv``, ``infllm``, ``full``...); None keeps the engine's."""
    document: Union[str, Document, None] = Field(default=None, repr=False)
    """The document to answer about: its text, or an already prefilled :class:`actqkv_llm.Document`."""
    document_path: Optional[Union[str, Path]] = None
    """A UTF-8 text file to answer about (read and prefilled on first use)."""
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

    _doc: Optional[Document] = PrivateAttr(default=None)
    _doc_lock: Any = PrivateAttr(default_factory=threading.RLock)
    _engine: Optional[Engine] = PrivateAttr(default=None)

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
        given = [n for n in ("document", "document_path", "cache_key") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of document, document_path and cache_key (got {', '.join(given)})")
        if isinstance(self.document, str) and not self.document.strip():
            raise ValueError("document is empty: give the text of the document to answer about")
        if self.document_path is not None and not Path(self.document_path).is_file():
            raise ValueError(f"document_path {str(self.document_path)!r} is not a readable file")
        if self.cache_key is not None and not str(self.cache_key).strip():
            raise ValueError("cache_key is empty")
        if self.stop is not None and any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        return self

    # ------------------------------------------------------------------ engine + document
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
            if self.method is not None and self.method != eng.config.method:
                eng = eng.with_method(self.method)
            self._engine = eng
            return eng

    @property
    def is_bound(self) -> bool:
        return any(getattr(self, n) is not None for n in ("document", "document_path", "cache_key"))

    def _chat_layout(self) -> bool:
        return True

    def get_document(self) -> Optional[Document]:
        """The bound document, prefilled (or loaded from the cache) once, on first use; None if unbound.

        Thread-safe: concurrent first calls wait for one prefill.
        """
        if not self.is_bound:
            return None
        if self._doc is not None:
            return self._doc
        with self._doc_lock:
            if self._doc is None:
                self._doc = self._open_document()
        return self._doc

    def _open_document(self) -> Document:
        eng = self.get_engine()
        if isinstance(self.document, Document):
            return self.document
        if self.cache_key is not None:
            try:
                return eng.load(self.cache_key)
            except (CacheError, FileNotFoundError, KeyError) as exc:
                raise ValueError(f"cannot open cached document {self.cache_key!r}: {exc}") from exc
        if self.document_path is not None:
            try:
                text = Path(self.document_path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read document_path {str(self.document_path)!r}: {exc}") from exc
        else:
            text = self.document
        return eng.prefill(text, chat=self._chat_layout())

    # ------------------------------------------------------------------ calls
    def _sampling(self, stop: Optional[list[str]], kwargs: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in kwargs if k not in CALL_OPTIONS and not k.startswith("ls_"))
        if "model" in bad:
            raise ValueError(f"{type(self).__name__} cannot switch models per call (model={kwargs['model']!r}); "
                             "create another instance with model=... or engine=...")
        if bad:
            raise ValueError(f"unsupported keyword argument(s) {bad}; per-call options are {list(CALL_OPTIONS)} "
                             "and stop")
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
        """The model name for tracing and metadata (does not load the engine)."""
        if self.engine is not None and self.model_name:
            return self.model_name
        eng = self._engine or self.engine
        if eng is not None:
            return engine_name(eng)
        return short_model_name(self.model_name) if self.model_name else DEFAULT_MODEL_NAME

    def response_metadata(self, answer: Answer) -> dict[str, Any]:
        doc = self._doc
        meta: dict[str, Any] = {"model_name": self.reported_model_name(), "finish_reason": answer.finish_reason,
                                "model_provider": "actqkv", "sources": source_dicts(answer)}
        if doc is not None:
            meta["document_tokens"] = doc.n_tokens
            if doc.key:
                meta["cache_key"] = doc.key
        return meta

    def _document_label(self) -> Optional[str]:
        if isinstance(self.document, str):
            return "sha256:" + hashlib.sha256(self.document.encode("utf-8")).hexdigest()[:16]
        if isinstance(self.document, Document):
            return self.document.key or repr(self.document)
        if self.document_path is not None:
            return str(self.document_path)
        return self.cache_key
