"""Deprecated import name of the LlamaIndex integration: use ``llama_index.llms.actqkv``.

    from llama_index.llms.actqkv import ActQKVLLM, ActQKVQueryEngine
"""

import warnings

warnings.warn("llama_index_actqkv is deprecated: import from llama_index.llms.actqkv instead "
              "(same classes; distribution llama-index-llms-actqkv)", DeprecationWarning, stacklevel=2)

from llama_index.llms.actqkv import *  # noqa: E402,F401,F403
from llama_index.llms.actqkv import __all__  # noqa: E402,F401
