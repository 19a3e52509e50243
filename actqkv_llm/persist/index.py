"""The document cache: directories under ``<root>/documents/<key>/`` and an index of them.

The index is a :mod:`diskcache` (SQLite) store, process- and thread-safe, whose values are plain
JSON dicts ``{"path", "size", "last_used", "created"}``: keys and values go through a JSON-only
disk class that refuses pickled rows, so nothing is ever unpickled. The directories are the
truth (each carries its manifest); the index only makes ``ls`` and LRU eviction cheap, and
``gc`` repairs it when the two disagree.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_PICKLE

from ..errors import CacheError, CacheMismatchError
from .format import KEY_RE, Manifest, engine_key, sha256_ids
from .paths import (DOCUMENTS, INDEX, TMP_PREFIX, TRASH_PREFIX, default_cache_root, dir_size, discard_dir,
                    env_max_bytes, private_dir)
from .reader import load_directory
from .writer import quick_check, save_to

# Unknown directories and temporary saves younger than this are left alone by gc (a save or a
# publish may be in progress in another process).
GRACE_SECONDS = 3600.0
_PREFIX_RE = re.compile(r"^[0-9a-f]{6,64}$")


class IndexRowError(CacheError):
    """A row of the index that is not ours (pickled, or not compressed JSON): never decoded."""


class JSONOnlyDisk(diskcache.JSONDisk):
    """diskcache's JSONDisk (keys and values are zlib-compressed JSON) that refuses any row stored
    the pickle way, so a tampered index can never make us unpickle."""

    def get(self, key, raw):
        if not raw:
            raise IndexRowError("the document index holds a pickled key: refusing to read it")
        try:
            return super().get(key, raw)
        except (TypeError, ValueError, zlib.error) as exc:
            raise IndexRowError(f"the document index holds an unreadable key ({exc})") from None

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise IndexRowError("the document index holds a pickled value: refusing to read it")
        try:
            return super().fetch(mode, filename, value, read)
        except (TypeError, ValueError, zlib.error) as exc:
            raise IndexRowError(f"the document index holds an unreadable value ({exc})") from None


class DocumentCache:
    """Cached prefilled documents under ``root`` (default: :func:`default_cache_root`).

    ``max_bytes`` (or ``$ACTQKV_CACHE_MAX_BYTES``) bounds the total size: after each ``put`` the
    least recently used documents are deleted until the rest fit.
    """

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None):
        self.root = (Path(root).expanduser() if root is not None else default_cache_root()).absolute()
        self.documents = private_dir(self.root / DOCUMENTS)
        private_dir(self.root / INDEX)
        self.max_bytes = max_bytes if max_bytes is not None else env_max_bytes()
        # eviction_policy none: diskcache must never drop rows on its own (gc decides what goes)
        self._index = diskcache.Cache(str(self.root / INDEX), disk=JSONOnlyDisk, eviction_policy="none")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DocumentCache({str(self.root)!r})"

    def close(self) -> None:
        self._index.close()

    def __enter__(self) -> "DocumentCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ paths and rows
    def path_for(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise CacheError(f"{key!r} is not a document cache key")
        return self.documents / key

    def _row(self, key: str) -> dict | None:
        """The index row of ``key``; a row we did not write (pickled, not JSON) is reported and dropped."""
        try:
            row = self._index.get(key)
        except IndexRowError as exc:
            warnings.warn(f"{exc}; dropping that index row", RuntimeWarning, stacklevel=3)
            self._index.delete(key)
            return None
        return row if isinstance(row, dict) and isinstance(row.get("path"), str) else None

    def _resolve(self, row: dict) -> Path:
        p = Path(row.get("path", ""))
        return p if p.is_absolute() else self.documents / p

    def _record(self, key: str, path: Path, size: int | None = None, created: float | None = None,
                last_used: float | None = None) -> dict:
        rel = path.relative_to(self.documents) if path.is_relative_to(self.documents) else path
        row = {"path": str(rel), "size": int(size if size is not None else dir_size(path)),
               "last_used": float(last_used if last_used is not None else time.time()),
               "created": float(created if created is not None else time.time())}
        self._index.set(key, row)
        return row

    def _touch(self, key: str, path: Path) -> None:
        with self._index.transact():
            row = self._row(key)
            if row is None:
                self._record(key, path)
            else:
                row["last_used"] = time.time()
                self._index.set(key, row)

    def resolve_key(self, key: str) -> str:
        """A full key from a full key or a unique prefix of one (at least 6 hex digits)."""
        if KEY_RE.match(key):
            return key
        if _PREFIX_RE.match(key):
            found = sorted({k for k in self._keys() if k.startswith(key)}
                           | {p.name for p in self._key_dirs() if p.name.startswith(key)})
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise CacheError(f"key prefix {key!r} matches {len(found)} cached documents: give more characters")
        raise CacheError(f"unknown key {key!r}: no cached document has it ('actqkv ls' lists the cached documents)")

    def get(self, key: str, touch: bool = True) -> Path:
        """The directory of the document cached under ``key`` (or a unique prefix of it)."""
        key = self.resolve_key(key)
        row = self._row(key)
        path = self._resolve(row) if row else self.documents / key
        if not (path / "manifest.json").is_file():
            if row is not None:
                self._index.delete(key)
            raise CacheError(f"unknown key {key!r}: no cached document has it ('actqkv ls' lists the cached documents)")
        if touch:
            self._touch(key, path)
        return path

    # ------------------------------------------------------------------ documents
    def lookup(self, engine: Any, text: str, layout: str, ids: Any):
        """The cached document for this engine, text and layout, or None. A damaged entry is reported
        with a warning, discarded and never used; one built for something else is not returned."""
        key = engine_key(engine, text, layout, ids)
        row = self._row(key)
        path = self._resolve(row) if row else self.documents / key
        if not path.exists():
            if row is not None:
                self._index.delete(key)
            return None
        try:
            doc = load_directory(engine, path, on_corrupt=lambda: self._discard(key, path),
                                 expect={"key": key, "token_ids_sha256": sha256_ids(ids)})
        except CacheMismatchError as exc:
            warnings.warn(f"not using the cached document {key[:12]}: {exc}", RuntimeWarning, stacklevel=3)
            return None
        except CacheError as exc:
            warnings.warn(f"discarding a damaged cached document ({exc}); prefilling it again",
                          RuntimeWarning, stacklevel=3)
            self._discard(key, path)
            return None
        doc.text = text
        self._touch(key, path)
        return doc

    def load(self, engine: Any, key: str, verify: str = "blocks"):
        path = self.get(key)
        key = path.name if KEY_RE.match(path.name) else key
        return load_directory(engine, path, verify=verify, on_corrupt=lambda: self._discard(key, path))

    def put(self, doc: Any) -> Path:
        """Save ``doc`` (atomically) and index it; sets ``doc.key`` and ``doc.path``."""
        from .writer import doc_key

        key = doc_key(doc)
        target = self.documents / key
        path, manifest = save_to(doc, target, key)
        self._record(key, path, created=manifest.created)
        doc.key, doc.path = key, path
        if self.max_bytes is not None:
            self.gc(self.max_bytes, keep=(key,))
        return path

    def _discard(self, key: str, path: Path) -> None:
        """Forget a (damaged) entry: index row dropped, directory removed."""
        self._index.delete(key)
        if path.is_relative_to(self.documents):
            discard_dir(path)

    def remove(self, key: str) -> bool:
        """Delete a cached document (its directory and its index row)."""
        key = self.resolve_key(key)
        row = self._row(key)
        path = self._resolve(row) if row else self.documents / key
        self._index.delete(key)
        return discard_dir(path) if path.is_relative_to(self.documents) else row is not None

    def clear(self) -> int:
        """Delete every cached document; returns how many."""
        keys = {p.name for p in self._key_dirs()}
        try:
            keys |= set(self._keys())
        except CacheError:
            pass  # an index we cannot read is simply emptied below
        self._index.clear()
        for key in keys:
            discard_dir(self.documents / key)
        for p in self.documents.iterdir():
            if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                discard_dir(p)
        return len(keys)

    # ------------------------------------------------------------------ listing
    def _keys(self) -> list[str]:
        try:
            keys = list(self._index.iterkeys())
        except IndexRowError as exc:
            raise CacheError(f"{exc} ({self.root / INDEX}); 'actqkv rm --all' (DocumentCache.clear()) "
                             "resets the index") from None
        return [k for k in keys if isinstance(k, str) and KEY_RE.match(k)]

    def _key_dirs(self) -> list[Path]:
        try:
            return [p for p in self.documents.iterdir() if KEY_RE.match(p.name) and p.is_dir()]
        except FileNotFoundError:
            return []

    def entries(self) -> list[dict]:
        """One dict per cached document, most recently used first: key, path, size, tokens, model,
        layout, method, created, last_used (for ``actqkv ls``)."""
        out = []
        for key in self._keys():
            row = self._row(key)
            if row is None:
                continue
            path = self._resolve(row)
            try:
                m = Manifest.read(path)
            except CacheError:
                continue  # vanished or damaged: gc drops it
            out.append({"key": key, "path": str(path), "size": row.get("size", 0), "tokens": m.n_tokens,
                        "model": m.fingerprint.get("model_id") or m.fingerprint.get("model") or "",
                        "layout": m.layout, "method": m.kv_options.get("method"), "blocks": m.total_blocks,
                        "created": row.get("created", m.created), "last_used": row.get("last_used")})
        out.sort(key=lambda e: -(e["last_used"] or 0))
        return out

    def total_bytes(self) -> int:
        return sum(int((self._row(k) or {}).get("size", 0)) for k in self._keys())

    # ------------------------------------------------------------------ garbage collection
    def gc(self, max_bytes: int | None = None, grace: float = GRACE_SECONDS, keep: tuple[str, ...] = ()) -> list[str]:
        """Repair the index and bound the cache's size; returns the keys of deleted documents.

        - ``.tmp-*`` (interrupted saves) older than ``grace`` seconds and ``.trash-*`` are deleted;
        - index rows whose directory vanished are dropped;
        - key directories no row knows about and older than ``grace``: re-indexed if they hold a
          complete, valid cache, else deleted;
        - with ``max_bytes`` (else ``self.max_bytes``): least recently used documents (directories
          and rows) are deleted until the total fits; ``keep`` lists keys never evicted.
        """
        limit = max_bytes if max_bytes is not None else self.max_bytes
        now = time.time()
        removed: list[str] = []
        with self._lock:
            try:
                listing = list(self.documents.iterdir())
            except FileNotFoundError:
                listing = []
            for p in listing:
                try:
                    age = now - p.stat().st_mtime
                except FileNotFoundError:
                    continue
                if p.name.startswith(TRASH_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
                elif p.name.startswith(TMP_PREFIX) and age > grace:
                    discard_dir(p)
            known = set()
            for key in self._keys():
                row = self._row(key)
                if row is None or not (self._resolve(row) / "manifest.json").is_file():
                    self._index.delete(key)
                else:
                    known.add(key)
            for p in self._key_dirs():
                if p.name in known:
                    continue
                try:
                    age = now - p.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age <= grace:
                    continue
                manifest = quick_check(p)
                if manifest is not None and manifest.key == p.name:
                    self._record(p.name, p, created=manifest.created, last_used=p.stat().st_mtime)
                elif discard_dir(p):
                    removed.append(p.name)
            if limit is not None:
                rows = [(k, self._row(k)) for k in self._keys()]
                rows = [(k, r) for k, r in rows if r is not None]
                total = sum(int(r.get("size", 0)) for _, r in rows)
                for key, row in sorted(rows, key=lambda kr: kr[1].get("last_used", 0)):
                    if total <= limit:
                        break
                    if key in keep:
                        continue
                    path = self._resolve(row)
                    self._index.delete(key)
                    if path.is_relative_to(self.documents):
                        discard_dir(path)
                    total -= int(row.get("size", 0))
                    removed.append(key)
        return removed
