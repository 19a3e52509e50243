"""ActQKVLLM: a LlamaIndex LLM on a local model, optionally bound to one long document.

    from llama_index_actqkv import ActQKVLLM
    llm = ActQKVLLM(document=open("book.txt").read(), max_tokens=64)
    print(llm.complete("Who is the narrator?"))
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Optional, Sequence, Union

from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, ChatResponseGen,
                                              CompletionResponse, CompletionResponseAsyncGen,
                                              CompletionResponseGen, LLMMetadata, MessageRole, TextBlock)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from actqkv_llm import Answer, Document, Engine
from actqkv_llm.aio import iterate_in_thread, run_in_thread_async

from ._engine import DEFAULT_MODEL_NAME, engine_name, shared_engine

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


class ActQKVLLM(CustomLLM):
    """LlamaIndex LLM over an :class:`actqkv_llm.Engine` (default: the embedded SmolLM2-135M-Instruct).

    With ``document`` (text, or a prefilled :class:`actqkv_llm.Document`), every call answers about
    that document: it is prefilled once (lazily, thread-safe; reused from the engine's disk cache)
    and each call forks its own session from it. Without, a plain local chat model.

    ``metadata.context_window`` is what the engine can really read (``engine.max_context``: block
    memory makes it far longer than the model's trained window). ``complete`` sends the prompt as
    one user turn (the model is a chat model); ``additional_kwargs`` of every response carry the
    finish reason, token usage (``cached_tokens`` = document tokens reused) and the sources.
    """

    engine: Optional[Engine] = Field(default=None, exclude=True, description="The engine (default: shared).")
    model: Optional[str] = Field(default=None, description="Local model to load when no engine is given "
                                                           "(None: the embedded default).")
    method: Optional[str] = Field(default=None, description="Retrieval method; None keeps the engine's.")
    document: Union[str, Document, None] = Field(default=None, exclude=True, description="Document to answer about.")
    max_tokens: int = Field(default=256, ge=1, description="Most tokens generated per call.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Optional[list[str]] = Field(default=None, description="Cut the answer before any of these.")
    seed: Optional[int] = None

    _engine: Optional[Engine] = PrivateAttr(default=None)
    _doc: Optional[Document] = PrivateAttr(default=None)
    _doc_lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(self.document, str) and not self.document.strip():
            raise ValueError("document is empty: give the text of the document to answer about")

    @classmethod
    def class_name(cls) -> str:
        return "ActQKVLLM"

    # ------------------------------------------------------------------ engine + document
    def get_engine(self) -> Engine:
        if self._engine is None:
            if self.engine is not None:
                eng = self.engine
            elif isinstance(self.document, Document):
                eng = self.document.engine
            else:
                eng = shared_engine(self.model, self.method)
            if self.method is not None and self.method != eng.config.method:
                eng = eng.with_method(self.method)
            self._engine = eng
        return self._engine

    def get_document(self) -> Optional[Document]:
        if self.document is None:
            return None
        if isinstance(self.document, Document):
            return self.document
        if self._doc is None:
            with self._doc_lock:
                if self._doc is None:
                    self._doc = self.get_engine().prefill(self.document)
        return self._doc

    @property
    def metadata(self) -> LLMMetadata:
        eng = self.get_engine()
        return LLMMetadata(context_window=eng.max_context, num_output=self.max_tokens, is_chat_model=True,
                           is_function_calling_model=False, model_name=self.model_name)

    @property
    def model_name(self) -> str:
        if self._engine is not None or self.engine is not None:
            return engine_name(self._engine or self.engine)
        return self.model or DEFAULT_MODEL_NAME

    # ------------------------------------------------------------------ core
    def _sampling(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # per-call overrides; other keywords LlamaIndex passes down (e.g. from predict) do not concern us
        stop = kwargs.get("stop", self.stop)
        return {"max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
                "temperature": kwargs.get("temperature", self.temperature),
                "top_p": kwargs.get("top_p", self.top_p), "seed": kwargs.get("seed", self.seed),
                "stop": list(stop) if stop else None}

    def _turns_for_prompt(self, prompt: str) -> list[dict[str, str]]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: give a question or instruction")
        turns = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def _run(self, turns: list[dict[str, str]], kwargs: dict[str, Any], stream: bool):
        sampling = self._sampling(kwargs)
        return self.get_engine().chat(self.get_document(), turns, stream=stream, **sampling)

    @staticmethod
    def _pieces(stream) -> Iterator[tuple[str, str, Optional[Answer]]]:
        text = ""
        for piece in stream:
            text += piece
            yield text, piece, None
        yield text, "", stream.answer

    def _complete(self, prompt: str, kwargs: dict[str, Any]) -> CompletionResponse:
        answer = self._run(self._turns_for_prompt(prompt), kwargs, stream=False)
        info = answer_info(answer)
        return CompletionResponse(text=answer.text, raw=info, additional_kwargs=info)

    def _stream_complete(self, prompt: str, kwargs: dict[str, Any]) -> CompletionResponseGen:
        stream = self._run(self._turns_for_prompt(prompt), kwargs, stream=True)  # bad input fails here

        def gen() -> CompletionResponseGen:
            for text, piece, answer in self._pieces(stream):
                if answer is None:
                    yield CompletionResponse(text=text, delta=piece)
                else:
                    info = answer_info(answer)
                    yield CompletionResponse(text=text, delta="", raw=info, additional_kwargs=info)

        return gen()

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        answer = self._run(to_engine_messages(messages), kwargs, stream=False)
        info = answer_info(answer)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=answer.text),
                            raw=info, additional_kwargs=info)

    def _stream_chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseGen:
        stream = self._run(to_engine_messages(messages), kwargs, stream=True)  # bad input fails here

        def gen() -> ChatResponseGen:
            for text, piece, answer in self._pieces(stream):
                info = answer_info(answer) if answer is not None else {}
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece,
                                   raw=info or None, additional_kwargs=info)

        return gen()

    # ------------------------------------------------------------------ LlamaIndex API
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream_complete(prompt, kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, kwargs)

    # async: the blocking work runs in a thread, so the event loop stays free
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await run_in_thread_async(lambda: self._complete(prompt, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await run_in_thread_async(lambda: self._chat(messages, kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return iterate_in_thread(lambda: self._stream_complete(prompt, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return iterate_in_thread(lambda: self._stream_chat(messages, kwargs))
