"""ChatActQKV: a LangChain chat model that answers about one long document (or none).

    from langchain_actqkv import ChatActQKV
    llm = ChatActQKV(document_path="book.txt", max_tokens=64)   # prefilled once, on first use
    llm.invoke("Who is the narrator?").content
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator, Optional, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (AIMessage, AIMessageChunk, BaseMessage, ChatMessage, HumanMessage,
                                     SystemMessage)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from actqkv_llm import Answer, AnswerStream
from actqkv_llm.aio import iterate_in_thread, run_in_thread_async

from ._core import ActQKVParams, usage_metadata

_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user",
          "assistant": "assistant", "ai": "assistant"}
# Content blocks that carry no text for the model and are safe to drop (a model's own reasoning).
_SKIPPED_BLOCKS = {"thinking", "reasoning", "redacted_thinking"}


def _text_of(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in _SKIPPED_BLOCKS:
            continue
        else:
            raise ValueError(f"ChatActQKV reads text only; got a {kind or type(block).__name__!r} content block "
                             f"in a {message.type} message (images, audio, files and tool use are not supported)")
    return "".join(parts)


def to_engine_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> the engine's ``[{"role", "content"}]``. Tool messages are not supported."""
    if not messages:
        raise ValueError("no messages: give at least one user message (e.g. model.invoke('your question'))")
    out = []
    for m in messages:
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, AIMessage):
            if m.tool_calls or m.invalid_tool_calls:
                raise ValueError("ChatActQKV does not support tool calling (an AIMessage carries tool calls)")
            role = "assistant"
        elif isinstance(m, ChatMessage) and m.role.lower() in _ROLES:
            role = _ROLES[m.role.lower()]
        else:
            raise ValueError(f"ChatActQKV does not support {type(m).__name__} (role {getattr(m, 'role', m.type)!r}); "
                             "use system, human and AI messages (tool calling is not supported)")
        out.append({"role": role, "content": _text_of(m)})
    return out


class ChatActQKV(ActQKVParams, BaseChatModel):
    """Chat model over a local Hugging Face model that reads one long document once.

    The document (``document`` text, ``document_path`` or ``cache_key``) is prefilled lazily on the
    first call -- or reused from the engine's disk cache -- and every call then runs on its own
    session forked from that state: nothing is re-read per call, and calls from several threads are
    independent. Without a document it is a plain chat model on the same engine.

    The engine: ``engine=`` an :class:`actqkv_llm.Engine`; otherwise a process-wide engine on
    ``model`` (a local model directory, cached hub id or GGUF path), by default the embedded
    SmolLM2-135M-Instruct, loaded on first use and shared by every instance.

    Output: ``AIMessage.usage_metadata`` (``input_token_details.cache_read`` = document tokens served
    from the prefilled state) and ``response_metadata`` with ``finish_reason``, ``model_name`` and
    ``sources`` (the document spans retrieval attended to: token range, text, score).

    Not supported (and declared so): tool calling, structured output through tools, JSON mode,
    non-text inputs, per-call model switching.
    """

    streaming: bool = False
    """Make ``invoke`` stream under the hood (so callbacks get every token)."""

    @property
    def _llm_type(self) -> str:
        return "actqkv-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.reported_model_name(), "method": self.method, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "stop": self.stop,
                "document": self._document_label()}

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self._tracing_params("chat", stop, kwargs))

    # ------------------------------------------------------------------ core
    def _start(self, messages: list[BaseMessage], stop: Optional[list[str]], kwargs: dict[str, Any],
               stream: bool) -> Answer | AnswerStream:
        sampling = self._sampling(stop, kwargs)
        turns = to_engine_messages(messages)
        doc = self.get_document()
        return self.get_engine().chat(doc, turns, stream=stream, **sampling)

    def _final_message_fields(self, answer: Answer) -> dict[str, Any]:
        return {"usage_metadata": usage_metadata(answer), "response_metadata": self.response_metadata(answer)}

    def _result(self, answer: Answer) -> ChatResult:
        message = AIMessage(content=answer.text, **self._final_message_fields(answer))
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": answer.finish_reason})],
                          llm_output={"model_name": self.reported_model_name(),
                                      "token_usage": message.usage_metadata})

    def _chunks(self, messages: list[BaseMessage], stop: Optional[list[str]],
                kwargs: dict[str, Any]) -> Iterator[ChatGenerationChunk]:
        """One chunk per generated text piece, then a last (empty) chunk with usage and metadata."""
        stream = self._start(messages, stop, kwargs, stream=True)
        for piece in stream:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        answer = stream.answer
        assert answer is not None
        yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last",
                                                         **self._final_message_fields(answer)),
                                  generation_info={"finish_reason": answer.finish_reason})

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        return self._result(self._start(messages, stop, kwargs, stream=False))

    def _stream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            if run_manager is not None and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        return await run_in_thread_async(lambda: self._generate(messages, stop, None, **kwargs))

    async def _astream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                       run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(lambda: self._chunks(messages, stop, kwargs)):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


__all__ = ["ChatActQKV", "to_engine_messages"]
