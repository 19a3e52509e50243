"""How an answer and a failure are reported outside the process: the program's name and exit
codes, an answer as a JSON record, an error as one line and its exit code. The command line and
the resident server both report this way (the server sends them to its client), so they live
below both."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ActQKVError, ConfigError, InputError, ModelNotFoundError, ServerError, UnsupportedModelError

PROG = "actqkv"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake on the command line that argparse cannot see (exit code 2)."""


def answer_record(answer, doc_info: dict[str, Any]) -> dict[str, Any]:
    """An answer (text, why it stopped, sources, token usage) and its document as one JSON record:
    what ``actqkv ask --json`` prints and the resident server sends."""
    return {"answer": answer.text, "finish_reason": answer.finish_reason,
            "stop_reason": getattr(answer, "stop_reason", answer.finish_reason),
            "sources": [dataclasses.asdict(s) for s in answer.sources], "usage": dataclasses.asdict(answer.usage),
            "document": doc_info}


def error_exit_code(exc: BaseException) -> int:
    """2 for bad usage or input, 1 otherwise (the resident server's errors carry their own)."""
    if isinstance(exc, ServerError):
        return exc.exit_code
    usage = (UsageError, ConfigError, InputError, UnsupportedModelError, ModelNotFoundError)
    return EXIT_USAGE if isinstance(exc, usage) else EXIT_FAILURE


def error_line(exc: BaseException) -> str:
    """The one line an error prints after ``actqkv: error:``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ActQKVError, UsageError)):
        return text
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory ({text}): try a smaller --prefill-chunk, --budget or --offload on"
    if isinstance(exc, OSError):
        return text
    return f"{type(exc).__name__}: {text} (run again with --debug for the traceback)"
