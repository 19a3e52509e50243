"""Where caches live, and the small filesystem primitives the writer and the index share:
owner-only directories, fsync of files and directories, sizes, removal by rename-then-delete."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ..errors import ConfigError

ENV_ROOT = "ACTQKV_CACHE_DIR"
ENV_MAX_BYTES = "ACTQKV_CACHE_MAX_BYTES"
DOCUMENTS = "documents"            # <root>/documents/<key>/  one directory per cached document
INDEX = "document-index"           # <root>/document-index/    the diskcache (SQLite) index
TMP_PREFIX = ".tmp-"               # a save in progress (or one that crashed): never read
TRASH_PREFIX = ".trash-"           # a directory being deleted: never read
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_cache_root() -> Path:
    """``$ACTQKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/actqkv``, else ``~/.cache/actqkv``.

    The same rule as :func:`actqkv_llm.models.loading.model_cache_root` (models live under
    ``<root>/models``, documents under ``<root>/documents``). Nothing is created here.
    """
    if os.environ.get(ENV_ROOT):
        root = Path(os.environ[ENV_ROOT])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "actqkv"
    else:
        root = Path.home() / ".cache" / "actqkv"
    return root.expanduser()


def private_dir(path: Path) -> Path:
    """``mkdir -p`` whose new directories are owner-only (0o700, chmod'ed past the umask)."""
    path = Path(path)
    if path.is_dir():
        return path
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            if not d.is_dir():
                raise
        else:
            os.chmod(d, 0o700)
    return path


def parse_size(text: str | int | None) -> int | None:
    """``1048576``, ``500M``, ``2GiB``, ``2g`` -> bytes (None passes through)."""
    if text is None or isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1] if s and s[-1] in "KMGT" else ""
    number = s[:-1].strip() if unit else s
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise ConfigError(f"{text!r} is not a size: give bytes, or a number with K, M, G or T") from None
    if value < 0:
        raise ConfigError(f"a cache size limit cannot be negative: {text!r}")
    return int(value)


def env_max_bytes() -> int | None:
    raw = os.environ.get(ENV_MAX_BYTES, "").strip()
    if not raw:
        return None
    try:
        return parse_size(raw)
    except ConfigError as exc:
        raise ConfigError(f"${ENV_MAX_BYTES}: {exc}") from None


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dir_size(path: Path) -> int:
    total = 0
    try:
        for entry in os.scandir(path):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def sibling(target: Path, prefix: str) -> Path:
    """A fresh hidden name next to ``target`` (same filesystem, so ``rename`` is atomic)."""
    return target.parent / f"{prefix}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"


def discard_dir(path: Path) -> bool:
    """Remove a directory: first renamed aside (so a half-deleted one never looks complete)."""
    path = Path(path)
    if not path.exists():
        return False
    trash = sibling(path, TRASH_PREFIX)
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    except OSError:
        trash = path  # cannot rename (e.g. busy): delete in place
    shutil.rmtree(trash, ignore_errors=True)
    return True
