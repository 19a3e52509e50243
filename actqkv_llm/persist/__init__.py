"""Persistence of prefilled documents: save once, reload in any later process.

    path = doc.save()                    # atomic, under <cache root>/documents/<key>/
    doc = eng.load(path or key)          # validated first; full blocks stay on disk, read on demand

Layout, guarantees and threat model: docs/cache-format.md. Only JSON and safetensors are ever read
(no pickle).

This package's ``__init__`` is light (no torch): the rest is imported on first use. Where caches
live and how their files are read and removed: :mod:`actqkv_llm.files`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

_LAZY = {"DocumentCache": ".index", "FORMAT_VERSION": ".format", "Manifest": ".format",
         "document_key": ".format", "default_cache_root": "..files.paths", "IndexReport": ".index",
         "GcReport": ".index"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _cache_of(engine: Any):
    from .index import DocumentCache

    cache = getattr(engine, "cache", None)
    return cache if cache is not None else DocumentCache()


def save_document(doc: Any, path: str | Path | None = None, kv_dtype: Any = None) -> Path:
    """Save ``doc`` atomically. Without ``path``: into the engine's document cache (indexed, listed
    by ``actqkv ls``); with one: as that directory, which must be new, empty, or a document cache
    this library wrote. KV is stored as bf16 unless ``kv_dtype`` says otherwise (``"compute"``: the
    engine's dtype). Sets ``doc.key`` and ``doc.path``."""
    from .writer import save_to

    if path is None:
        return _cache_of(doc.engine).put(doc, kv_dtype=kv_dtype)
    target, manifest = save_to(doc, path, kv_dtype=kv_dtype)
    doc.key, doc.path = manifest.key, target
    return target


def load_document(engine: Any, path_or_key: str | Path, verify: str = "blocks") -> Any:
    """Open a saved document: a directory written by :func:`save_document`, or a cache key (or a
    unique prefix of one). ``verify="blocks"`` (default) checks each block's checksum when it is
    first read from disk; ``"full"`` also hashes the whole blocks file up front."""
    from ..errors import CacheError
    from .format import MANIFEST
    from .reader import load_directory

    if isinstance(path_or_key, (str, os.PathLike)) and not isinstance(path_or_key, Path):
        text = os.fspath(path_or_key)
        if not text.strip():
            raise CacheError("no document given: pass a cache key or a directory")
        p = Path(text).expanduser()
        looks_like_path = isinstance(path_or_key, os.PathLike) or os.sep in text or (os.altsep or os.sep) in text
        if not looks_like_path and not p.exists():
            return _cache_of(engine).load(engine, text, verify=verify)
    else:
        p = Path(path_or_key).expanduser()
    if p.name == MANIFEST and p.is_file():
        p = p.parent
    if not p.is_dir():
        raise CacheError(f"{p}: no such document cache directory (give a directory written by "
                         "Document.save(), or a key listed by 'actqkv ls')")
    return load_directory(engine, p.resolve(), verify=verify)


__all__ = ["DocumentCache", "save_document", "load_document", "default_cache_root", "FORMAT_VERSION",
           "Manifest", "document_key"]
