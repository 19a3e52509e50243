"""The document cache: directories under ``<root>/documents/<key>/`` and an index of them.

The directories are the truth: each is self-describing (its manifest carries the key, which
must match both the directory name and the manifest's own content). The index is a
:mod:`diskcache` (SQLite) store that only makes ``ls`` and LRU eviction cheap. Its rows hold
plain facts, ``{"size", "last_used", "created"}``, never a path: every path is derived from the
key by our own rule (``<root>/documents/<key>``, a 64-hex-digit name inside a resolved root), so
no row can steer a file operation. Keys and values go through a JSON-only disk class that refuses
pickled rows and rows naming files, and never deletes a file a row names. Rows we did not write
are reported and dropped. An index that cannot be read at all (overwritten, a directory, a
symlink) is set aside and rebuilt from the document directories, with one warning.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
from diskcache.core import MODE_PICKLE

from ..errors import CacheAccessError, CacheError, CacheMismatchError
from .format import KEY_RE, MANIFEST, engine_key, sha256_ids
from ..files.paths import (DOCUMENTS, INDEX, TMP_PREFIX, TRASH_PREFIX, default_cache_root, discard_dir, env_max_bytes,
                    inside, is_real_dir, newest_mtime, private_dir, remove_tree, sibling, tree_size)
from .reader import load_directory
from .writer import check_entry, doc_key, save_to

# Unknown key directories younger than this are left alone by gc (a publish may be in progress).
GRACE_SECONDS = 3600.0
# Temporary saves (.tmp-*) untouched for this long are crashed saves: gc removes them. A save in
# progress keeps writing its files, so their mtime stays fresh.
TEMP_GRACE_SECONDS = 120.0
ROW_FIELDS = frozenset({"size", "last_used", "created"})
INDEX_DB = "cache.db"
_PREFIX_RE = re.compile(r"^[0-9a-f]{6,64}$")
# diskcache settings we always pass (a tampered Settings table cannot change them): values are
# never stored in files, nothing is evicted behind our back, SQLite pragmas are the defaults.
_SETTINGS = {**{k: v for k, v in diskcache.DEFAULT_SETTINGS.items() if k.startswith("sqlite_")},
             "eviction_policy": "none", "cull_limit": 0, "disk_min_file_size": 1 << 40,
             "statistics": 0, "tag_index": 0}


class IndexRowError(CacheError):
    """A row of the index that is not ours (pickled, naming a file, not compressed JSON): never decoded."""


class JSONOnlyDisk(diskcache.JSONDisk):
    """diskcache's JSONDisk (keys and values are zlib-compressed JSON) that refuses any row stored
    the pickle way or in a file, so a tampered index can never make us unpickle, read a file, or
    delete one: :meth:`remove` does nothing (we never store values in files)."""

    def get(self, key, raw):
        if not raw:
            raise IndexRowError("the document index holds a pickled key: refusing to read it")
        try:
            return super().get(key, raw)
        except (TypeError, ValueError, zlib.error, RecursionError) as exc:
            raise IndexRowError(f"the document index holds an unreadable key ({exc})") from None

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise IndexRowError("the document index holds a pickled value: refusing to read it")
        if filename is not None or not isinstance(value, bytes):
            raise IndexRowError("the document index holds a value stored in a file: refusing to read it")
        try:
            return super().fetch(mode, filename, value, read)
        except (TypeError, ValueError, zlib.error, RecursionError) as exc:
            raise IndexRowError(f"the document index holds an unreadable value ({exc})") from None

    def remove(self, file_path):  # noqa: D102 - never delete a file a row names
        return None


def _our_row(row: Any) -> bool:
    return isinstance(row, dict) and set(row) == ROW_FIELDS and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in row.values())


def _transient(exc: BaseException) -> bool:
    """An index error that says nothing about its content (locked, disk full, read-only): reported,
    never a reason to rebuild."""
    text = str(exc).lower()
    return isinstance(exc, diskcache.Timeout) or any(
        word in text for word in ("locked", "busy", "full", "readonly", "read-only", "no space"))


@dataclass
class GcReport:
    """What :meth:`DocumentCache.collect` did."""

    removed: list[str] = field(default_factory=list)   # keys of deleted documents (damaged or evicted)
    temp_dirs: int = 0                                  # stale .tmp-* / .trash-* directories deleted
    bytes_freed: int = 0
    reindexed: list[str] = field(default_factory=list)  # valid directories the index did not know
    problems: list[str] = field(default_factory=list)   # e.g. permission errors: reported, left alone


@dataclass
class IndexReport:
    """What :meth:`DocumentCache.doctor` found (nothing is deleted by it)."""

    root: str
    index: str                                          # "ok", or "rebuilt (<why>)"
    documents: int = 0                                  # valid, indexed documents
    unindexed: int = 0                                  # valid directories the index did not know (now indexed)
    damaged: list[str] = field(default_factory=list)    # key directories that fail their checks
    unreadable: list[str] = field(default_factory=list)  # permission problems
    temp_dirs: int = 0
    temp_bytes: int = 0

    def line(self) -> str:
        parts = [f"cache {self.root}: index {self.index}", f"{self.documents} document(s)"]
        if self.damaged:
            parts.append(f"{len(self.damaged)} damaged")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable (permissions)")
        if self.temp_dirs:
            parts.append(f"{self.temp_dirs} leftover temporary dir(s), {self.temp_bytes} bytes")
        if self.damaged or self.temp_dirs:
            parts.append("'actqkv gc' cleans them")
        return "; ".join(parts)


class DocumentCache:
    """Cached prefilled documents under ``root`` (default: :func:`default_cache_root`).

    ``max_bytes`` (or ``$ACTQKV_CACHE_MAX_BYTES``) bounds the total size: after each ``put`` the
    least recently used documents are deleted until the rest fit. ``kv_dtype`` is how ``put``
    stores KV (default bf16; ``"compute"`` keeps the engine's dtype).
    """

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None, kv_dtype: Any = None):
        root = Path(root).expanduser() if root is not None else default_cache_root()
        if os.path.lexists(root) and not root.is_dir():
            raise CacheError(f"the cache root {root} exists and is not a directory: give a directory "
                             "(--cache-dir / $ACTQKV_CACHE_DIR)")
        try:
            private_dir(root)
        except OSError as exc:
            raise CacheError(f"cannot create the cache root {root}: {exc.strerror or exc} (is a part of "
                             "that path a file?)") from None
        self.root = root.resolve()
        self.documents = self.root / DOCUMENTS
        if os.path.lexists(self.documents) and not is_real_dir(self.documents):
            raise CacheError(f"{self.documents} must be a directory (not a file or symbolic link)")
        private_dir(self.documents)
        self.max_bytes = max_bytes if max_bytes is not None else env_max_bytes()
        self.kv_dtype = kv_dtype
        self._lock = threading.RLock()
        self.index_state = "ok"
        self._index = self._open_index()

    def __repr__(self) -> str:
        return f"DocumentCache({str(self.root)!r})"

    def close(self) -> None:
        try:
            self._index.close()
        except Exception:  # noqa: BLE001 - a broken index closes as well as it can
            pass

    def __enter__(self) -> "DocumentCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the index
    def _index_problem(self) -> str | None:
        """Why the index directory cannot be used as it is (None: looks fine)."""
        idx = self.root / INDEX
        if not os.path.lexists(idx):
            return None
        if not is_real_dir(idx):
            return f"{idx} is not a directory"
        db = idx / INDEX_DB
        if os.path.lexists(db) and (db.is_symlink() or not db.is_file()):
            return f"{db} is not a regular file"
        return None

    def _connect(self) -> diskcache.Cache:
        private_dir(self.root / INDEX)
        index = diskcache.Cache(str(self.root / INDEX), disk=JSONOnlyDisk, **_SETTINGS)
        try:
            index.get("", default=None)  # touch the table: a garbled file fails here
        except IndexRowError:
            pass
        except BaseException:
            index.close()
            raise
        return index

    def _open_index(self) -> diskcache.Cache:
        problem = self._index_problem()
        if problem is None:
            try:
                return self._connect()
            except (sqlite3.Error, OSError) as exc:
                if _transient(exc):
                    raise CacheError(f"the document index {self.root / INDEX} cannot be used now ({exc}); "
                                     "try again") from None
                problem = f"{type(exc).__name__}: {exc}"
        return self._rebuild(problem, opened=False)

    def _rebuild(self, why: str, opened: bool = True, warn: bool = True) -> diskcache.Cache:
        """Set the index aside and build a new one from the document directories."""
        with self._lock:
            if opened:
                self.close()
            idx = self.root / INDEX
            if os.path.lexists(idx):
                trash = sibling(idx, TRASH_PREFIX)
                try:
                    os.rename(idx, trash)
                except OSError:
                    trash = idx
                remove_tree(trash)
            index = self._connect()
            self._index = index
            n = 0
            for p in self._key_dirs():
                try:
                    manifest = check_entry(p)
                except CacheError:
                    continue  # damaged or unreadable: gc or doctor reports it
                if manifest.key == p.name:
                    self._record(p.name, created=manifest.created, last_used=newest_mtime(p))
                    n += 1
            self.index_state = f"rebuilt ({why})"
            if warn:
                warnings.warn(f"the document index {idx} was unreadable ({why}); rebuilt it from {n} "
                              "cached document(s)", RuntimeWarning, stacklevel=4)
            return index

    def rebuild_index(self) -> int:
        """Rebuild the index from the document directories (``actqkv rebuild-index``); returns how
        many documents it lists."""
        self._rebuild("asked for", warn=False)
        return len(self._keys())

    def _db(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """``self._index.<op>(...)`` (``iterkeys`` is listed inside); a garbled index is rebuilt
        once and the call repeated. Transient errors (locked, disk full) are a CacheError."""
        for attempt in range(2):
            try:
                result = getattr(self._index, op)(*args, **kwargs)
                return list(result) if op == "iterkeys" else result
            except IndexRowError:
                raise
            except (sqlite3.Error, diskcache.Timeout, OSError) as exc:
                if _transient(exc):
                    raise CacheError(f"the document index {self.root / INDEX} cannot be used now ({exc}); "
                                     "try again") from None
                if attempt:
                    raise CacheError(f"the document index {self.root / INDEX} is unusable ({exc}); "
                                     "'actqkv rebuild-index' rebuilds it") from None
                self._rebuild(f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ paths and rows
    def path_for(self, key: str) -> Path:
        """``<root>/documents/<key>``: the only place a key's document can be. Refused when the key
        is not 64 hex digits or the entry is not a real directory (a symlink is never followed)."""
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise CacheError(f"{key!r} is not a document cache key")
        path = self.documents / key
        if os.path.lexists(path) and not is_real_dir(path):
            raise CacheError(f"{path} is not a directory (a file or symbolic link): refusing to use it; "
                             "'actqkv gc' removes it")
        if not inside(self.root, path):
            raise CacheError(f"{path} resolves outside the cache root {self.root}: refusing to use it")
        return path

    def _foreign(self, key: Any, why: str) -> None:
        warnings.warn(f"ignoring a document-index row this library did not write ({why}); dropped it",
                      RuntimeWarning, stacklevel=4)
        try:
            self._db("delete", key)
        except CacheError:
            pass

    def _row(self, key: str) -> dict | None:
        """The index row of ``key`` (plain facts), or None; a row we did not write is reported and dropped."""
        try:
            row = self._db("get", key)
        except IndexRowError as exc:
            self._foreign(key, str(exc))
            return None
        if row is None:
            return None
        if not _our_row(row):
            self._foreign(key, f"key {key[:12]}: unexpected value {str(row)[:60]}")
            return None
        return row

    def _record(self, key: str, size: int | None = None, created: float | None = None,
                last_used: float | None = None) -> dict:
        path = self.documents / key
        row = {"size": int(size if size is not None else tree_size(path)),
               "last_used": float(last_used if last_used is not None else time.time()),
               "created": float(created if created is not None else time.time())}
        self._db("set", key, row)
        return row

    def _touch(self, key: str) -> None:
        row = self._row(key)
        if row is None:
            self._record(key)
        else:
            row["last_used"] = time.time()
            self._db("set", key, row)

    def _keys(self) -> list[str]:
        try:
            keys = self._db("iterkeys")
        except IndexRowError as exc:
            self._rebuild(str(exc))
            keys = self._db("iterkeys")
        good = [k for k in keys if isinstance(k, str) and KEY_RE.match(k)]
        for k in keys:
            if not (isinstance(k, str) and KEY_RE.match(k)):
                self._foreign(k, f"key {str(k)[:40]!r} is not a document key")
        return good

    def _key_dirs(self) -> list[Path]:
        try:
            return [p for p in self.documents.iterdir() if KEY_RE.match(p.name) and is_real_dir(p)]
        except FileNotFoundError:
            return []

    def resolve_key(self, key: str) -> str:
        """A full key from a full key or a unique prefix of one (at least 6 hex digits)."""
        if not isinstance(key, str):
            raise CacheError(f"{key!r} is not a document cache key")
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
        path = self.path_for(key)
        if not (path / MANIFEST).is_file():
            self._db("delete", key)
            raise CacheError(f"unknown key {key!r}: no cached document has it ('actqkv ls' lists the cached documents)")
        if touch:
            self._touch(key)
        return path

    # ------------------------------------------------------------------ documents
    def lookup(self, engine: Any, text: str, layout: str, ids: Any):
        """The cached document for this engine, text and layout, or None. A damaged entry is reported
        with a warning, discarded and never used; one built for something else, or one we may not
        read, is reported and left alone."""
        key = engine_key(engine, text, layout, ids)
        try:
            path = self.path_for(key)
        except CacheError as exc:
            warnings.warn(f"not using the cached document {key[:12]}: {exc}", RuntimeWarning, stacklevel=3)
            return None
        if not os.path.lexists(path):
            self._db("delete", key)
            return None
        try:
            doc = load_directory(engine, path, on_corrupt=lambda: self._discard(key),
                                 expect={"key": key, "token_ids_sha256": sha256_ids(ids)})
        except (CacheMismatchError, CacheAccessError) as exc:
            warnings.warn(f"not using the cached document {key[:12]}: {exc}", RuntimeWarning, stacklevel=3)
            return None
        except CacheError as exc:
            warnings.warn(f"discarding a damaged cached document ({exc}); prefilling it again",
                          RuntimeWarning, stacklevel=3)
            self._discard(key)
            return None
        doc.text = text
        self._touch(key)
        return doc

    def load(self, engine: Any, key: str, verify: str = "blocks"):
        """The document cached under ``key`` (or a unique prefix): its manifest must carry that key."""
        path = self.get(key)
        key = path.name
        return load_directory(engine, path, verify=verify, on_corrupt=lambda: self._discard(key),
                              expect={"key": key})

    def put(self, doc: Any, kv_dtype: Any = None) -> Path:
        """Save ``doc`` (atomically) and index it; sets ``doc.key`` and ``doc.path``."""
        key = doc_key(doc)
        target = self.documents / key
        if os.path.lexists(target) and not is_real_dir(target):
            discard_dir(target)  # a file or symlink where our directory belongs: unlinked, never followed
        path, manifest = save_to(doc, self.path_for(key), key, owned=True,
                                 kv_dtype=kv_dtype if kv_dtype is not None else self.kv_dtype)
        self._record(key, created=manifest.created)
        doc.key, doc.path = key, path
        if self.max_bytes is not None:
            self.gc(self.max_bytes, keep=(key,))
        return path

    def _discard(self, key: str) -> None:
        """Forget a (damaged) entry: index row dropped, its directory (derived from the key) removed."""
        if not KEY_RE.match(key):
            return
        self._db("delete", key)
        discard_dir(self.documents / key)

    def remove(self, key: str) -> bool:
        """Delete a cached document (its directory and its index row)."""
        key = self.resolve_key(key)
        had_row = self._row(key) is not None
        self._db("delete", key)
        return discard_dir(self.documents / key) or had_row

    def clear(self) -> int:
        """Delete every cached document; returns how many."""
        keys = {p.name for p in self._key_dirs()} | set(self._keys())
        self._db("clear")
        for key in keys:
            discard_dir(self.documents / key)
        for p in self.documents.iterdir():
            if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                remove_tree(p)
        return len(keys)

    # ------------------------------------------------------------------ listing
    def entries(self) -> list[dict]:
        """One dict per cached document, most recently used first: key, path, size, tokens, model,
        layout, method, created, last_used (for ``actqkv ls``)."""
        from .format import Manifest

        out = []
        for key in self._keys():
            row = self._row(key)
            if row is None:
                continue
            try:
                path = self.path_for(key)
                m = Manifest.read(path)
            except CacheError:
                continue  # vanished, damaged or unreadable: gc / doctor report it
            if m.key != key:
                continue
            out.append({"key": key, "path": str(path), "size": row["size"], "tokens": m.n_tokens,
                        "model": m.fingerprint.get("model_id") or m.fingerprint.get("model") or "",
                        "layout": m.layout, "method": m.kv_options.get("method"), "blocks": m.total_blocks,
                        "created": row["created"], "last_used": row["last_used"]})
        out.sort(key=lambda e: -(e["last_used"] or 0))
        return out

    def total_bytes(self) -> int:
        return sum(int((self._row(k) or {}).get("size", 0)) for k in self._keys())

    def doctor(self) -> IndexReport:
        """Check the index and every entry; rebuilds an unreadable index, deletes nothing."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keys = set(self._keys())
        report = IndexReport(str(self.root), self.index_state)
        for p in self._key_dirs():
            try:
                manifest = check_entry(p)
            except CacheAccessError as exc:
                report.unreadable.append(str(exc))
                continue
            except CacheError as exc:
                report.damaged.append(str(exc))
                continue
            if manifest.key != p.name:
                report.damaged.append(f"{p / MANIFEST}: field 'key' does not match the directory name")
                continue
            if p.name not in keys:
                self._record(p.name, created=manifest.created, last_used=newest_mtime(p))
                report.unindexed += 1
            report.documents += 1
        for p in self.documents.iterdir():
            if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                report.temp_dirs += 1
                report.temp_bytes += tree_size(p)
        return report

    # ------------------------------------------------------------------ garbage collection
    def gc(self, max_bytes: int | None = None, grace: float = GRACE_SECONDS, keep: tuple[str, ...] = ()) -> list[str]:
        """:meth:`collect`, returning only the keys of deleted documents."""
        return self.collect(max_bytes, grace, keep).removed

    def collect(self, max_bytes: int | None = None, grace: float = GRACE_SECONDS, keep: tuple[str, ...] = (),
                temp_grace: float = TEMP_GRACE_SECONDS) -> GcReport:
        """Repair the index and bound the cache's size.

        - ``.trash-*`` directories, and ``.tmp-*`` ones untouched for ``min(temp_grace, grace)``
          seconds (crashed saves), are deleted; counted, with the bytes freed;
        - index rows whose directory vanished are dropped;
        - key directories no row knows about and older than ``grace``: re-indexed if they hold a
          complete, valid cache, else deleted; files or symlinks under a key name are unlinked;
        - an entry we may not read (permissions) is reported in ``problems`` and left alone;
        - with ``max_bytes`` (else ``self.max_bytes``): least recently used documents (directories
          and rows) are deleted until the total fits; ``keep`` lists keys never evicted.
        """
        limit = max_bytes if max_bytes is not None else self.max_bytes
        temp_grace = min(temp_grace, grace)
        now = time.time()
        report = GcReport()
        with self._lock:
            try:
                listing = list(self.documents.iterdir())
            except FileNotFoundError:
                listing = []
            for p in listing:
                if p.name.startswith(TRASH_PREFIX) or (p.name.startswith(TMP_PREFIX)
                                                       and now - newest_mtime(p) > temp_grace):
                    size = tree_size(p)
                    problems = remove_tree(p)
                    if problems:
                        report.problems += problems
                    else:
                        report.temp_dirs += 1
                        report.bytes_freed += size
                elif KEY_RE.match(p.name) and not is_real_dir(p) and os.path.lexists(p):
                    discard_dir(p)  # a file or symlink under a key name: unlinked, never followed
                    report.removed.append(p.name)
            known = set()
            for key in self._keys():
                if self._row(key) is None or not (self.documents / key / MANIFEST).is_file():
                    self._db("delete", key)
                else:
                    known.add(key)
            for p in self._key_dirs():
                if p.name in known:
                    continue
                if now - newest_mtime(p) <= grace:
                    continue
                try:
                    manifest = check_entry(p)
                except CacheAccessError as exc:
                    report.problems.append(str(exc))
                    continue
                except CacheError:
                    manifest = None
                if manifest is not None and manifest.key == p.name:
                    self._record(p.name, created=manifest.created, last_used=newest_mtime(p))
                    report.reindexed.append(p.name)
                else:
                    size = tree_size(p)
                    if discard_dir(p):
                        report.removed.append(p.name)
                        report.bytes_freed += size
            if limit is not None:
                rows = [(k, self._row(k)) for k in self._keys()]
                rows = [(k, r) for k, r in rows if r is not None]
                total = sum(int(r["size"]) for _, r in rows)
                for key, row in sorted(rows, key=lambda kr: kr[1]["last_used"]):
                    if total <= limit:
                        break
                    if key in keep:
                        continue
                    self._db("delete", key)
                    discard_dir(self.documents / key)
                    total -= int(row["size"])
                    report.bytes_freed += int(row["size"])
                    report.removed.append(key)
        return report
