"""The exceptions a caller can catch. Every message says what went wrong and what to do."""

from __future__ import annotations


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
