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
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from ..errors import CacheAccessError, CacheError
from .format import (BLOCKS, DEFAULT_KV_DTYPE, DIGEST_BYTES, FORMAT_NAME, FORMAT_VERSION, KV_DTYPES, MANIFEST,
                     MAX_MANIFEST_BYTES, ST_DTYPES, STATE, TORCH_DTYPES, FileEntry, Manifest, dtype_name,
                     engine_key, sha256_cache_file, sha256_ids, sha256_text)
from ..files.paths import (TMP_PREFIX, TRASH_PREFIX, check_size, fsync_dir, is_real_dir, private_dir, read_regular, remove_tree,
                    sibling)
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
    """One digest per block and KV head of ``[m, Hkv, B, d]``, block by block, heads in order."""
    rows = t.contiguous().view(torch.uint8).reshape(t.shape[0] * t.shape[1], -1).numpy()
    return [hashlib.sha256(rows[j]).digest()[:DIGEST_BYTES] for j in range(rows.shape[0])]


def kv_storage_dtype(kv_dtype: str | torch.dtype | None, compute: torch.dtype) -> torch.dtype:
    """The dtype KV is stored in: ``None`` -> bf16 (the default), ``"compute"`` -> the compute dtype."""
    if kv_dtype is None:
        return TORCH_DTYPES[DEFAULT_KV_DTYPE]
    if kv_dtype == "compute":
        return compute
    name = dtype_name(kv_dtype) if isinstance(kv_dtype, torch.dtype) else str(kv_dtype)
    if name not in KV_DTYPES:
        raise CacheError(f"kv_dtype must be one of {KV_DTYPES} or 'compute', got {kv_dtype!r}")
    return TORCH_DTYPES[name]


def write_blocks(doc: Any, path: Path, key: str, dtype: torch.dtype) -> tuple[FileEntry, list[int], dict[str, torch.Tensor]]:
    """``blocks.safetensors`` in ``dtype``; returns its entry, blocks per layer, and per-unit
    digests (``layers.{i}.block_sha256``: uint8 ``[n, Hkv, 2, 16]``, the first 128 bits of the
    sha256 of one KV head of a block, its keys then its values, as stored) for the state file."""
    adapter = doc.engine.adapter
    shape = (adapter.n_kv_heads, doc.engine.config.block_size, adapter.head_dim)
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
            hkv = shape[0]
            if len(dk) != n * hkv or len(dv) != n * hkv:
                raise CacheError(f"layer {i}: expected {n} blocks, read {len(dk) // hkv}/{len(dv) // hkv} "
                                 "(internal error)")
            raw = b"".join(a + b for a, b in zip(dk, dv))
            digests[layer_name(i, "block_sha256")] = torch.frombuffer(
                bytearray(raw), dtype=torch.uint8).reshape(n, hkv, 2, DIGEST_BYTES)
        entry = stream.close()
    except BaseException:
        stream.abort()
        raise
    finally:
        pool.shutdown(wait=True)
    return entry, n_blocks, digests


def build_files(doc: Any, directory: Path, key: str, kv_dtype: str | torch.dtype | None = None) -> Manifest:
    """Write blocks, state, then the manifest into ``directory`` (which must be new and empty)."""
    from .. import __version__

    eng = doc.engine
    stored = kv_storage_dtype(kv_dtype, eng.dtype)
    blocks_entry, n_blocks, digests = write_blocks(doc, directory / BLOCKS, key, stored)
    state = pack_state(doc, stored)
    state.update(digests)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "content": "state", "key": key}
    state_entry = write_file(directory / STATE, st_save(state, metadata=meta))
    manifest = Manifest(
        key=key, fingerprint=eng.fingerprint, kv_options=eng.config.kv_options(), layout=doc.layout,
        n_tokens=doc.n_tokens, text_sha256=sha256_text(doc.text), token_ids_sha256=sha256_ids(doc.token_ids),
        dtype=dtype_name(eng.dtype), kv_dtype=dtype_name(stored), n_layers=eng.adapter.n_layers, kv_heads=eng.adapter.n_kv_heads,
        head_dim=eng.adapter.head_dim, block_size=eng.config.block_size, n_blocks=n_blocks,
        files={STATE: state_entry, BLOCKS: blocks_entry}, created_by=f"actqkv_llm {__version__}")
    write_file(directory / MANIFEST, manifest.to_json().encode())
    fsync_dir(directory)
    return manifest


def quick_check(directory: Path) -> Manifest | None:
    """The manifest of a cache directory if it looks complete and sound (manifest valid, both
    tensor files regular and of the recorded size, state checksum right), else None.
    :class:`CacheAccessError` (permissions) is raised, not hidden: unreadable is not damaged."""
    try:
        return check_entry(directory)
    except CacheAccessError:
        raise
    except CacheError:
        return None


def check_entry(directory: Path) -> Manifest:
    """Like :func:`quick_check`, raising the CacheError that says what is wrong."""
    if not is_real_dir(directory):
        raise CacheError(f"{directory} is not a directory (or is a symbolic link)")
    manifest = Manifest.read(directory)
    for name, entry in manifest.files.items():
        if name == STATE:
            if sha256_cache_file(directory / name, entry.bytes) != entry.sha256:
                raise CacheError(f"{directory / name} is corrupt (sha256 mismatch)")
        else:
            check_size(directory / name, entry.bytes)
    return manifest


def _same_document(a: Manifest, b: Manifest) -> bool:
    return (a.key, a.text_sha256, a.token_ids_sha256, a.format_version) == \
           (b.key, b.text_sha256, b.token_ids_sha256, b.format_version)


def owned_by_us(directory: Path) -> bool:
    """True if ``directory`` is empty, or holds nothing but cache files and a manifest.json that
    carries our marker (``"format": "actqkv-document"``): a directory ``save`` may replace."""
    try:
        names = set(os.listdir(directory))
    except OSError:
        return False
    if not names:
        return True
    if not names <= CACHE_FILES or MANIFEST not in names:
        return False
    try:
        data = json.loads(read_regular(directory / MANIFEST, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (CacheError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def publish(tmp: Path, target: Path, manifest: Manifest, owned: bool = False) -> Path:
    """Rename ``tmp`` to ``target``; if the target appeared meanwhile keep it when it is a valid
    cache of the same document, else replace it: only when it is empty or ours (our marker in its
    manifest), or ``owned`` (a key directory of our own cache root)."""
    for _ in range(8):
        try:
            os.rename(tmp, target)
            fsync_dir(target.parent)
            return target
        except OSError as exc:
            if exc.errno not in _EXISTS:
                raise
        if not is_real_dir(target):
            raise CacheError(f"cannot save the document to {target}: it exists and is not a directory")
        existing = quick_check(target)
        if existing is not None and _same_document(existing, manifest):
            remove_tree(tmp)  # someone else saved the same document first
            return target
        if not owned and not owned_by_us(target):
            raise CacheError(f"refusing to overwrite {target}: it exists and is not an actqkv document "
                             "cache (save into an empty or new directory)")
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
            remove_tree(trash)
        fsync_dir(target.parent)
        return target
    raise CacheError(f"could not publish the document cache at {target}: it kept changing under us")


def save_to(doc: Any, target: str | Path, key: str | None = None, owned: bool = False,
            kv_dtype: str | torch.dtype | None = None) -> tuple[Path, Manifest]:
    """Save ``doc`` atomically as directory ``target``; returns (path, manifest).

    ``target`` must not exist, be empty, or be a document cache we wrote (its manifest carries
    our marker); ``owned=True`` (the cache root's own key directories) lifts that rule. KV is
    stored as ``kv_dtype`` (default bf16; ``"compute"``: the engine's dtype)."""
    target = Path(target).expanduser().absolute()
    key = key or doc_key(doc)
    if os.path.lexists(target) and not is_real_dir(target):
        raise CacheError(f"cannot save the document to {target}: it exists and is not a directory")
    try:
        existing = quick_check(target) if is_real_dir(target) else None
    except CacheAccessError as exc:
        raise CacheError(f"cannot save the document to {target}: {exc}") from None
    if existing is not None and existing.key == key and existing.token_ids_sha256 == sha256_ids(doc.token_ids) \
            and existing.format_version == FORMAT_VERSION:
        return target, existing  # already there (same model, options and content)
    if existing is None and not owned and is_real_dir(target) and not owned_by_us(target):
        raise CacheError(f"refusing to overwrite {target}: it exists and is not an actqkv document cache "
                         "(save into an empty or new directory)")
    tmp = sibling(target, TMP_PREFIX)
    try:
        private_dir(target.parent)
        tmp.mkdir(mode=0o700)
        os.chmod(tmp, 0o700)
        manifest = build_files(doc, tmp, key, kv_dtype)
        return publish(tmp, target, manifest, owned), manifest
    except OSError as exc:
        remove_tree(tmp)
        raise CacheError(f"could not save the document to {target}: {exc.strerror or exc}"
                         + (" (the disk is full)" if exc.errno == errno.ENOSPC else "")) from exc
    except BaseException:
        remove_tree(tmp)
        raise


def doc_key(doc: Any) -> str:
    return doc.key or engine_key(doc.engine, doc.text, doc.layout, doc.token_ids)
