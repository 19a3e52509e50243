"""Deprecated: ``llama_index.llms.actqkv.query_engine``."""
from llama_index.llms.actqkv.query_engine import *  # noqa: F401,F403
