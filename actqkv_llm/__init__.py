"""actqkv_llm: ask many questions about one very long document with a local language model.

The document is prefilled once into block memory (InfLLM) and cached on disk; each step attends
to sink tokens, a local window and the few blocks an activation-aware probe retrieves (ActQKV).
"""

from .config import METHODS, RetrievalConfig
from .document import Document, Source
from .engine import Answer, AnswerStream, Engine, Usage
from .errors import (ActQKVError, CacheError, CacheMismatchError, ConfigError, InputError,
                     ModelNotFoundError, UnsupportedModelError)

__version__ = "0.1.0"

__all__ = ["Engine", "Document", "RetrievalConfig", "METHODS", "Answer", "AnswerStream", "Source", "Usage",
           "ActQKVError", "ConfigError", "InputError", "UnsupportedModelError", "ModelNotFoundError",
           "CacheError", "CacheMismatchError", "__version__"]
