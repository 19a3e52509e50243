"""LangChain integration of actqkv_llm: chat and string models that answer about one long document.

    from langchain_actqkv import ChatActQKV, ActQKVLLM
    chain = prompt | ChatActQKV(document_path="book.txt") | StrOutputParser()
"""

from ._core import DEFAULT_MODEL_NAME, shared_engine
from .chat_models import ChatActQKV
from .llms import ActQKVLLM

__all__ = ["ChatActQKV", "ActQKVLLM", "shared_engine", "DEFAULT_MODEL_NAME"]
