"""Persistence of prefilled documents: save once, reload in any later process.

    path = doc.save()                    # atomic, under <cache root>/documents/<key>/
    doc = eng.load(path or key)          # validated first; full blocks stay on disk, read on demand

Layout and guarantees: docs/cache-format.md. Only JSON and safetensors are ever read (no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CacheError
from .format import FORMAT_VERSION, MANIFEST, Manifest, document_key
from .index import DocumentCache
from .paths import default_cache_root
from .reader import load_directory
from .writer import save_to


def _cache_of(engine: Any) -> DocumentCache:
    cache = getattr(engine, "cache", None)
    return cache if cache is not None else DocumentCache()


def save_document(doc: Any, path: str | Path | None = None) -> Path:
    """Save ``doc`` atomically. Without ``path``: into the engine's document cache (indexed, listed
    by ``actqkv ls``); with one: as that directory. Sets ``doc.key`` and ``doc.path``."""
    if path is None:
        return _cache_of(doc.engine).put(doc)
    target, manifest = save_to(doc, path)
    doc.key, doc.path = manifest.key, target
    return target


def load_document(engine: Any, path_or_key: str | Path, verify: str = "blocks") -> Any:
    """Open a saved document: a directory written by :func:`save_document`, or a cache key (or a
    unique prefix of one). ``verify="blocks"`` (default) checks each block's sha256 when it is first
    read from disk; ``"full"`` also hashes the whole blocks file up front."""
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
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    if not p.is_dir():
        raise CacheError(f"{p}: no such document cache directory (give a directory written by "
                         "Document.save(), or a key listed by 'actqkv ls')")
    return load_directory(engine, p, verify=verify)


__all__ = ["DocumentCache", "save_document", "load_document", "default_cache_root", "FORMAT_VERSION",
           "Manifest", "document_key"]
