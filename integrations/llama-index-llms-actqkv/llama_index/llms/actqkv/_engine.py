"""The process-wide engines of the LlamaIndex integration: the core's registry, shared with the
LangChain integration (one load of the weights per process)."""

from actqkv_llm.shared import DEFAULT_MODEL_NAME, engine_name, shared_engine, short_model_name

__all__ = ["DEFAULT_MODEL_NAME", "engine_name", "shared_engine", "short_model_name"]
