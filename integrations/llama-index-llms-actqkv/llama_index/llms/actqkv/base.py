"""ActQKVLLM: a LlamaIndex LLM on a local model, optionally bound to one long document.

    from llama_index.llms.actqkv import ActQKVLLM
    llm = ActQKVLLM(document=open("book.txt").read(), max_new_tokens=64)
    print(llm.complete("Who is the narrator?"))

It takes HuggingFaceLLM's arguments (``model_name``, ``max_new_tokens``, ``context_window``,
``generate_kwargs``, ``model_kwargs``, ``is_chat_model``, ``model``/``tokenizer`` objects, ...):
each is honoured, or refused with a ``ValueError`` that says why -- none is silently dropped.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, ChatResponseGen,
                                              CompletionResponse, CompletionResponseAsyncGen,
                                              CompletionResponseGen, LLMMetadata, MessageRole, TextBlock)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import PromptTemplate

from actqkv_llm import Answer, Document, Engine
from actqkv_llm.aio import iterate_in_thread, run_in_thread_async

from ._engine import DEFAULT_MODEL_NAME, engine_name, shared_engine, short_model_name

#: generate_kwargs (and per-call keywords) the engine's decoder understands, by their HF names.
SAMPLING_KEYS = {"max_new_tokens": "max_new_tokens", "max_tokens": "max_new_tokens", "temperature": "temperature",
                 "top_p": "top_p", "seed": "seed", "stop": "stop", "stop_strings": "stop"}
#: model_kwargs that choose how the weights load (Engine.from_pretrained) ...
LOAD_KEYS = {"dtype", "torch_dtype", "device", "gguf_file", "cache_dir", "cache", "progress"}
#: ... and retrieval options (RetrievalConfig); both may be given as model_kwargs.
RETRIEVAL_KEYS = {"block_size", "n_sink", "n_local", "exec_block", "repr_topk", "budget", "min_blocks",
                  "max_blocks", "question_weight", "prefill_chunk", "offload", "device_cache_blocks"}


def readable_tokens(engine: Engine) -> int:
    """How many tokens the engine can really read with its method: the model's native window for
    ``full``; sinks + local window for ``streaming`` (older tokens are dropped); for the retrieval
    methods (``actqkv``, ``infllm``), as many as the KV memory fits in -- host memory when blocks are
    offloaded or the model is on the CPU, the device's memory otherwise."""
    cfg, adapter = engine.config, engine.adapter
    if cfg.method == "full":
        return engine.native_window
    if cfg.method == "streaming":
        return cfg.n_sink + cfg.n_local
    element = torch.tensor([], dtype=engine.dtype).element_size()
    per_token = 2 * max(1, len(adapter.memory_layers)) * adapter.n_kv_heads * adapter.head_dim * element
    offload = cfg.offload is True or (cfg.offload == "auto" and engine.device.type == "cuda")
    if engine.device.type == "cuda" and not offload:
        memory = torch.cuda.get_device_properties(engine.device).total_memory
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(engine.native_window, int(memory // per_token))


_ROLES = {MessageRole.SYSTEM: "system", MessageRole.DEVELOPER: "system", MessageRole.USER: "user",
          MessageRole.ASSISTANT: "assistant", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages -> the engine's ``[{"role", "content"}]`` (text only)."""
    if not messages:
        raise ValueError("no messages: give at least one user message")
    out = []
    for m in messages:
        role = _ROLES.get(m.role)
        if role is None:
            raise ValueError(f"ActQKVLLM does not support {m.role.value!r} messages (no tool/function calling)")
        parts = []
        for block in m.blocks:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif type(block).__name__ in ("ThinkingBlock", "CachePoint"):
                continue
            else:
                raise ValueError(f"ActQKVLLM reads text only; got a {type(block).__name__} in a {role} message")
        out.append({"role": role, "content": "".join(parts)})
    return out


def answer_info(answer: Answer) -> dict[str, Any]:
    """What goes in ``additional_kwargs`` / ``raw``: finish reason, usage, sources."""
    u = answer.usage
    return {"finish_reason": answer.finish_reason,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens, "cached_tokens": u.cached_tokens,
            "sources": [{"start": s.start, "end": s.end, "text": s.text, "score": float(s.score)}
                        for s in answer.sources]}


class CallGatherer:
    """Gathers concurrent async calls into one batched call, run in a worker thread.

    ``await submit(run, args, item)`` joins the open batch of ``(run, args)`` (both hashable) on the
    running event loop, or opens one that closes ``wait`` seconds later (0: once the loop has run
    the steps that are ready now, so every call started in the same tick, e.g. by one
    ``asyncio.gather``, joins).
    A closed batch runs ``run(*args, items)`` in a worker thread -- the loop is not blocked -- which
    returns one result per item, in order; each caller gets its own. If it raises, each item runs
    alone (``run(*args, [item])``), so an error reaches only the callers it belongs to.
    """

    def __init__(self, wait: float = 0.0) -> None:
        self.wait = wait
        self._open: dict[tuple, list[tuple[Any, asyncio.Future]]] = {}
        self._running: set[asyncio.Task] = set()  # referenced until done (the loop keeps weak ones)

    async def submit(self, run: Callable[..., list[Any]], args: tuple, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        key = (loop, run, args)
        calls = self._open.get(key)
        if calls is None:
            calls = self._open[key] = []
            if self.wait > 0:
                loop.call_later(self.wait, self._close, key)
            else:
                loop.call_soon(self._close, key)
        future = loop.create_future()
        calls.append((item, future))
        return await future

    def _close(self, key: tuple) -> None:
        loop, run, args = key
        task = loop.create_task(self._run(run, args, self._open.pop(key)))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, run: Callable[..., list[Any]], args: tuple,
                   calls: list[tuple[Any, asyncio.Future]]) -> None:
        calls = [(item, future) for item, future in calls if not future.done()]  # callers still waiting
        if not calls:
            return
        try:
            try:
                results = await run_in_thread_async(lambda: run(*args, [item for item, _ in calls]))
            except Exception as exc:
                if len(calls) > 1:  # each alone: every caller gets its own answer or error
                    for call in calls:
                        await self._run(run, args, [call])
                elif not calls[0][1].done():
                    calls[0][1].set_exception(exc)
                return
            for (_, future), result in zip(calls, results):
                if not future.done():
                    future.set_result(result)
        finally:
            for _, future in calls:
                future.cancel()  # a no-op once answered; if this task was cancelled, nobody waits forever


class ActQKVLLM(CustomLLM):
    """LlamaIndex LLM over an :class:`actqkv_llm.Engine` (default: the embedded Qwen2.5-Coder-0.5B-Instruct).

    With ``document`` (text, or a prefilled :class:`actqkv_llm.Document`), every call answers about
    that document: it is prefilled once (lazily, thread-safe; reused from the engine's disk cache)
    and each call forks its own session from it. Without, a plain local model.

    HuggingFaceLLM's arguments, each honoured or refused (``ValueError``):

    * ``model_name`` (or ``model`` as a name): the local model to load (directory, cached hub id,
      ``.gguf``); None: the embedded default. ``model``/``tokenizer`` objects: an already loaded HF
      model and its tokenizer. ``engine``: an :class:`actqkv_llm.Engine` to run on.
    * ``tokenizer_name``: must name the model's own tokenizer (the engine loads it with the
      weights); another one is refused -- load it yourself and pass ``model=`` and ``tokenizer=``.
    * ``model_kwargs``: load options (``dtype``/``torch_dtype``, ``device``, ``gguf_file``,
      ``cache_dir``, ``cache``, ``progress``) and retrieval options (``budget``, ``n_local``...).
      ``device_map``: "auto"/None or one device ("cpu", "cuda:0"); a multi-device map is refused.
    * ``max_new_tokens`` (alias ``max_tokens``; also per call), ``generate_kwargs`` (``temperature``,
      ``top_p``, ``seed``, ``do_sample``, ``stop``/``stop_strings``, ``max_new_tokens``; also per
      call); any other generation option is refused by name.
    * ``context_window``: an upper bound. ``metadata.context_window`` is the smaller of it and what
      the engine can really read (:func:`readable_tokens`: the native window for ``full``, far more
      for the retrieval methods); a document longer than a given ``context_window`` is refused.
    * ``is_chat_model`` (default True): the model's chat template formats turns. False: the
      document is prefilled as plain text and prompts continue it (``messages_to_prompt``,
      ``completion_to_prompt``, ``query_wrapper_prompt`` and ``system_prompt`` apply, as for
      HuggingFaceLLM); custom ``messages_to_prompt``/``completion_to_prompt`` need it False.
    * ``stopping_ids``: accepted when they are the model's end-of-turn ids (where it stops anyway);
      others are refused (use ``stop`` strings). ``tokenizer_kwargs`` and
      ``tokenizer_outputs_to_remove`` are refused when not empty (only token ids reach the model).
    * ``system_prompt``, ``query_wrapper_prompt``, ``callback_manager``, ``output_parser``,
      ``pydantic_program_mode``: as in every LlamaIndex LLM.

    ``additional_kwargs`` of every response carry the finish reason, token usage (``cached_tokens``
    = document tokens reused) and the sources.

    Concurrent ``acomplete``/``achat`` calls (e.g. ``asyncio.gather``) with the same options are
    answered together, as one batch on the engine (``Engine.chat_many`` / ``complete_many``):
    those started in the same event-loop tick, or within ``batch_wait`` seconds of the first.
    Streaming calls are not batched.
    """

    engine: Optional[Engine] = Field(default=None, exclude=True, description="The engine (default: shared).")
    model: Any = Field(default=None, exclude=True,
                       description="A model name (like model_name) or a loaded Hugging Face model object.")
    model_name: Optional[str] = Field(default=None, description="Local model to load (None: the embedded default).")
    tokenizer: Any = Field(default=None, exclude=True, description="The tokenizer of a loaded model object.")
    tokenizer_name: Optional[str] = Field(default=None, description="Must be the model's own tokenizer.")
    method: Optional[str] = Field(default=None, description="Retrieval method; None keeps the engine's.")
    document: Union[str, Document, None] = Field(default=None, exclude=True, description="Document to answer about.")
    context_window: Optional[int] = Field(default=None, gt=0, description="Upper bound on the tokens read.")
    max_new_tokens: int = Field(default=256, ge=1, description="Most tokens generated per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Optional[list[str]] = Field(default=None, description="Cut the answer before any of these.")
    seed: Optional[int] = None
    generate_kwargs: dict = Field(default_factory=dict, description="Generation options (see the class doc).")
    model_kwargs: dict = Field(default_factory=dict, description="Load and retrieval options.")
    device_map: Union[str, dict, None] = Field(default=None, description="'auto', None or one device.")
    stopping_ids: list[int] = Field(default_factory=list, description="Must be end-of-turn ids.")
    tokenizer_kwargs: dict = Field(default_factory=dict, description="Refused when not empty.")
    tokenizer_outputs_to_remove: list = Field(default_factory=list, description="Refused when not empty.")
    is_chat_model: bool = Field(default=True, description="Format with the chat template (False: plain text).")
    batch_wait: float = Field(default=0.0, ge=0.0, description="Seconds concurrent async calls wait for "
                              "others to answer together (0: those started in the same event-loop tick).")

    _engine: Optional[Engine] = PrivateAttr(default=None)
    _doc: Optional[Document] = PrivateAttr(default=None)
    _doc_lock: Any = PrivateAttr(default_factory=threading.RLock)
    _gatherer: Optional[CallGatherer] = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _hf_arguments(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if "max_tokens" in values:  # this class's former name for max_new_tokens
            mt = values.pop("max_tokens")
            if values.get("max_new_tokens", mt) != mt:
                raise ValueError(f"max_tokens={mt} and max_new_tokens={values['max_new_tokens']} disagree")
            values["max_new_tokens"] = mt
        unknown = sorted(k for k in values if k not in cls.model_fields)
        if unknown:  # pydantic would drop them silently
            raise ValueError(f"ActQKVLLM has no argument(s) {unknown}; it takes {sorted(cls.model_fields)}")
        if isinstance(values.get("query_wrapper_prompt"), str):  # as HuggingFaceLLM accepts it
            values["query_wrapper_prompt"] = PromptTemplate(values["query_wrapper_prompt"])
        chat = values.get("is_chat_model", True)
        for name in ("messages_to_prompt", "completion_to_prompt"):
            if values.get(name) is not None and chat:
                raise ValueError(f"{name} formats prompts as plain text, but is_chat_model=True uses the model's "
                                 "chat template: pass is_chat_model=False to format prompts yourself")
        return values

    @model_validator(mode="after")
    def _check(self) -> "ActQKVLLM":
        if isinstance(self.document, str) and not self.document.strip():
            raise ValueError("document is empty: give the text of the document to answer about")
        if self.tokenizer_kwargs:
            raise ValueError(f"tokenizer_kwargs {sorted(self.tokenizer_kwargs)} are not supported: the engine "
                             "tokenizes with the model's own tokenizer settings")
        if self.tokenizer_outputs_to_remove:
            raise ValueError("tokenizer_outputs_to_remove is not needed: only token ids reach the model")
        loaded_object = self.model is not None and not isinstance(self.model, str)
        if isinstance(self.model, str) and self.model_name and self.model != self.model_name:
            raise ValueError(f"model={self.model!r} and model_name={self.model_name!r} disagree")
        if loaded_object and not isinstance(self.model, torch.nn.Module):
            raise ValueError("model must be a model name or a loaded Hugging Face model, "
                             f"got {type(self.model).__name__}")
        if loaded_object and self.tokenizer is None:
            raise ValueError("a loaded model object needs its tokenizer: pass tokenizer=")
        if self.tokenizer is not None and not loaded_object:
            raise ValueError("tokenizer= goes with a loaded model object (model=...); a model loaded by name "
                             "uses its own tokenizer")
        name = self._load_name()
        if self.tokenizer_name is not None and self.tokenizer_name != name:
            model = repr(name) if name else "the embedded default model"
            raise ValueError(f"tokenizer_name={self.tokenizer_name!r} differs from the model ({model}): the engine "
                             "loads the tokenizer stored with the weights; to use another, load the model and "
                             "tokenizer yourself and pass model= and tokenizer=")
        if isinstance(self.device_map, dict):
            raise ValueError("device_map: a multi-device map is not supported, the engine runs on one device "
                             "(give 'auto', None or a device such as 'cuda:0')")
        bad = sorted(set(self.model_kwargs) - LOAD_KEYS - RETRIEVAL_KEYS)
        if bad:
            raise ValueError(f"model_kwargs {bad} are not supported; load options are {sorted(LOAD_KEYS)} and "
                             f"retrieval options {sorted(RETRIEVAL_KEYS)}")
        given_engine = self.engine is not None or isinstance(self.document, Document)
        if given_engine and (self.model_kwargs or self.device_map not in (None, "auto") or self.model is not None
                             or self.model_name):
            raise ValueError("engine= (or a prefilled Document) is already loaded: model, model_name, model_kwargs "
                             "and device_map cannot apply to it")
        if loaded_object and (set(self.model_kwargs) & LOAD_KEYS or self.device_map not in (None, "auto")):
            raise ValueError("a loaded model object is already on its device and dtype: model_kwargs load options "
                             "and device_map cannot apply to it")
        self._sampling({})  # generate_kwargs checked now, not at the first call
        if self.engine is not None and self.stopping_ids:
            self._check_stopping_ids(self.engine)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "ActQKVLLM"

    # ------------------------------------------------------------------ engine + document
    def _load_name(self) -> Optional[str]:
        return self.model_name or (self.model if isinstance(self.model, str) else None)

    def get_engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        with self._doc_lock:
            if self._engine is None:
                self._engine = self._make_engine()
                self._check_stopping_ids(self._engine)
        return self._engine

    def _make_engine(self) -> Engine:
        if self.engine is not None:
            eng = self.engine
        elif isinstance(self.document, Document):
            eng = self.document.engine
        elif self.model is not None and not isinstance(self.model, str):
            if self.tokenizer is None:
                raise ValueError("a loaded model object needs its tokenizer: pass tokenizer=")
            return Engine(self.model, self.tokenizer, method=self.method or "actqkv", **self.model_kwargs)
        else:
            load = dict(self.model_kwargs)
            if "torch_dtype" in load:
                load["dtype"] = load.pop("torch_dtype")
            if self.device_map not in (None, "auto"):
                load["device"] = self.device_map
            name = self._load_name()
            if not load:
                eng = shared_engine(name, self.method)
            elif name is None:
                return Engine.default(method=self.method or "actqkv", **load)
            else:
                return Engine.from_pretrained(name, method=self.method or "actqkv", **load)
        if self.method is not None and self.method != eng.config.method:
            eng = eng.with_method(self.method)
        return eng

    def _check_stopping_ids(self, eng: Engine) -> None:
        extra = sorted(set(self.stopping_ids) - set(eng.eos_ids))
        if extra:
            raise ValueError(f"stopping_ids {extra} are not end-of-turn ids of {self.model_name_reported} "
                             f"({sorted(eng.eos_ids)}), where generation stops; stop on other text with stop=[...]")

    def get_document(self) -> Optional[Document]:
        if self.document is None:
            return None
        if isinstance(self.document, Document):
            doc = self.document
        else:
            with self._doc_lock:
                if self._doc is None:
                    self._doc = self.get_engine().prefill(self.document, chat=self.is_chat_model)
            doc = self._doc
        if self.context_window is not None and doc.n_tokens > self.context_window:
            raise ValueError(f"the document has {doc.n_tokens} tokens, more than context_window={self.context_window}")
        return doc

    @property
    def metadata(self) -> LLMMetadata:
        capacity = readable_tokens(self.get_engine())
        window = capacity
        if self.context_window is not None:
            if self.context_window > capacity:
                warnings.warn(f"context_window={self.context_window} is more than {self.model_name_reported} "
                              f"with method {self.get_engine().config.method!r} can read ({capacity}); "
                              f"reporting {capacity}", UserWarning, stacklevel=2)
            window = min(self.context_window, capacity)
        return LLMMetadata(context_window=window, num_output=self.max_new_tokens, is_chat_model=self.is_chat_model,
                           is_function_calling_model=False, model_name=self.model_name_reported)

    @property
    def model_name_reported(self) -> str:
        """The model's short name, from the constructor arguments (the same before and after loading)."""
        name = self._load_name()
        if name:
            return short_model_name(name)
        if self.engine is not None:
            return engine_name(self.engine)
        if isinstance(self.document, Document):
            return engine_name(self.document.engine)
        if self.model is not None:
            return str(getattr(self.model.config, "_name_or_path", "") or self.model.config.model_type)
        return DEFAULT_MODEL_NAME

    # ------------------------------------------------------------------ core
    def _sampling(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Sampling for one call: the fields, then generate_kwargs, then the call's keywords."""
        out = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
               "seed": self.seed, "stop": self.stop}
        for source, options in (("generate_kwargs", self.generate_kwargs),
                                ("keyword", {k: v for k, v in kwargs.items() if k != "generate_kwargs"}),
                                ("generate_kwargs", kwargs.get("generate_kwargs") or {})):
            bad = sorted(k for k in options if k not in SAMPLING_KEYS and k != "do_sample")
            if bad:
                raise ValueError(f"{source} {bad} not supported by the actqkv engine; it takes "
                                 f"{sorted(SAMPLING_KEYS)} and do_sample")
            for k, v in options.items():
                if k == "do_sample":
                    if not v:
                        out["temperature"] = 0.0
                    elif out["temperature"] == 0:
                        out["temperature"] = 1.0  # transformers' default when sampling
                else:
                    out[SAMPLING_KEYS[k]] = v
        stop = out["stop"]
        out["stop"] = [stop] if isinstance(stop, str) else (list(stop) if stop else None)
        return out

    def _turns_for_prompt(self, prompt: str, formatted: bool) -> list[dict[str, str]]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: give a question or instruction")
        if not formatted and self.query_wrapper_prompt is not None:
            prompt = self.query_wrapper_prompt.format(query_str=prompt)
        turns = [{"role": "user", "content": prompt}]
        if self.system_prompt and not formatted:
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def _raw_prompt(self, prompt: str, formatted: bool) -> str:
        if not isinstance(prompt, str) or not prompt.strip() and self.document is None:
            raise ValueError("the prompt is empty: give a question or instruction")
        if not formatted:
            if self.query_wrapper_prompt is not None:
                prompt = self.query_wrapper_prompt.format(query_str=prompt)
            if self.system_prompt:
                prompt = f"{self.system_prompt} {prompt}"
        return prompt

    def _prompt_input(self, prompt: str, formatted: bool) -> tuple[str, Any]:
        """What the engine is asked for a prompt: ``("chat", turns)`` or ``("complete", text)``."""
        if self.is_chat_model:
            return "chat", self._turns_for_prompt(prompt, formatted)
        return "complete", self._raw_prompt(prompt, formatted)

    def _messages_input(self, messages: Sequence[ChatMessage]) -> tuple[str, Any]:
        """What the engine is asked for a conversation (see :meth:`_prompt_input`)."""
        if self.is_chat_model:
            return "chat", to_engine_messages(messages)
        if not messages:
            raise ValueError("no messages: give at least one user message")
        return self._prompt_input(self.messages_to_prompt(messages), True)

    def _answer(self, kind: str, value: Any, sampling: dict[str, Any], stream: bool):
        eng, doc = self.get_engine(), self.get_document()
        if kind == "chat":
            return eng.chat(doc, value, stream=stream, **sampling)
        return eng.complete(doc, value, stream=stream, **sampling)

    def _answer_all(self, kind: str, sampling: tuple, values: list[Any]) -> list[Answer]:
        """Answers for several engine inputs of one kind, decoded together (one alone: as a
        synchronous call). ``sampling``: the options as ``(name, value)`` pairs (hashable)."""
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in sampling}
        if len(values) == 1:
            return [self._answer(kind, values[0], options, stream=False)]
        eng, doc = self.get_engine(), self.get_document()
        many = eng.chat_many if kind == "chat" else eng.complete_many
        return many(doc, values, **options)

    async def _answer_gathered(self, request: tuple[str, Any], kwargs: dict[str, Any]) -> Answer:
        """One async call's answer, decoded together with the concurrent calls of the same kind and options."""
        kind, value = request
        sampling = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self._sampling(kwargs).items()))
        if self._gatherer is None:
            with self._doc_lock:
                if self._gatherer is None:
                    self._gatherer = CallGatherer(self.batch_wait)
        return await self._gatherer.submit(self._answer_all, (kind, sampling), value)

    def _run_prompt(self, prompt: str, formatted: bool, kwargs: dict[str, Any], stream: bool):
        sampling = self._sampling(kwargs)
        return self._answer(*self._prompt_input(prompt, formatted), sampling, stream)

    def _run_messages(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any], stream: bool):
        sampling = self._sampling(kwargs)
        return self._answer(*self._messages_input(messages), sampling, stream)

    @staticmethod
    def _pieces(stream) -> Iterator[tuple[str, str, Optional[Answer]]]:
        text = ""
        for piece in stream:
            text += piece
            yield text, piece, None
        yield text, "", stream.answer

    @staticmethod
    def _completion_response(answer: Answer) -> CompletionResponse:
        info = answer_info(answer)
        return CompletionResponse(text=answer.text, raw=info, additional_kwargs=info)

    @staticmethod
    def _chat_response(answer: Answer) -> ChatResponse:
        info = answer_info(answer)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=answer.text),
                            raw=info, additional_kwargs=info)

    def _complete(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        return self._completion_response(self._run_prompt(prompt, formatted, kwargs, stream=False))

    def _stream_complete(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponseGen:
        stream = self._run_prompt(prompt, formatted, kwargs, stream=True)  # bad input fails here

        def gen() -> CompletionResponseGen:
            for text, piece, answer in self._pieces(stream):
                if answer is None:
                    yield CompletionResponse(text=text, delta=piece)
                else:
                    info = answer_info(answer)
                    yield CompletionResponse(text=text, delta="", raw=info, additional_kwargs=info)

        return gen()

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        return self._chat_response(self._run_messages(messages, kwargs, stream=False))

    def _stream_chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseGen:
        stream = self._run_messages(messages, kwargs, stream=True)  # bad input fails here

        def gen() -> ChatResponseGen:
            for text, piece, answer in self._pieces(stream):
                info = answer_info(answer) if answer is not None else {}
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece,
                                   raw=info or None, additional_kwargs=info)

        return gen()

    # ------------------------------------------------------------------ LlamaIndex API
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream_complete(prompt, formatted, kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, kwargs)

    # async: the blocking work runs in a thread, so the event loop stays free; concurrent calls
    # are answered together (CallGatherer), streams one by one
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion_response(await self._answer_gathered(self._prompt_input(prompt, formatted), kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat_response(await self._answer_gathered(self._messages_input(messages), kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return iterate_in_thread(lambda: self._stream_complete(prompt, formatted, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return iterate_in_thread(lambda: self._stream_chat(messages, kwargs))


__all__ = ["ActQKVLLM", "readable_tokens", "to_engine_messages", "answer_info"]
