"""The exceptions a caller can catch. Every message says what went wrong and what to do."""

from __future__ import annotations


def is_int(value: object) -> bool:
    """An integer, and not a bool (``True`` is an ``int`` to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ActQKVError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(ActQKVError, ValueError):
    """A retrieval or engine option is out of range or inconsistent."""


class InputError(ActQKVError, ValueError):
    """The caller passed something we cannot process (empty document, non-text, ...)."""


class UnsupportedModelError(ActQKVError, ValueError):
    """The model's architecture is not one this library knows how to drive."""


class ModelNotFoundError(ActQKVError, FileNotFoundError):
    """The model files could not be found locally (this library never downloads at run time)."""


class CacheError(ActQKVError):
    """A persisted document cache is missing, corrupt, or was built for something else."""


class CacheMismatchError(CacheError):
    """A cache exists but was built by another model, tokenizer, format or option set."""


class CacheAccessError(CacheError):
    """A cache file or directory exists but we may not read it (permissions): reported, never
    treated as damage (nothing is deleted because of it)."""


class ServerError(ActQKVError):
    """A request to the resident server (``actqkv ask``) failed. ``exit_code`` is the code the
    command exits with (2 when the server refused bad input, as the in-process path would);
    ``remote_traceback`` is the server's traceback when ``--debug`` asked for it."""

    def __init__(self, message: str, exit_code: int = 1, remote_traceback: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.remote_traceback = remote_traceback
