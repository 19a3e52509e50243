"""Save/load throughput of the document cache, next to the disk's raw speed measured in the same run.

    disk = measure_disk_speed(tmp_dir, 256 << 20)   # write+fsync, then read back (page cache dropped)
    row = time_save_load(engine, doc, tmp_dir)       # save, load (validate + state), read every block

Both return plain dicts of numbers (seconds, bytes, MB/s) for the benchmark CLI to print or plot.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .format import BLOCKS, MANIFEST, STATE
from .paths import dir_size

MB = 1 << 20
_CHUNK = 8 * MB


def drop_page_cache(path: str | Path) -> bool:
    """Ask the OS to forget the cached pages of ``path`` (so the next read hits the disk).

    Uses ``posix_fadvise(DONTNEED)`` (no privileges needed; clean pages only, so fsync first).
    Returns False where that is not available (then reads may be served from memory)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def measure_disk_speed(directory: str | Path, n_bytes: int = 256 * MB) -> dict[str, Any]:
    """Raw sequential speed of the disk holding ``directory``: write ``n_bytes`` and fsync, then
    read them back after dropping the file from the page cache. The file is removed afterwards."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(_CHUNK, max(1, n_bytes)))
    fd, name = tempfile.mkstemp(prefix=".actqkv-diskspeed-", dir=directory)
    try:
        t0 = time.perf_counter()
        left = n_bytes
        while left > 0:
            n = os.write(fd, block[: min(left, len(block))])
            left -= n
        os.fsync(fd)
        write_s = time.perf_counter() - t0
        os.close(fd)
        fd = -1
        cold = drop_page_cache(name)
        t0 = time.perf_counter()
        with open(name, "rb", buffering=0) as f:
            while f.read(_CHUNK):
                pass
        read_s = time.perf_counter() - t0
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(name)
    return {"bytes": n_bytes, "write_s": write_s, "read_s": read_s,
            "write_MBps": n_bytes / MB / max(write_s, 1e-9), "read_MBps": n_bytes / MB / max(read_s, 1e-9),
            "read_cold": cold}


def read_every_block(doc: Any) -> int:
    """Read (and verify) every full block of a reloaded document from its file; returns bytes read."""
    total = 0
    for mem in doc.state.memory:
        blocks = mem.blocks
        if hasattr(blocks, "read_range") and blocks.n_blocks:
            step = max(1, (64 * MB) // max(1, blocks.block_bytes))
            for a in range(0, blocks.n_blocks, step):
                k, v = blocks.read_range(a, min(blocks.n_blocks, a + step))
                total += k.numel() * k.element_size() + v.numel() * v.element_size()
    return total


def time_save_load(engine: Any, doc: Any, directory: str | Path | None = None, cold: bool = True,
                   keep: bool = False) -> dict[str, Any]:
    """Save ``doc`` to a fresh directory, load it back and read every block.

    Returns seconds and MB/s for: ``save`` (atomic, fsynced, checksummed), ``load`` (manifest and
    state validated, state on the device, blocks file opened), ``read_blocks`` (every block read
    and sha256-verified, as retrieval would); with ``cold`` the page cache is dropped before the
    load so the reads come from the disk.
    """
    from . import load_document, save_document

    base = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="actqkv-bench-"))
    target = base / f"bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        t0 = time.perf_counter()
        path = save_document(doc, target)
        save_s = time.perf_counter() - t0
        size = dir_size(path)
        blocks_bytes = (path / BLOCKS).stat().st_size
        state_bytes = (path / STATE).stat().st_size
        dropped = all(drop_page_cache(path / n) for n in (MANIFEST, STATE, BLOCKS)) if cold else False
        t0 = time.perf_counter()
        loaded = load_document(engine, path)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        read = read_every_block(loaded)
        read_s = time.perf_counter() - t0
        del loaded
        return {"bytes": size, "state_bytes": state_bytes, "blocks_bytes": blocks_bytes, "tokens": doc.n_tokens,
                "save_s": save_s, "save_MBps": size / MB / max(save_s, 1e-9),
                "load_s": load_s, "load_state_MBps": state_bytes / MB / max(load_s, 1e-9),
                "read_blocks_s": read_s, "read_blocks_MBps": read / MB / max(read_s, 1e-9),
                "cold": dropped, "path": str(path) if keep else None}
    finally:
        if not keep:
            shutil.rmtree(target, ignore_errors=True)
            if directory is None:
                shutil.rmtree(base, ignore_errors=True)
