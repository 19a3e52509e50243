"""Deprecated: ``llama_index.llms.actqkv``."""
from llama_index.llms.actqkv.base import *  # noqa: F401,F403
from llama_index.llms.actqkv.base import ActQKVLLM  # noqa: F401
