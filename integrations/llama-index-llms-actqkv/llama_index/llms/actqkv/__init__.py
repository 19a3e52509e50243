"""LlamaIndex integration of actqkv_llm: an LLM and a query engine over long documents read once.

    from llama_index.llms.actqkv import ActQKVLLM, ActQKVQueryEngine, ActQKVRetriever
"""

from ._engine import DEFAULT_MODEL_NAME, shared_engine
from .base import ActQKVLLM, readable_tokens
from .query_engine import ActQKVQueryEngine, ActQKVRetriever, LexicalSelector, PrefilledDocument

__all__ = ["ActQKVLLM", "ActQKVQueryEngine", "ActQKVRetriever", "PrefilledDocument", "LexicalSelector",
           "readable_tokens", "shared_engine", "DEFAULT_MODEL_NAME"]
