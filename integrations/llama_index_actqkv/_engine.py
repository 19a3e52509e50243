"""The process-wide default engine of the LlamaIndex integration (loaded once, on first use)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from actqkv_llm import Engine

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

_LOCK = threading.Lock()
_ENGINES: dict[tuple[Optional[str], Optional[str]], Engine] = {}


def shared_engine(model: Optional[str] = None, method: Optional[str] = None) -> Engine:
    """The engine on ``model`` (None: the embedded SmolLM2-135M-Instruct), loaded once per process.

    Other retrieval methods reuse the loaded weights (:meth:`Engine.with_method`).
    """
    with _LOCK:
        base = _ENGINES.get((model, None))
        if base is None:
            base = Engine.default() if model is None else Engine.from_pretrained(model)
            _ENGINES[(model, None)] = base
        if method is None or method == base.config.method:
            return base
        if (model, method) not in _ENGINES:
            _ENGINES[(model, method)] = base.with_method(method)
        return _ENGINES[(model, method)]


def engine_name(engine: Engine) -> str:
    """``/x/SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct.Q4_1``; hub ids unchanged."""
    name = str(engine.model_id or "")
    if name.lower().endswith(".gguf") or Path(name).exists():
        path = Path(name)
        name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return name or DEFAULT_MODEL_NAME
