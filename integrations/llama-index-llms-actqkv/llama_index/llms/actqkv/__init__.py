"""LlamaIndex integration of actqkv_llm: an LLM and a query engine over long documents read once.

    from llama_index_actqkv import ActQKVLLM, ActQKVQueryEngine, ActQKVRetriever
"""

from ._engine import DEFAULT_MODEL_NAME, shared_engine
from .base import ActQKVLLM
from .query_engine import ActQKVQueryEngine, ActQKVRetriever, PrefilledDocument

__all__ = ["ActQKVLLM", "ActQKVQueryEngine", "ActQKVRetriever", "PrefilledDocument", "shared_engine",
           "DEFAULT_MODEL_NAME"]
