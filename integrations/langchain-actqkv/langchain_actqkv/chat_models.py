"""ChatActQKV: a LangChain chat model that answers about one long document (or none).

    from langchain_actqkv import ChatActQKV
    llm = ChatActQKV(document_path="book.txt", max_tokens=64)   # prefilled once, on first use
    llm.invoke("Who is the narrator?").content
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from contextvars import ContextVar
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional, Sequence, TypeVar, Union

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput, LangSmithParams
from langchain_core.messages import (AIMessage, AIMessageChunk, BaseMessage, ChatMessage, HumanMessage,
                                     SystemMessage, ToolMessage)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import get_config_list
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import Field

from actqkv_llm import Answer, AnswerStream, Document, Engine
from actqkv_llm.aio import iterate_in_thread, run_in_thread_async
from actqkv_llm.chat import supports_tools

from ._core import STRUCTURE_ARGS, ActQKVParams, config_document_kwargs, usage_metadata
from ._grammar import GrammarConstraint, json_schema_grammar, ll_tokenizer, tool_call_grammar
from ._structured import (StructuredOutputParser, is_pydantic_class, response_format_schema, schema_instruction,
                          schema_of)
from ._tools import format_tools, normalise_tool_choice, parse_tool_calls, template_tool_calls

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
        elif kind in _SKIPPED_BLOCKS or kind in ("tool_call", "tool_use") and message.type == "ai":
            continue
        else:
            raise ValueError(f"ChatActQKV reads text only; got a {kind or type(block).__name__!r} content block "
                             f"in a {message.type} message (images, audio and files are not supported)")
    return "".join(parts)


def to_engine_messages(messages: Sequence[BaseMessage], tools: bool = False) -> list[dict[str, Any]]:
    """LangChain messages -> the engine's ``[{"role", "content"}]``. With ``tools`` (tools are bound),
    tool messages and the tool calls of AI messages go to the chat template too."""
    if not messages:
        raise ValueError("no messages: give at least one user message (e.g. model.invoke('your question'))")
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m)})
        elif isinstance(m, AIMessage):
            turn: dict[str, Any] = {"role": "assistant", "content": _text_of(m)}
            if m.tool_calls or m.invalid_tool_calls:
                if not tools:
                    raise ValueError("an AIMessage carries tool calls but no tools are bound: use bind_tools")
                turn["tool_calls"] = template_tool_calls(m.tool_calls)
            out.append(turn)
        elif isinstance(m, ToolMessage):
            if not tools:
                raise ValueError("ChatActQKV reads a ToolMessage only with tools bound (bind_tools)")
            out.append({"role": "tool", "content": _text_of(m), "tool_call_id": m.tool_call_id,
                        **({"name": m.name} if m.name else {})})
        elif isinstance(m, ChatMessage) and m.role.lower() in _ROLES:
            out.append({"role": _ROLES[m.role.lower()], "content": _text_of(m)})
        else:
            raise ValueError(f"ChatActQKV does not support {type(m).__name__} (role {getattr(m, 'role', m.type)!r}); "
                             "use system, human, AI and (with tools bound) tool messages")
    return out


class _Call:
    """What one call set up besides the engine's run: its document, grammar and tool parsing."""

    def __init__(self, doc: Optional[Document], constraint: Optional[GrammarConstraint], tools: bool):
        self.doc, self.constraint, self.tools = doc, constraint, tools


def _turns_key(turns: list[dict[str, Any]]) -> str:
    return json.dumps(turns, ensure_ascii=False, sort_keys=True)


@dataclass
class _Prepared:
    """Answers decoded together for a ``batch``/``generate``, handed out by ``_generate``: each
    once, to a call of the same model with the same options and the same conversation."""

    model: Any
    stop: Optional[list[str]]
    kwargs: dict[str, Any]
    results: dict[str, deque]

    def take(self, model: Any, messages: list[BaseMessage], stop: Optional[list[str]],
             kwargs: dict[str, Any]) -> Optional[ChatResult]:
        if model is not self.model or (stop, kwargs) != (self.stop, self.kwargs):
            return None
        queue = self.results.get(_turns_key(to_engine_messages(messages)))
        try:
            return queue.popleft() if queue else None
        except IndexError:  # taken by another thread of the same batch meanwhile
            return None


# The answers of the batch being run in this context (LangChain's batch runs its invokes in threads
# that copy the context).
_PREPARED: ContextVar[Optional[_Prepared]] = ContextVar("actqkv_prepared", default=None)
_T = TypeVar("_T")


def _with_prepared(prepared: Optional[_Prepared], call: Callable[[], _T]) -> _T:
    if prepared is None:
        return call()
    token = _PREPARED.set(prepared)
    try:
        return call()
    finally:
        _PREPARED.reset(token)


class ChatActQKV(ActQKVParams, BaseChatModel):
    """Chat model over a local Hugging Face model that reads long documents once.

    The document -- bound as a field (``document`` text / ``pathlib.Path`` / prefilled
    :class:`actqkv_llm.Document`, ``document_path``, ``cache_key``) or named per call
    (``invoke(..., document=...)``, ``bind(document=...)``, ``config={"configurable": {"document":
    ...}}``) -- is prefilled once per content, or reused from the engine's disk cache, and every
    call then runs on its own session forked from that state: nothing is re-read per call, calls
    from several threads are independent, and one model object (one loaded engine) serves any
    number of documents. Without a document it is a plain chat model on the same engine.

    The engine: ``engine=`` an :class:`actqkv_llm.Engine`; otherwise a process-wide engine on
    ``model`` (a local model directory, cached hub id or GGUF path), by default the embedded
    Qwen2.5-Coder-0.5B-Instruct, loaded on first use and shared by every instance.

    Output: ``AIMessage.usage_metadata`` (``input_token_details.cache_read`` = document tokens served
    from the prefilled state) and ``response_metadata`` with ``finish_reason``, ``model_name`` and
    ``sources`` (the document spans retrieval attended to: token range, text, score).

    ``with_structured_output`` decodes under the schema's grammar (llguidance), so the output is
    always valid JSON for it. ``bind_tools`` renders the tools with the model's chat template (when
    the template supports tools) and parses ``<tool_call>`` blocks; ``tool_choice`` "any" or a
    tool name constrains the output to such a call.

    ``batch`` and ``generate`` with several conversations about one document answer them together,
    as one batch on the engine (``Engine.chat_many``), when the calls are plain: no tools, no
    structured output, not streaming, no LLM cache. Otherwise they run one by one.
    """

    streaming: bool = False
    """Make ``invoke`` stream under the hood (so callbacks get every token)."""
    max_string_length: Optional[int] = Field(default=None, ge=1)
    """Structured output: the most characters of a string the schema leaves unbounded (None: no
    cap). A small model can loop inside a string until ``max_tokens`` cuts the answer; with a cap
    the string ends and the answer completes, still valid for the schema."""

    @property
    def _llm_type(self) -> str:
        return "actqkv-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.reported_model_name(), "method": self.method, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "stop": self.stop,
                "max_string_length": self.max_string_length, "document": self._document_label()}

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self._tracing_params("chat", stop, kwargs))

    def _get_llm_string(self, stop: Optional[list[str]] = None, **kwargs: Any) -> str:
        return self._cache_string(stop, kwargs)

    def _known_call_args(self) -> tuple[str, ...]:
        return super()._known_call_args() + STRUCTURE_ARGS

    # ------------------------------------------------------------------ the document in the config
    def invoke(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *,
               stop: Optional[list[str]] = None, **kwargs: Any) -> AIMessage:
        return super().invoke(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    async def ainvoke(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *,
                      stop: Optional[list[str]] = None, **kwargs: Any) -> AIMessage:
        return await super().ainvoke(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    def stream(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *,
               stop: Optional[list[str]] = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    def astream(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *,
                stop: Optional[list[str]] = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    # ------------------------------------------------------------------ tokens
    def get_num_tokens_from_messages(self, messages: list[BaseMessage],
                                     tools: Optional[Sequence[Any]] = None) -> int:
        """Tokens of ``messages`` as the model reads them: rendered by its chat template (with the
        assistant turn's opening, and ``tools`` if given) and counted by its own tokenizer. The
        document, if any, is not included (``get_document().n_tokens``)."""
        tok = self._tokenizer()
        formatted = format_tools(tools) if tools else None
        turns = to_engine_messages(messages, tools=bool(formatted))
        extra = {"tools": formatted} if formatted else {}
        text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, **extra)
        return len(self.get_token_ids(text))

    # ------------------------------------------------------------------ tools and structured output
    def _ll_tokenizer(self, eng: Engine) -> Any:
        key = ("ll_tokenizer", id(eng.tokenizer))
        with self._doc_lock:
            if key not in self._helpers:
                self._helpers[key] = ll_tokenizer(eng)
            return self._helpers[key]

    def _no_tools_error(self, eng: Engine) -> ValueError:
        return ValueError(f"the chat template of {self.reported_model_name()} ({eng.model_id}) does not support "
                          "tools (it never reads a 'tools' variable), so ChatActQKV cannot offer it tools; use "
                          "a model whose template does (e.g. Qwen2.5-Instruct), or with_structured_output")

    def bind_tools(self, tools: Sequence[Union[dict[str, Any], type, Callable, Any]], *,
                   tool_choice: Optional[Union[str, dict, bool]] = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model through its chat template; calls come back as ``tool_calls``.

        Raises ``ValueError`` (naming the model) when its chat template has no support for tools.
        ``tool_choice``: "auto" (default), "none", "any"/"required" (must call a tool) or a tool's name;
        the last two constrain the output to a well-formed call with valid arguments.
        """
        eng = self.get_engine()
        if not supports_tools(eng.tokenizer):
            raise self._no_tools_error(eng)
        formatted = format_tools(tools)
        choice = normalise_tool_choice(tool_choice, formatted)
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(self, schema: Optional[Union[dict, type]] = None, *,
                               method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
                               include_raw: bool = False, strict: Optional[bool] = None,
                               **kwargs: Any) -> Runnable[LanguageModelInput, Union[dict, Any]]:
        """Answers as JSON valid for ``schema`` (a pydantic class, TypedDict, JSON schema or tool
        dict), parsed into that class or a dict.

        Every method decodes under the schema's grammar (llguidance), so the text generated is always
        valid for it (``json_mode`` without a schema: any JSON object); ``strict`` changes nothing.
        An answer that ``max_tokens`` cuts short raises ``OutputParserException`` (or, with
        ``include_raw=True``, is returned as ``parsing_error``).
        """
        if kwargs:
            raise ValueError(f"unsupported argument(s) {sorted(kwargs)}")
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ValueError(f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}")
        if schema is None and method != "json_mode":
            raise ValueError(f"with_structured_output(method={method!r}) needs a schema")
        json_schema = schema_of(schema) if schema is not None else {"type": "object"}
        name = json_schema.get("title", "output") if isinstance(json_schema, dict) else "output"
        llm = self.bind(
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}},
            ls_structured_output_format={"kwargs": {"method": method, "strict": strict},
                                         "schema": _tracing_schema(schema, json_schema)})
        parser = StructuredOutputParser(pydantic_object=schema if is_pydantic_class(schema) else None)
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")

    # ------------------------------------------------------------------ several calls together
    def batch(self, inputs: list[LanguageModelInput], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[AIMessage]:
        """LangChain's ``batch`` (one ``invoke`` per input, each with its own config and callbacks),
        but plain inputs about one document are first answered together (``Engine.chat_many``);
        each ``invoke`` then takes its answer instead of decoding it again."""
        prepared = None
        if len(inputs) > 1:
            calls = [config_document_kwargs(c, kwargs) for c in get_config_list(config, len(inputs))]
            if all(call == calls[0] for call in calls):  # one document for all
                call = dict(calls[0])
                stop = call.pop("stop", None)
                prepared = self._prepare_together(inputs, stop, call)
        return _with_prepared(prepared, lambda: super(ChatActQKV, self).batch(
            inputs, config, return_exceptions=return_exceptions, **kwargs))

    def generate(self, messages: list[list[BaseMessage]], stop: Optional[list[str]] = None, callbacks: Any = None,
                 *, tags: Optional[list[str]] = None, metadata: Optional[dict[str, Any]] = None,
                 run_name: Optional[str] = None, run_id: Any = None, **kwargs: Any) -> LLMResult:
        """LangChain's ``generate``; several plain conversations are answered together, as one
        batch on the engine (``Engine.chat_many``)."""
        prepared = self._prepare_together(messages, stop, kwargs) if len(messages) > 1 else None
        return _with_prepared(prepared, lambda: super(ChatActQKV, self).generate(
            messages, stop, callbacks, tags=tags, metadata=metadata, run_name=run_name, run_id=run_id, **kwargs))

    def _plain(self, kwargs: dict[str, Any]) -> bool:
        """Calls with these options can be decoded together: no tools or structured output (a
        grammar steers each answer), not streaming, and no LLM cache (its hits would be decoded
        for nothing)."""
        cached = self.cache is True or isinstance(self.cache, BaseCache) or \
            (self.cache is None and get_llm_cache() is not None)
        return not (self.streaming or kwargs.get("stream") or kwargs.get("tools") or cached
                    or kwargs.get("response_format") is not None or kwargs.get("ls_structured_output_format"))

    def _prepare_together(self, inputs: list[Any], stop: Optional[list[str]],
                          kwargs: dict[str, Any]) -> Optional[_Prepared]:
        """Answers for several plain calls with the same options, decoded as one batch
        (``Engine.chat_many``), for ``_generate`` to hand out. None when they are not plain or are
        refused: then each runs alone and raises its own error (the engine checks every input
        before it decodes anything, so nothing is decoded twice)."""
        if not self._plain(kwargs):
            return None
        try:
            sampling = self._sampling(stop, kwargs)
            conversations = [to_engine_messages(self._convert_input(i).to_messages()) for i in inputs]
            doc = self._open(self.document_spec(kwargs))
            answers = self._engine_for(doc).chat_many(doc, conversations, **sampling)
        except ValueError:
            return None
        call = _Call(doc, None, tools=False)
        results: dict[str, deque] = defaultdict(deque)
        for turns, answer in zip(conversations, answers):
            results[_turns_key(turns)].append(self._result(answer, call))
        return _Prepared(self, stop, dict(kwargs), results)

    # ------------------------------------------------------------------ core
    def _start(self, messages: list[BaseMessage], stop: Optional[list[str]], kwargs: dict[str, Any],
               stream: bool) -> tuple[Union[Answer, AnswerStream], _Call]:
        sampling = self._sampling(stop, kwargs)
        tools = kwargs.get("tools") or None
        choice = normalise_tool_choice(kwargs.get("tool_choice"), tools) if tools else None
        response_format = kwargs.get("response_format")
        turns = to_engine_messages(messages, tools=bool(tools))
        doc = self._open(self.document_spec(kwargs), tools)
        eng = self._engine_for(doc)
        if tools and not supports_tools(eng.tokenizer):
            raise self._no_tools_error(eng)
        grammar = None
        if response_format is not None:
            if tools and choice != "none":
                raise ValueError("a call can have tools or a response_format (structured output), not both")
            schema = response_format_schema(response_format)
            grammar = json_schema_grammar(schema, self.max_string_length)
            # the grammar guarantees the form; telling the model the schema lets it fill it sensibly
            turns = [{"role": "system", "content": schema_instruction(schema)}] + turns
        elif tools and choice not in ("auto", "none"):
            grammar = tool_call_grammar(tools, None if choice == "any" else [choice])
        constraint = GrammarConstraint(self._ll_tokenizer(eng), grammar) if grammar is not None else None
        run = eng.chat(doc, turns, stream=stream, tools=tools, logits_processor=constraint, **sampling)
        return run, _Call(doc, constraint, tools=bool(tools) and choice != "none")

    def _message_fields(self, answer: Answer, call: _Call) -> dict[str, Any]:
        meta = self.response_metadata(answer, call.doc)
        if call.constraint is not None:
            meta["structured_output_complete"] = call.constraint.complete
        return {"usage_metadata": usage_metadata(answer), "response_metadata": meta}

    def _result(self, answer: Answer, call: _Call) -> ChatResult:
        fields = self._message_fields(answer, call)
        if call.tools:
            content, calls, invalid = parse_tool_calls(answer.text)
            message = AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid, **fields)
        else:
            message = AIMessage(content=answer.text, **fields)
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": answer.finish_reason})],
                          llm_output={"model_name": self.reported_model_name(),
                                      "token_usage": message.usage_metadata})

    def _chunks(self, messages: list[BaseMessage], stop: Optional[list[str]],
                kwargs: dict[str, Any]) -> Iterator[ChatGenerationChunk]:
        """One chunk per generated text piece, then a last (empty) chunk with usage and metadata.
        With tools, the answer comes as one chunk (its tool calls are parsed when it is complete)."""
        stream, call = self._start(messages, stop, kwargs, stream=True)
        if call.tools:
            stream.text()
            message = self._result(stream.answer, call).generations[0].message
            yield ChatGenerationChunk(message=AIMessageChunk(
                content=message.content,
                tool_call_chunks=[{"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i,
                                   "type": "tool_call_chunk"} for i, c in enumerate(message.tool_calls)]))
        else:
            for piece in stream:
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        answer = stream.answer
        assert answer is not None
        yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last",
                                                         **self._message_fields(answer, call)),
                                  generation_info={"finish_reason": answer.finish_reason})

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        prepared = _PREPARED.get()
        if prepared is not None and (result := prepared.take(self, messages, stop, kwargs)) is not None:
            return result  # answered together by batch()/generate()
        return self._result(*self._start(messages, stop, kwargs, stream=False))

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


def _tracing_schema(schema: Any, json_schema: dict) -> dict:
    """The schema LangChain's tracing expects (its own conversion; a JSON schema without a title
    has none, so it is reported as given)."""
    if schema is None:
        return json_schema
    try:
        return convert_to_json_schema(schema)
    except ValueError:
        return json_schema


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


__all__ = ["ChatActQKV", "to_engine_messages"]
