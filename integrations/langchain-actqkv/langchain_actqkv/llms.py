"""ActQKVLLM: the text-in / text-out (``LLM``) variant of :class:`ChatActQKV`.

    from langchain_actqkv import ActQKVLLM
    llm = ActQKVLLM(document_path="book.txt", max_tokens=64)
    llm.invoke("Who is the narrator?")          # -> str
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from actqkv_llm import Answer, AnswerStream

from ._core import ActQKVParams, usage_metadata


class ActQKVLLM(ActQKVParams, LLM):
    """String LLM over a local model that reads one long document once (or none).

    By default (``raw=False``) the prompt is one user turn of the model's chat template, asked about
    the document -- what instruct models expect. With ``raw=True`` the document is prefilled as plain
    text and the prompt continues it verbatim (``Engine.complete``), for base models and
    completion-style prompts.

    Same fields as :class:`ChatActQKV` (``engine``/``model``, ``document``/``document_path``/
    ``cache_key``, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``method``).
    ``generation_info`` of each generation holds the finish reason, usage and sources.
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

    def _start(self, prompt: str, stop: Optional[list[str]], kwargs: dict[str, Any],
               stream: bool) -> Answer | AnswerStream:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        sampling = self._sampling(stop, kwargs)
        doc = self.get_document()
        eng = self.get_engine()
        if self.raw:
            if doc is None and not prompt.strip():
                raise ValueError("nothing to complete: no document and an empty prompt")
            return eng.complete(doc, prompt, stream=stream, **sampling)
        if not prompt.strip():
            raise ValueError("the prompt is empty: give a question or instruction")
        return eng.chat(doc, [{"role": "user", "content": prompt}], stream=stream, **sampling)

    def _info(self, answer: Answer) -> dict[str, Any]:
        return {"finish_reason": answer.finish_reason, "usage": usage_metadata(answer),
                **{k: v for k, v in self.response_metadata(answer).items() if k != "finish_reason"}}

    def _call(self, prompt: str, stop: Optional[list[str]] = None,
              run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> str:
        return self._start(prompt, stop, kwargs, stream=False).text

    def _generate(self, prompts: list[str], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> LLMResult:
        # like LLM._generate, but keeps each answer's finish reason, usage and sources
        generations = []
        for prompt in prompts:
            if self.streaming:
                text, info = "", {}
                for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                    text += chunk.text
                    info = chunk.generation_info or info
            else:
                answer = self._start(prompt, stop, kwargs, stream=False)
                text, info = answer.text, self._info(answer)
            generations.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=generations, llm_output={"model_name": self.reported_model_name()})

    def _stream(self, prompt: str, stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        stream = self._start(prompt, stop, kwargs, stream=True)
        for piece in stream:
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        assert stream.answer is not None
        yield GenerationChunk(text="", generation_info=self._info(stream.answer))


__all__ = ["ActQKVLLM"]
