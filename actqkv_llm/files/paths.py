"""Where caches live, and the small filesystem primitives the document cache (persist's writer,
reader and index), the model cache and the resident server share: owner-only directories, bounded
reads of regular files only, fsync of files and directories, sizes, containment checks, removal by
rename-then-delete.

Light on purpose (no torch): the command line imports it to validate options."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from pathlib import Path

from ..errors import CacheAccessError, CacheError, ConfigError

ENV_ROOT = "ACTQKV_CACHE_DIR"
ENV_MAX_BYTES = "ACTQKV_CACHE_MAX_BYTES"
DOCUMENTS = "documents"            # <root>/documents/<key>/  one directory per cached document
INDEX = "document-index"           # <root>/document-index/    the diskcache (SQLite) index
TMP_PREFIX = ".tmp-"               # a save in progress (or one that crashed): never read
TRASH_PREFIX = ".trash-"           # a directory being deleted: never read
# os.open flags of every read of a cache file: never follow a symlink, never block on a FIFO.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
# Largest safetensors header a blocks file may announce (ours are a few KiB).
MAX_HEADER_BYTES = 16 << 20
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_cache_root() -> Path:
    """``$ACTQKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/actqkv``, else ``~/.cache/actqkv``.

    The same rule as :func:`actqkv_llm.models.cache_dir.model_cache_root` (models live under
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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, expected: int | None = None) -> tuple[int, int]:
    """``(fd, size)`` of ``path`` opened read-only, which must be a regular file (a symlink, FIFO,
    device or directory is refused without blocking) of exactly ``expected`` bytes when given.
    Errors are :class:`CacheError` naming the file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise CacheError(f"{path} is missing: the document cache is incomplete; prefill the document "
                         "again") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise CacheError(f"{path} is a symbolic link: cache files must be regular files") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CacheAccessError(f"cannot read {path}: permission denied (fix its permissions; "
                                   "the cache entry is left as it is)") from None
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheError(f"{path} is {_kind(st.st_mode)}: cache files must be regular files")
        if expected is not None and st.st_size != expected:
            raise CacheError(f"{path} is truncated or damaged: {st.st_size} bytes, the manifest says "
                             f"{expected}; prefill the document again")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def check_size(path: Path, expected: int) -> None:
    """``path`` is a regular file of exactly ``expected`` bytes (else CacheError naming it)."""
    os.close(open_regular(path, expected)[0])


def read_fd(fd: int, n: int, offset: int, path: Path) -> bytes:
    """Exactly ``n`` bytes at ``offset`` (CacheError naming ``path`` when the file ends early).

    ``os.pread`` reads into the ``bytes`` it returns: no zero-filled buffer first and no copy
    after (the state file of a 128K-token document is ~0.6 GiB, read whole to verify it; the
    buffer and its copy were 40% of a reload's load time, 2-core CPU). A short read (rare on a
    regular file) continues where it stopped; its pieces are joined once."""
    pieces, done = [], 0
    try:
        while done < n:
            got = os.pread(fd, n - done, offset + done)
            if not got:
                raise CacheError(f"{path} is truncated: it ends at byte {offset + done}, "
                                 f"{n - done} byte(s) short")
            pieces.append(got)
            done += len(got)
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def read_regular(path: Path, limit: int, expected: int | None = None) -> bytes:
    """The whole content of regular file ``path``: at most ``limit`` bytes, exactly ``expected``
    when given (else CacheError naming the file and the sizes)."""
    fd, size = open_regular(path, expected)
    try:
        if size > limit:
            raise CacheError(f"{path} is too large ({size} bytes, at most {limit} expected)")
        return read_fd(fd, size, 0, path)
    finally:
        os.close(fd)


def is_real_dir(path: Path) -> bool:
    """A directory that is not a symlink (``lstat``)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def inside(root: Path, path: Path) -> bool:
    """True when ``path``, fully resolved, lies strictly inside ``root`` (resolved)."""
    try:
        real_root, real = Path(root).resolve(), Path(path).resolve()
    except (OSError, RuntimeError):
        return False
    return real != real_root and real.is_relative_to(real_root)


def newest_mtime(path: Path) -> float:
    """The latest mtime of ``path`` and the entries directly in it (a save in progress keeps
    touching its files; the directory's own mtime stops changing once they exist)."""
    try:
        newest = os.lstat(path).st_mtime
    except OSError:
        return time.time()
    try:
        with os.scandir(path) as it:
            for entry in it:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    pass
    except OSError:
        pass
    return newest


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed; unreadable parts skipped)."""
    total = 0
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


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


def remove_tree(path: Path) -> list[str]:
    """Delete ``path`` (a symlink is unlinked, never followed); directories we own but cannot list
    (mode 000) are made owner-accessible first. Returns the problems left (empty: all gone)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return [f"cannot remove {path}: {exc.strerror or exc}"]
        return []
    problems: list[str] = []

    def retry(func, p, exc_info):
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        try:  # our own directory without rwx for us (e.g. chmod 000): restore it, try again
            parent = os.path.dirname(p)
            for d in (parent, p):
                st = os.lstat(d)
                if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                    os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
            if func is os.rmdir or func is os.unlink:
                func(p)
            else:
                shutil.rmtree(p, onerror=lambda f, q, e: problems.append(f"cannot remove {q}: {e[1]}"))
        except OSError as again:
            problems.append(f"cannot remove {p}: {again.strerror or again}")

    shutil.rmtree(path, onerror=retry)
    return problems


def discard_dir(path: Path) -> bool:
    """Remove a directory: first renamed aside (so a half-deleted one never looks complete). A
    symlink is unlinked, never followed. True when something was removed."""
    path = Path(path)
    if not os.path.lexists(path):
        return False
    if path.is_symlink():
        return not remove_tree(path)
    trash = sibling(path, TRASH_PREFIX)
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return False
    except OSError:
        trash = path  # cannot rename (e.g. busy): delete in place
    remove_tree(trash)
    return True
