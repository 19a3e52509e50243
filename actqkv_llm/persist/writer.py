"""Atomic save of one document: write everything into a hidden temporary directory next to the
target, fsync the files and the directory, then publish it with one ``rename``.

A crash or a full disk mid-save leaves at most a ``.tmp-*`` directory (never read, removed by
``gc``); the target either does not exist or is a complete, valid cache. Two processes saving
the same document at once both succeed: the loser of the rename finds a valid cache of the same
content at the target and discards its own copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from ..errors import CacheError
from .format import (BLOCKS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, ST_DTYPES, STATE, FileEntry, Manifest,
                     dtype_name, engine_key, sha256_file, sha256_ids, sha256_text)
from .paths import TMP_PREFIX, TRASH_PREFIX, fsync_dir, private_dir, sibling
from .state import block_chunks, block_names, layer_name, pack_state

CACHE_FILES = frozenset({MANIFEST, STATE, BLOCKS})
# Threads hashing blocks while saving (besides the one hashing the whole file).
HASH_WORKERS = 4
_EXISTS = {errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR}


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor (no copy)."""
    return t.contiguous().view(torch.uint8).reshape(-1).numpy().data


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _open_new(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)


def write_file(path: Path, data: bytes) -> FileEntry:
    """Write ``data`` to a new file and fsync it."""
    fd = _open_new(path)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return FileEntry(len(data), hashlib.sha256(data).hexdigest())


class SafetensorsStream:
    """A safetensors file written tensor piece by tensor piece (the format: an 8-byte little-endian
    header length, a JSON header padded with spaces to 8 bytes, then the raw data), hashed as it
    goes. Lets a document larger than host memory be saved in bounded chunks."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]):
        if sys.byteorder != "little":  # safetensors is little-endian; we write raw memory
            raise CacheError("saving document caches needs a little-endian machine")
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        self._sizes: list[int] = []
        for name, dtype, shape in specs:
            n = 1
            for s in shape:
                n *= s
            size = n * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._sizes.append(size)
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path, self.data_bytes = path, offset
        self._hash = hashlib.sha256()
        self._fd = _open_new(path)
        self._written = 0
        self._put(struct.pack("<Q", len(raw)) + raw)
        self.header_bytes = 8 + len(raw)

    def _put(self, data: memoryview | bytes) -> None:
        self._hash.update(data)
        _write_all(self._fd, data)

    def write(self, t: torch.Tensor, pool: ThreadPoolExecutor | None = None) -> None:
        """Append a tensor's bytes; with ``pool`` the file hash runs beside the write (both release the GIL)."""
        data = _bytes_of(t)
        self._written += len(data)
        if self._written > self.data_bytes:
            raise CacheError(f"{self.path}: more data than the header announced (internal error)")
        if pool is None:
            self._put(data)
            return
        hashing = pool.submit(self._hash.update, data)
        try:
            _write_all(self._fd, data)
        finally:
            hashing.result()

    def close(self) -> FileEntry:
        try:
            if self._written != self.data_bytes:
                raise CacheError(f"{self.path}: wrote {self._written} of {self.data_bytes} bytes (internal error)")
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
        return FileEntry(self.header_bytes + self.data_bytes, self._hash.hexdigest())

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def _block_digests(t: torch.Tensor) -> list[bytes]:
    rows = t.contiguous().view(torch.uint8).reshape(t.shape[0], -1).numpy()
    return [hashlib.sha256(rows[j]).digest() for j in range(rows.shape[0])]


def write_blocks(doc: Any, path: Path, key: str) -> tuple[FileEntry, list[int], dict[str, torch.Tensor]]:
    """``blocks.safetensors``; returns its entry, blocks per layer, and per-block sha256 digests
    (``layers.{i}.block_sha256``: uint8 ``[n, 2, 32]``, keys then values) for the state file."""
    adapter = doc.engine.adapter
    shape = (adapter.n_kv_heads, doc.engine.config.block_size, adapter.head_dim)
    dtype = adapter.dtype
    memory = doc.state.memory
    n_blocks = [m.n_blocks for m in memory]
    specs = []
    for i, n in enumerate(n_blocks):
        if n:
            kn, vn = block_names(i)
            specs += [(kn, dtype, (n, *shape)), (vn, dtype, (n, *shape))]
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "content": "blocks", "key": key}
    stream = SafetensorsStream(path, specs, meta)
    digests: dict[str, torch.Tensor] = {}
    # per chunk, at once: the write, the file's sha256 and the per-block sha256s (split over a
    # few threads; hashlib and os.write release the GIL)
    workers = max(1, min(HASH_WORKERS, (os.cpu_count() or 2) - 1))
    pool = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="actqkv-save")

    def put(t: torch.Tensor, out: list[bytes]) -> None:
        t = t.to(dtype)
        step = -(-t.shape[0] // workers)
        parts = [pool.submit(_block_digests, t[a:a + step]) for a in range(0, t.shape[0], step)]
        stream.write(t, pool)
        for part in parts:
            out += part.result()

    try:
        for i, n in enumerate(n_blocks):
            if not n:
                continue
            # keys first (one contiguous tensor), then values; one chunk on the host at a time
            dk: list[bytes] = []
            for k in block_chunks(memory[i].blocks, 0):
                put(k, dk)
            dv: list[bytes] = []
            for v in block_chunks(memory[i].blocks, 1):
                put(v, dv)
            if len(dk) != n or len(dv) != n:
                raise CacheError(f"layer {i}: expected {n} blocks, read {len(dk)}/{len(dv)} (internal error)")
            raw = b"".join(a + b for a, b in zip(dk, dv))
            digests[layer_name(i, "block_sha256")] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(n, 2, 32)
        entry = stream.close()
    except BaseException:
        stream.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    return entry, n_blocks, digests


def build_files(doc: Any, directory: Path, key: str) -> Manifest:
    """Write blocks, state, then the manifest into ``directory`` (which must be new and empty)."""
    from .. import __version__

    eng = doc.engine
    blocks_entry, n_blocks, digests = write_blocks(doc, directory / BLOCKS, key)
    state = pack_state(doc)
    state.update(digests)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "content": "state", "key": key}
    state_entry = write_file(directory / STATE, st_save(state, metadata=meta))
    manifest = Manifest(
        key=key, fingerprint=eng.fingerprint, kv_options=eng.config.kv_options(), layout=doc.layout,
        n_tokens=doc.n_tokens, text_sha256=sha256_text(doc.text), token_ids_sha256=sha256_ids(doc.token_ids),
        dtype=dtype_name(eng.dtype), n_layers=eng.adapter.n_layers, kv_heads=eng.adapter.n_kv_heads,
        head_dim=eng.adapter.head_dim, block_size=eng.config.block_size, n_blocks=n_blocks,
        files={STATE: state_entry, BLOCKS: blocks_entry}, created_by=f"actqkv_llm {__version__}")
    write_file(directory / MANIFEST, manifest.to_json().encode())
    fsync_dir(directory)
    return manifest


def quick_check(directory: Path) -> Manifest | None:
    """The manifest of a cache directory if it looks complete and sound (manifest valid, both
    tensor files of the recorded size, state checksum right), else None. Never raises CacheError."""
    try:
        manifest = Manifest.read(directory)
        for name, entry in manifest.files.items():
            if os.path.getsize(directory / name) != entry.bytes:
                return None
        if sha256_file(directory / STATE) != manifest.files[STATE].sha256:
            return None
        return manifest
    except (CacheError, OSError):
        return None


def _same_document(a: Manifest, b: Manifest) -> bool:
    return (a.key, a.text_sha256, a.token_ids_sha256, a.format_version) == \
           (b.key, b.text_sha256, b.token_ids_sha256, b.format_version)


def _looks_like_cache(directory: Path) -> bool:
    """True if ``directory`` holds nothing but (part of) a document cache: safe to replace."""
    try:
        names = set(os.listdir(directory))
    except OSError:
        return False
    return names <= CACHE_FILES


def publish(tmp: Path, target: Path, manifest: Manifest) -> Path:
    """Rename ``tmp`` to ``target``; if the target appeared meanwhile keep it when it is a valid
    cache of the same document, else replace it (only if it is a cache directory)."""
    for _ in range(8):
        try:
            os.rename(tmp, target)
            fsync_dir(target.parent)
            return target
        except OSError as exc:
            if exc.errno not in _EXISTS:
                raise
        if not target.is_dir():
            raise CacheError(f"cannot save the document to {target}: it exists and is not a directory")
        existing = quick_check(target)
        if existing is not None and _same_document(existing, manifest):
            shutil.rmtree(tmp, ignore_errors=True)  # someone else saved the same document first
            return target
        if existing is None and not _looks_like_cache(target):
            raise CacheError(f"refusing to overwrite {target}: it exists and is not an actqkv document "
                             "cache (choose another path)")
        trash = sibling(target, TRASH_PREFIX)
        try:
            os.rename(target, trash)
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno not in _EXISTS:
                raise
            continue
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(target.parent)
        return target
    raise CacheError(f"could not publish the document cache at {target}: it kept changing under us")


def save_to(doc: Any, target: str | Path, key: str | None = None) -> tuple[Path, Manifest]:
    """Save ``doc`` atomically as directory ``target``; returns (path, manifest)."""
    target = Path(target).expanduser().absolute()
    key = key or doc_key(doc)
    existing = quick_check(target) if target.is_dir() else None
    if existing is not None and existing.key == key and existing.token_ids_sha256 == sha256_ids(doc.token_ids) \
            and existing.format_version == FORMAT_VERSION:
        return target, existing  # already there (same model, options and content)
    private_dir(target.parent)
    tmp = sibling(target, TMP_PREFIX)
    try:
        tmp.mkdir(mode=0o700)
        os.chmod(tmp, 0o700)
        manifest = build_files(doc, tmp, key)
        return publish(tmp, target, manifest), manifest
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"could not save the document to {target}: {exc.strerror or exc}"
                         + (" (the disk is full)" if exc.errno == errno.ENOSPC else "")) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def doc_key(doc: Any) -> str:
    return doc.key or engine_key(doc.engine, doc.text, doc.layout, doc.token_ids)
