"""The per-user cache directory and the content hashes memoized in it: where converted models,
GGUFs assembled from chunk packages and document caches live (one rule for all of them), and the
sha256 of large files remembered by (path, size, mtime, inode) so a load only stats them."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..files.digest import sha256_file, sha256_text
from ..files.paths import default_cache_root, private_dir

MEMO_MIN_BYTES = 1 << 20  # smaller files are hashed directly, without a memo entry


def model_cache_root(cache_dir: str | Path | None = None) -> Path:
    """This library's per-user cache directory, created owner-only (0o700) if it does not exist.

    ``cache_dir`` if given, else :func:`~actqkv_llm.files.paths.default_cache_root`
    (``$ACTQKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/actqkv``, else ``~/.cache/actqkv``: the documents'
    rule too). An existing directory's permissions are left as they are.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return private_dir(root)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary sibling + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path, root: Path) -> str:
    """sha256 of a file's content, memoized in ``root/hashes/`` by (path, size, mtime, inode)."""
    st = path.stat()
    if st.st_size < MEMO_MIN_BYTES:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    memo = _hash_memo(path, st, root)
    try:
        digest = json.loads(memo.read_text())["sha256"]
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    remember_sha256(path, digest, root)
    return digest


def _hash_memo(path: Path, st: os.stat_result, root: Path) -> Path:
    key = sha256_text(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
    return private_dir(root / "hashes") / f"{key[:32]}.json"


def remember_sha256(path: Path, digest: str, root: Path) -> None:
    """Record the sha256 of a file just written and hashed (so its first use does not hash it again)."""
    st = path.stat()
    if st.st_size >= MEMO_MIN_BYTES:
        write_json(_hash_memo(path, st, root), {"sha256": digest, "path": str(path.resolve()),
                                                 "size": st.st_size, "mtime_ns": st.st_mtime_ns})
