"""One engine per model and method for the whole process, shared by the integrations (so an app
using both LangChain and LlamaIndex loads the weights once), and the short model names they report."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from .engine import Engine
from .models.registry import default_spec

#: The name reported for the embedded default model before it is loaded (models/registry.py).
DEFAULT_MODEL_NAME = default_spec().model_name


class EngineRegistry:
    """Engines by (model, method); other methods reuse the loaded weights (:meth:`Engine.with_method`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[tuple[Optional[str], Optional[str]], Engine] = {}

    def get(self, model: Optional[str] = None, method: Optional[str] = None) -> Engine:
        """The engine for ``model`` (None: the embedded default), loaded once on first use."""
        with self._lock:
            base = self._engines.get((model, None))
            if base is None:
                base = Engine.default() if model is None else Engine.from_pretrained(model)
                self._engines[(model, None)] = base
            if method is None or method == base.config.method:
                return base
            if (model, method) not in self._engines:
                self._engines[(model, method)] = base.with_method(method)
            return self._engines[(model, method)]


#: The process's registry: integrations are configured by model name, not handed an engine.
ENGINES = EngineRegistry()


def shared_engine(model: Optional[str] = None, method: Optional[str] = None) -> Engine:
    """The process-wide engine for ``model`` and ``method`` (see :class:`EngineRegistry`)."""
    return ENGINES.get(model, method)


def short_model_name(name: str) -> str:
    """``/x/y/SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct.Q4_1``; hub ids stay as they are."""
    if Path(name).exists() or name.lower().endswith(".gguf"):
        path = Path(name)
        name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return name


def engine_name(engine: Engine) -> str:
    """A short model name for an engine: the file or directory name of what it was loaded from."""
    return short_model_name(str(engine.model_id or "")) or DEFAULT_MODEL_NAME
