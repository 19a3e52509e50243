"""actqkv_llm: ask many questions about one very long document with a local language model.

The document is prefilled once into block memory (InfLLM) and cached on disk; each step attends
to sink tokens, a local window and the few blocks an activation-aware probe retrieves (ActQKV).

The names below are imported on first use, so ``import actqkv_llm.cli`` (the ``actqkv`` command)
can parse and validate its options without loading torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (ActQKVError, CacheError, CacheMismatchError, ConfigError, InputError,
                     ModelNotFoundError, UnsupportedModelError)

__version__ = "0.1.0"

_LAZY = {"METHODS": ".config", "RetrievalConfig": ".config", "Document": ".document", "Source": ".document",
         "Answer": ".engine", "AnswerStream": ".engine", "Engine": ".engine", "Usage": ".engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Engine", "Document", "RetrievalConfig", "METHODS", "Answer", "AnswerStream", "Source", "Usage",
           "ActQKVError", "ConfigError", "InputError", "UnsupportedModelError", "ModelNotFoundError",
           "CacheError", "CacheMismatchError", "__version__"]
