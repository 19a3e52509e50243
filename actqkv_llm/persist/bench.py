"""Disk-speed helpers for the speed benchmark: the disk's raw speed, and reading a reloaded document back.

    disk = measure_disk_speed(tmp_dir, 256 << 20)   # write+fsync, then read back (page cache dropped)
    n = read_every_block(doc)                       # every block of a reloaded document, verified

``actqkv bench speed`` times save, load and these reads and reports them next to the disk's speed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any


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


def bytes_read_from_disk(doc: Any) -> int:
    """Bytes of KV a reloaded document has read from its file so far (keys and values, prefetch
    included): what a first question after a cold reload waited for."""
    files = {id(m.blocks.file): m.blocks.file for m in doc.state.memory if hasattr(m.blocks, "file")}
    return sum(f.bytes_read for f in files.values())


def read_every_block(doc: Any) -> int:
    """Read (and verify) every full block of a reloaded document from its file; returns the bytes
    read from disk (as stored, e.g. bf16, whatever the compute dtype)."""
    total = 0
    for mem in doc.state.memory:
        blocks = mem.blocks
        if hasattr(blocks, "read_range") and blocks.n_blocks:
            step = max(1, (64 * MB) // max(1, blocks.block_bytes))
            for a in range(0, blocks.n_blocks, step):
                b = min(blocks.n_blocks, a + step)
                blocks.read_range(a, b)
                total += (b - a) * blocks.block_bytes
    return total
