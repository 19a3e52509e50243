"""What the resident server holds and does: loaded models, prefilled documents, one answer at a time
per request (imports torch; the server process imports this module only after it listens).

Every model is loaded once (a second client asking for it while it loads waits for that load), and
answers go through the same calls as ``actqkv ask`` in one process: the same engine construction
(:class:`~actqkv_llm.engine.Engine` with the request's retrieval options), ``prefill`` (disk cache
included) and ``chat`` / ``complete``. Documents stay in memory, least recently used dropped first.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from ..reporting import PROG, answer_record
from ..engine import Engine
from ..models.choice import check_engine_options, resolve_cli_model
from .protocol import AskRequest

Emit = Callable[[dict[str, Any]], None]


class Cancelled(Exception):
    """The client went away (or the server is stopping): the request's work stops."""


@dataclass
class _ModelSlot:
    """One loaded model, and the engines (retrieval options) built on it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    base: Engine | None = None
    label: str = ""
    engines: dict[str, Engine] = field(default_factory=dict)


class ModelStore:
    """Engines by model source, device, dtype and cache root; each model loaded once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple, _ModelSlot] = {}
        self.loads = 0

    def engine(self, req: AskRequest, emit: Emit) -> tuple[Engine, str]:
        """The engine for the request's model and retrieval options, and a key naming both."""
        model_key = (req.model, req.gguf_file, req.device, req.dtype, req.cache_dir)
        with self._lock:
            slot = self._slots.setdefault(model_key, _ModelSlot())
        options = dict(req.retrieval)
        method = options.pop("method")
        with slot.lock:
            if slot.base is None:
                check_engine_options(req.device, req.dtype, req.retrieval)
                model, slot.label = resolve_cli_model(req.model, req.cache_dir, req.gguf_file)
                emit({"event": "status", "text": f"{PROG}: loading {slot.label} (resident server) ..."})
                slot.base = Engine.from_pretrained(model, gguf_file=req.gguf_file, device=req.device,
                                                   dtype=req.dtype, progress=False, cache_dir=req.cache_dir)
                with self._lock:
                    self.loads += 1
            key = json.dumps([method, options, req.force_past_window], sort_keys=True)
            eng = slot.engines.get(key)
            if eng is None:
                base = slot.base
                eng = Engine(base.model, base.tokenizer, method=method, progress=False, model_id=base.model_id,
                             fingerprint=base.fingerprint, cache=req.cache_dir,
                             allow_past_window=req.force_past_window, **options)
                slot.engines[key] = eng
        return eng, json.dumps([list(model_key), key])

    def labels(self) -> list[str]:
        with self._lock:
            return [s.label for s in self._slots.values() if s.base is not None]


class DocumentStore:
    """Prefilled documents kept in memory, at most ``capacity``, least recently used dropped first.
    A document being prefilled for one client is waited for by the others, not prefilled twice."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._docs: OrderedDict[Hashable, Any] = OrderedDict()
        self._making: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, make: Callable[[], Any]) -> tuple[Any, bool]:
        """(the document, whether it was in memory already)."""
        with self._lock:
            if key in self._docs:
                self._docs.move_to_end(key)
                return self._docs[key], True
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._docs:
                    self._docs.move_to_end(key)
                    return self._docs[key], True
            try:
                doc = make()
            finally:
                with self._lock:
                    self._making.pop(key, None)
            with self._lock:
                self._docs[key] = doc
                while len(self._docs) > self.capacity:
                    self._docs.popitem(last=False)
        return doc, False

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"tokens": d.n_tokens, "layout": d.layout, "key": d.key} for d in reversed(self._docs.values())]


class _RemoteBar:
    """The prefill's progress bar, as ``progress`` events; stops the prefill when the request is cancelled."""

    def __init__(self, total: int, emit: Emit, cancelled: threading.Event, show: bool):
        self.total, self.done = total, 0
        self._emit, self._cancelled, self._show = emit, cancelled, show

    def update(self, n: int) -> None:
        if self._cancelled.is_set():
            raise Cancelled("the request was cancelled")
        self.done += n
        if self._show:
            self._emit({"event": "progress", "done": self.done, "total": self.total})

    def close(self) -> None:
        pass


class Service:
    """The server's models and documents, and how one ask is answered."""

    def __init__(self, max_documents: int) -> None:
        self.models = ModelStore()
        self.documents = DocumentStore(max_documents)

    def ask(self, req: AskRequest, emit: Emit, cancelled: threading.Event) -> None:
        """Answer ``req``, sending status, progress, pieces and finally the ``answer`` event."""
        eng, engine_key = self.models.engine(req, emit)
        start = time.perf_counter()
        digest = hashlib.sha256(req.text.encode("utf-8")).hexdigest()
        key = (engine_key, digest, req.raw, req.cache)

        def make():
            bar = lambda total: _RemoteBar(total, emit, cancelled, req.progress)  # noqa: E731
            return eng.prefill(req.text, chat=not req.raw, cache=req.cache, progress=bar)

        doc, _ = self.documents.get(key, make)
        seconds = time.perf_counter() - start
        info = {"file": req.file, "tokens": doc.n_tokens, "layout": doc.layout, "key": doc.key,
                "path": str(doc.path) if doc.path else None, "seconds": round(seconds, 3)}
        emit({"event": "status", "text": f"{PROG}: {req.file}: {doc.n_tokens:,} tokens ready in {seconds:.1f} s"})
        if req.raw:
            stream = eng.complete(doc, req.question, stream=True, **req.sampling)
        else:
            stream = eng.chat(doc, [{"role": "user", "content": req.question}], stream=True, **req.sampling)
        start = time.perf_counter()
        pieces = iter(stream)
        try:
            for piece in pieces:
                if cancelled.is_set():
                    raise Cancelled("the request was cancelled")
                emit({"event": "piece", "text": piece})
        finally:
            pieces.close()
        emit({"event": "answer", "record": answer_record(stream.answer, info),
              "seconds": round(time.perf_counter() - start, 3)})

    def describe(self) -> dict[str, Any]:
        return {"models": self.models.labels(), "model_loads": self.models.loads,
                "documents": self.documents.describe()}
