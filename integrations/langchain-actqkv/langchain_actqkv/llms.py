"""ActQKVLLM: the text-in / text-out (``LLM``) variant of :class:`ChatActQKV`.

    from langchain_actqkv import ActQKVLLM
    llm = ActQKVLLM(document_path="book.txt", max_tokens=64)
    llm.invoke("Who is the narrator?")          # -> str
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator, Optional

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list

from actqkv_llm import Answer, AnswerStream, Document

from ._core import CALL_OPTIONS, DOCUMENT_ARGS, ActQKVParams, config_document_kwargs, usage_metadata

_FIELD_OF = {"text": "document", "document": "document", "path": "document_path", "cache_key": "cache_key"}


class ActQKVLLM(ActQKVParams, LLM):
    """String LLM over a local model that reads one long document once (or none).

    By default (``raw=False``) the prompt is one user turn of the model's chat template, asked about
    the document -- what instruct models expect. With ``raw=True`` the document is prefilled as plain
    text and the prompt continues it verbatim (``Engine.complete``), for base models and
    completion-style prompts.

    Same fields as :class:`ChatActQKV` (``engine``/``model``, ``document``/``document_path``/
    ``cache_key``, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``method``), and
    the same ways to name the document per call (``invoke(..., document=...)``, ``bind``,
    ``config={"configurable": {"document": ...}}``). ``generation_info`` of each generation holds
    the finish reason, usage and sources. The LangChain cache keys an answer by the document's
    content hash and every per-call option.
    """

    raw: bool = False
    """Plain text completion after the document instead of a chat turn."""
    streaming: bool = False
    """Generate through ``_stream`` even in ``invoke`` (callbacks then get every token)."""

    @property
    def _llm_type(self) -> str:
        return "actqkv"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.reported_model_name(), "method": self.method, "raw": self.raw,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "stop": self.stop, "document": self._document_label()}

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self._tracing_params("llm", stop, kwargs))

    def _chat_layout(self) -> bool:
        return not self.raw

    # ------------------------------------------------------------------ per-call documents
    def _for_call(self, options: dict[str, Any]) -> "ActQKVLLM":
        """This model with a call's document and options as its fields (sharing the engine and the
        prefilled documents), so LangChain's cache -- which keys on the fields -- sees them."""
        update = {k: v for k, v in options.items() if k in CALL_OPTIONS}
        if any(options.get(k) is not None for k in DOCUMENT_ARGS):
            spec = self.document_spec(options)  # checks it (one document, not empty, file exists)
            update.update({k: None for k in DOCUMENT_ARGS})
            update[_FIELD_OF[spec.kind]] = spec.value
        return self.model_copy(update=update)

    @staticmethod
    def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        per_call = {k: kwargs[k] for k in (*DOCUMENT_ARGS, *CALL_OPTIONS) if k in kwargs}
        return per_call, {k: v for k, v in kwargs.items() if k not in per_call}

    def generate(self, prompts: list[str], stop: Optional[list[str]] = None, callbacks: Any = None,
                 **kwargs: Any) -> LLMResult:
        per_call, rest = self._split(kwargs)
        if per_call:
            return self._for_call(per_call).generate(prompts, stop, callbacks, **rest)
        return super().generate(prompts, stop, callbacks, **rest)

    async def agenerate(self, prompts: list[str], stop: Optional[list[str]] = None, callbacks: Any = None,
                        **kwargs: Any) -> LLMResult:
        per_call, rest = self._split(kwargs)
        if per_call:
            return await self._for_call(per_call).agenerate(prompts, stop, callbacks, **rest)
        return await super().agenerate(prompts, stop, callbacks, **rest)

    def invoke(self, input: Any, config: Optional[RunnableConfig] = None, *, stop: Optional[list[str]] = None,
               **kwargs: Any) -> str:
        return super().invoke(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    async def ainvoke(self, input: Any, config: Optional[RunnableConfig] = None, *,
                      stop: Optional[list[str]] = None, **kwargs: Any) -> str:
        return await super().ainvoke(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    def stream(self, input: Any, config: Optional[RunnableConfig] = None, *, stop: Optional[list[str]] = None,
               **kwargs: Any) -> Iterator[str]:
        return super().stream(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    def astream(self, input: Any, config: Optional[RunnableConfig] = None, *, stop: Optional[list[str]] = None,
                **kwargs: Any) -> AsyncIterator[str]:
        return super().astream(input, config, stop=stop, **config_document_kwargs(config, kwargs))

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[str]:
        if any(config_document_kwargs(c, {}) for c in get_config_list(config, len(inputs))):
            # documents differ per input: one invoke each (LLM.batch would send them all as one call)
            return Runnable.batch(self, inputs, config, return_exceptions=return_exceptions, **kwargs)
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[str]:
        if any(config_document_kwargs(c, {}) for c in get_config_list(config, len(inputs))):
            return await Runnable.abatch(self, inputs, config, return_exceptions=return_exceptions, **kwargs)
        return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    # ------------------------------------------------------------------ core
    def _check_prompt(self, prompt: str, doc: Optional[Document]) -> None:
        """After the document is known: a prompt with nothing to answer or continue is refused."""
        if self.raw and doc is None and not prompt.strip():
            raise ValueError("nothing to complete: no document and an empty prompt")
        if not self.raw and not prompt.strip():
            raise ValueError("the prompt is empty: give a question or instruction")

    def _start(self, prompt: str, stop: Optional[list[str]], kwargs: dict[str, Any],
               stream: bool) -> tuple[Answer | AnswerStream, Optional[Document]]:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        sampling = self._sampling(stop, kwargs)
        doc = self._open(self.document_spec(kwargs))
        eng = self._engine_for(doc)
        self._check_prompt(prompt, doc)
        if self.raw:
            return eng.complete(doc, prompt, stream=stream, **sampling), doc
        return eng.chat(doc, [{"role": "user", "content": prompt}], stream=stream, **sampling), doc

    def _start_together(self, prompts: list[str], stop: Optional[list[str]],
                        kwargs: dict[str, Any]) -> tuple[list[Answer], Optional[Document]]:
        """Several prompts on one document, their answers decoded as one batch
        (``Engine.answer_many`` / ``complete_many``): what ``batch`` and ``generate`` with several
        prompts run."""
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        sampling = self._sampling(stop, kwargs)
        doc = self._open(self.document_spec(kwargs))
        eng = self._engine_for(doc)
        for prompt in prompts:
            self._check_prompt(prompt, doc)
        many = eng.complete_many if self.raw else eng.answer_many
        return many(doc, prompts, **sampling), doc

    def _info(self, answer: Answer, doc: Optional[Document]) -> dict[str, Any]:
        return {"finish_reason": answer.finish_reason, "usage": usage_metadata(answer),
                **{k: v for k, v in self.response_metadata(answer, doc).items() if k != "finish_reason"}}

    def _call(self, prompt: str, stop: Optional[list[str]] = None,
              run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> str:
        return self._start(prompt, stop, kwargs, stream=False)[0].text

    def _generate(self, prompts: list[str], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> LLMResult:
        # like LLM._generate, but keeps each answer's finish reason, usage and sources; several
        # prompts (batch) are answered together, as one batch on the engine
        if len(prompts) > 1 and not self.streaming:
            answers, doc = self._start_together(prompts, stop, kwargs)
            return LLMResult(generations=[[Generation(text=a.text, generation_info=self._info(a, doc))]
                                          for a in answers],
                             llm_output={"model_name": self.reported_model_name()})
        generations = []
        for prompt in prompts:
            if self.streaming:
                text, info = "", {}
                for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                    text += chunk.text
                    info = chunk.generation_info or info
            else:
                answer, doc = self._start(prompt, stop, kwargs, stream=False)
                text, info = answer.text, self._info(answer, doc)
            generations.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=generations, llm_output={"model_name": self.reported_model_name()})

    def _stream(self, prompt: str, stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        stream, doc = self._start(prompt, stop, kwargs, stream=True)
        for piece in stream:
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.answer is not None
        yield GenerationChunk(text="", generation_info=self._info(stream.answer, doc))


__all__ = ["ActQKVLLM"]
