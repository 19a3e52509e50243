"""Load a cached document: validate the manifest first, then the small state (size and sha256
always), then open the big blocks file memory-mapped and read its blocks on demand.

Every block read from ``blocks.safetensors`` is checked against its own sha256 (kept in the
already verified state file), so a corrupted block raises :class:`CacheError` when it is read and
can never silently feed an answer. The whole-file sha256 of the blocks file is checked only with
``verify="full"`` (it would read the entire file up front, defeating lazy loading).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from ..document import Document
from ..errors import CacheError
from ..memory import DeviceBlockCache, GrowableBlocks
from .format import (BLOCK_CHECKSUMS, BLOCKS, DIGEST_BYTES, MANIFEST, ST_DTYPES, STATE, TORCH_DTYPES, Manifest, check_compatible,
                     sha256_cache_file, sha256_ids, sha256_text)
from ..files.paths import MAX_HEADER_BYTES, check_size, is_real_dir, open_regular, read_fd, read_regular
from .state import ID_DTYPES, block_names, layer_name, unpack_state

VERIFY_MODES = ("blocks", "full")
# Blocks read past a requested run (they usually come next) and kept verified on the host.
PREFETCH_BLOCKS = 1
# Requested blocks separated by at most this many others are read as one contiguous run.
MAX_GAP = 1
# Prefetched blocks kept per layer until asked for.
PREFETCH_BUFFER = 32
# Read hints (posix_fadvise) where the platform has them (Linux, most Unix; not macOS or Windows).
_WILLNEED = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_WILLNEED")
# Runs of blocks read at once (positioned reads in parallel hide a cold disk's latency); format 4
# reads a request's runs in at most this many batches, one thread each, and never in more than
# the CPUs this process may run on: each batch also hashes its units, and on a 2-core machine 16
# threads read the rerank's scattered candidates at half the speed of 2 from the page cache (433
# against 856 MiB/s) and slower from a cold disk too (226 against 263 MiB/s; docs/benchmarks.md).
READ_THREADS = 16


def reader_threads(most: int = READ_THREADS) -> int:
    """Reader threads for this process: ``most``, at most one per CPU it may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(most, cpus))


class BlocksFile:
    """``blocks.safetensors`` of one document, read on demand with positioned reads.

    The file is opened once (a regular file only) and its header validated by our own bounded
    parser: names, dtypes, shapes and byte ranges exactly as the manifest implies. Each layer's keys
    and values are one tensor ``[n_blocks, Hkv, B, d]``, so a run of blocks is one contiguous byte
    range. A request for scattered blocks becomes several runs, read and sha256-verified in
    parallel by a small thread pool (``os.preadv`` and ``hashlib`` release the GIL): on a cold
    disk each small random read costs a full device latency, and serialising them made the first
    question on a reloaded 128K-token document wait for ~1,500 round trips one after another.

    ``digests`` holds each layer's sha256-128 digests as uint8 ``[n_blocks, Hkv, 2, 16]`` (version
    4: per KV head, of keys and of values) or ``[n_blocks, 2, 16]`` (versions 2-3: per block).
    """

    def __init__(self, path: Path, manifest: Manifest, digests: dict[int, torch.Tensor], dtype: torch.dtype,
                 pin: bool = False, on_corrupt: Callable[[], None] | None = None,
                 threads: int | None = None, stored: torch.dtype | None = None):
        self.path, self.n_blocks, self.pin = path, list(manifest.n_blocks), pin
        # digested unit (version 4: block * Hkv + head; versions 2-3: block) -> keys', values' digest
        self._digests = {i: d.reshape(-1, 2, DIGEST_BYTES) for i, d in digests.items()}
        self._on_corrupt = on_corrupt
        self.dtype = dtype                      # what reads return (the compute dtype)
        self.stored = stored or dtype           # what the file holds
        self.shape = (manifest.kv_heads, manifest.block_size, manifest.head_dim)
        self.part_bytes = manifest.kv_heads * manifest.block_size * manifest.head_dim * self.stored.itemsize
        self.block_bytes = 2 * self.part_bytes
        self.unit_bytes = self.part_bytes // manifest.kv_heads    # one KV head of one block: keys or values
        # version 4 verifies each KV head of a block on its own: a question reads only the heads it picks
        self.per_head = manifest.block_checksums == BLOCK_CHECKSUMS
        self._fd, size = open_regular(path, manifest.files[BLOCKS].bytes)
        try:
            self._offsets = self._data_offsets(size)
        except BaseException:
            os.close(self._fd)
            raise
        self._threads = reader_threads() if threads is None else max(1, threads)
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="actqkv-read")
        weakref.finalize(self, _release, self._fd, self._pool)
        self._lock = threading.Lock()
        self._buffer: dict[int, OrderedDict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.runs = self.blocks_read = self.prefetch_hits = 0
        self.bytes_read = 0   # from the file, keys and values, prefetch included

    def _data_offsets(self, size: int) -> dict[int, tuple[int, int]]:
        """Validate the safetensors header (bounded; names, dtypes, shapes and byte ranges exactly
        as the manifest implies) and return each layer's keys and values byte offsets."""
        path = self.path
        if size < 8:
            raise CacheError(f"{path} is truncated: no safetensors header")
        (n,) = struct.unpack("<Q", read_fd(self._fd, 8, 0, path))
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise CacheError(f"{path} is corrupt: its safetensors header claims {n} bytes")
        try:
            header = json.loads(read_fd(self._fd, n, 8, path).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CacheError(f"{path} is corrupt (unreadable safetensors header: {exc})") from None
        if not isinstance(header, dict):
            raise CacheError(f"{path} is corrupt: its safetensors header is not a JSON object")
        header.pop("__metadata__", None)
        expected = {nm for i, nb in enumerate(self.n_blocks) if nb for nm in block_names(i)}
        if set(header) != expected:
            raise CacheError(f"{path} is corrupt: it holds tensors {sorted(header)[:6]}, "
                             f"expected {sorted(expected)[:6]}")
        tag = ST_DTYPES[self.stored]
        offsets = {}
        for i, n_blocks in enumerate(self.n_blocks):
            if not n_blocks:
                continue
            pair = []
            for nm in block_names(i):
                info = header[nm]
                want = [n_blocks, *self.shape]
                rng = info.get("data_offsets") if isinstance(info, dict) else None
                if not isinstance(info, dict) or info.get("dtype") != tag or info.get("shape") != want:
                    raise CacheError(f"{path} is corrupt: tensor {nm} is not {tag} {want}")
                if not (isinstance(rng, list) and len(rng) == 2 and all(type(x) is int for x in rng)) \
                        or rng[1] - rng[0] != n_blocks * self.part_bytes or rng[0] < 0 or 8 + n + rng[1] > size:
                    raise CacheError(f"{path} is corrupt: tensor {nm} has bad data offsets")
                pair.append(8 + n + rng[0])
            offsets[i] = (pair[0], pair[1])
        return offsets

    # ------------------------------------------------------------------ checks
    def _bad_part(self, layer: int, start: int, t: torch.Tensor, which: int) -> list[int]:
        """Blocks of ``t`` (keys: ``which=0``, values: ``1``; first block ``start``) whose sha256 is wrong."""
        per = self.shape[0] if self.per_head else 1   # digests per block
        units = torch.arange(start * per, (start + t.shape[0]) * per)
        return sorted({u // per for u in self._bad_units(layer, units, _bytes_of(t), which)})

    def _bad_units(self, layer: int, units: torch.Tensor, data: memoryview, which: int) -> list[int]:
        """Of the digested units whose bytes lie back to back in ``data`` in the order of ``units``
        (version 4: ``block * Hkv + head``; versions 2-3: whole blocks), those whose sha256 is
        wrong. One hashlib call per unit (it releases the GIL on buffers this large, so the reader
        threads hash in parallel), then one tensor compare against the digest table."""
        if units.numel() == 0:
            return []
        size = len(data) // units.numel()
        sha = hashlib.sha256
        got = b"".join([sha(data[o:o + size]).digest()[:DIGEST_BYTES] for o in range(0, len(data), size)])
        got = torch.frombuffer(bytearray(got), dtype=torch.uint8).view(-1, DIGEST_BYTES)
        return units[(got != self._digests[layer][units, which]).any(1)].tolist()

    def _corrupt(self, layer: int, block: int) -> CacheError:
        if self._on_corrupt is not None:
            try:
                self._on_corrupt()
            except Exception:  # noqa: BLE001 - reporting the corruption matters more
                pass
        return CacheError(f"{self.path} is corrupt: block {block} of layer {layer} does not match its "
                          "sha256 checksum; the cache entry can't be used: prefill the document again")

    # ------------------------------------------------------------------ reads
    def _pread(self, layer: int, a: int, b: int, which: int) -> torch.Tensor:
        """Keys or values of blocks ``a..b-1`` of ``layer``, straight from the file (unverified, as stored)."""
        out = torch.empty((b - a, *self.shape), dtype=self.stored)
        self._fill(out, self._offsets[layer][which] + a * self.part_bytes, layer, a, b)
        return out

    def _fill(self, out: torch.Tensor, offset: int, layer: int, a: int, b: int) -> None:
        """Read ``out``'s bytes from ``offset`` (blocks ``a..b-1`` of ``layer``, for the messages)."""
        n = self._preadv(_bytes_of(out), offset, layer, a, b)
        with self._lock:
            self.bytes_read += n

    def _preadv(self, buf: memoryview, offset: int, layer: int, a: int, b: int) -> int:
        """Fill ``buf`` from the file at ``offset`` (blocks ``a..b-1`` of ``layer``, for the
        messages); its length, the bytes read."""
        done = 0
        try:
            while done < len(buf):
                n = os.preadv(self._fd, [buf[done:]], offset + done)
                if n <= 0:
                    raise CacheError(f"{self.path} is truncated: blocks {a}..{b - 1} of layer {layer} "
                                     "end early; prefill the document again")
                done += n
        except OSError as exc:
            raise CacheError(f"cannot read blocks {a}..{b - 1} of layer {layer} from {self.path}: "
                             f"{exc.strerror or exc}") from None
        return done

    def _checked_run(self, layer: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, set[int]]:
        """Blocks ``a..b-1`` read and verified: keys, values and the ids that failed their checksum."""
        k, v = self._pread(layer, a, b, 0), self._pread(layer, a, b, 1)
        bad = set(self._bad_part(layer, a, k, 0)) | set(self._bad_part(layer, a, v, 1))
        return k.to(self.dtype), v.to(self.dtype), bad

    def read_range(self, layer: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``a..b-1`` of ``layer``, verified, on the host."""
        k, v, bad = self._checked_run(layer, a, b)
        self._count(1, b - a)
        if bad:
            raise self._corrupt(layer, min(bad))
        return k, v

    def read_part(self, layer: int, a: int, b: int, which: int) -> torch.Tensor:
        """Keys (``which=0``) or values (``1``) of blocks ``a..b-1`` of ``layer``, verified, on the host."""
        t = self._pread(layer, a, b, which)
        bad = self._bad_part(layer, a, t, which)
        if bad:
            raise self._corrupt(layer, bad[0])
        return t.to(self.dtype)

    def _count(self, runs: int, blocks: int) -> None:
        with self._lock:
            self.runs += runs
            self.blocks_read += blocks

    def read(self, layer: int, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``ids`` of ``layer`` as host ``[len(ids), Hkv, B, d]`` keys and values (the
        :class:`DiskBlocks` of a reloaded document)."""
        n = self.n_blocks[layer]
        if any(i < 0 or i >= n for i in ids):
            raise IndexError(f"block ids out of range 0..{n - 1} for layer {layer}")
        got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with self._lock:
            buf = self._buffer.setdefault(layer, OrderedDict())
            todo = []
            for i in sorted(set(ids)):
                if i in buf:
                    got[i] = buf.pop(i)
                    self.prefetch_hits += 1
                else:
                    todo.append(i)
        runs: list[list[int]] = []  # [first, end) with gaps up to MAX_GAP merged, plus prefetch
        for i in todo:
            if runs and i - (runs[-1][1] - 1) <= MAX_GAP + 1:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        for r, run in enumerate(runs):
            nxt = runs[r + 1][0] if r + 1 < len(runs) else n
            run[1] = min(n, run[1] + PREFETCH_BLOCKS, nxt)
        if len(runs) > 1:
            results = list(self._pool.map(lambda run: self._checked_run(layer, *run), runs))
        else:
            results = [self._checked_run(layer, *run) for run in runs]
        self._count(len(runs), sum(b - a for a, b in runs))
        wanted = set(todo)
        with self._lock:
            for (a, end), (k, v, bad) in zip(runs, results):
                for j in range(end - a):
                    b = a + j
                    if b in wanted:
                        if b in bad:
                            raise self._corrupt(layer, b)
                        got[b] = (k[j], v[j])
                    elif b not in bad:  # prefetched: kept for a later request (a bad one is re-read then)
                        buf[b] = (k[j].clone(), v[j].clone())
                        buf.move_to_end(b)
                        while len(buf) > PREFETCH_BUFFER:
                            buf.popitem(last=False)
        # stacked straight into (pinned, on CUDA) host memory: one copy, not stack + pin
        k = torch.empty((len(ids), *self.shape), dtype=self.dtype, pin_memory=self.pin)
        v = torch.empty_like(k, pin_memory=self.pin)
        torch.stack([got[i][0] for i in ids], out=k)
        torch.stack([got[i][1] for i in ids], out=v)
        return k, v

    def read_units(self, layer: int, blocks: Sequence[int] | torch.Tensor, heads: Sequence[int] | torch.Tensor,
                   keys: bool = True, values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One KV head of each of ``blocks`` (``heads[i]`` of ``blocks[i]``; pairs may repeat) as
        host ``[u, B, d]`` keys and values (each None where not asked for), each unit read once and
        verified on its own (version 4): a per-head selection reads the heads it picks, not every
        head of every block it touches.

        The distinct units, sorted (the heads of one block lie together in the file, so adjacent
        units make one run), are read into one host buffer, row by row; the runs go to the thread
        pool in a few batches of about equal bytes (one per thread at most), each reading its runs
        and verifying its units, so a request's cost in Python does not grow with its number of
        runs (thousands for the rerank's candidates). The output is then one indexed copy."""
        if not self.per_head:
            raise CacheError(f"{self.path} verifies whole blocks (format version < 4): read whole blocks")
        n, hkv = self.n_blocks[layer], self.shape[0]
        b = torch.as_tensor(blocks, dtype=torch.long).reshape(-1)
        h = torch.as_tensor(heads, dtype=torch.long).reshape(-1)
        if b.numel() and (int(b.min()) < 0 or int(b.max()) >= n or int(h.min()) < 0 or int(h.max()) >= hkv):
            raise IndexError(f"block ids out of range 0..{n - 1} or heads out of 0..{hkv - 1} for layer {layer}")
        units, row = torch.unique(b * hkv + h, return_inverse=True)   # row: each request's row in the buffer
        parts = [w for w, asked in ((0, keys), (1, values)) if asked]
        buf = torch.empty((len(parts), units.numel(), *self.shape[1:]), dtype=self.stored)
        data = _bytes_of(buf)
        plan = _batches(units, self._threads)

        def task(segments: list[tuple[int, int, int]]) -> list[int]:
            return self._read_batch(layer, units, data, parts, segments)

        self._announce(layer, plan, parts)
        results = list(self._pool.map(task, plan)) if len(plan) > 1 else [task(p) for p in plan]
        self._count(sum(len(p) for p in plan), 0)
        bad = sorted(u for r in results for u in r)
        if bad:
            raise self._corrupt(layer, bad[0] // hkv)
        in_order = bool((row[1:] > row[:-1]).all())   # asked sorted, no repeats: row is every row in order
        out: list[torch.Tensor | None] = [None, None]
        for p, w in enumerate(parts):
            out[w] = self._assemble(buf[p], None if in_order else row)
        return out[0], out[1]

    def _announce(self, layer: int, plan: list[list[tuple[int, int, int]]], parts: list[int]) -> None:
        """Tell the OS every run a request is about to read (``POSIX_FADV_WILLNEED``), so a cold
        disk gets them all queued at once instead of a few threads' worth at a time: scattered
        one-head reads from a cold page cache went from 167/156 to 294/274 MiB/s with it (2-core
        CPU, docs/results/read-threads-cpu/willneed.py; docs/benchmarks.md, "Read hints"). A hint
        only: where it is missing or refused the reads are the same."""
        if not _WILLNEED:
            return
        ub = self.unit_bytes
        try:
            for w in parts:
                base = self._offsets[layer][w]
                for segments in plan:
                    for r0, r1, u0 in segments:
                        os.posix_fadvise(self._fd, base + u0 * ub, (r1 - r0) * ub, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    def _assemble(self, rows: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
        """``rows`` (as stored) indexed by ``pick`` (None: all of them, in order), in the compute
        dtype and, for a CUDA device, pinned: one copy at most (none when ``rows`` already is
        that), for the cache's requests (distinct and sorted) as for any other."""
        if pick is None and rows.dtype == self.dtype and not self.pin:
            return rows
        n = rows.shape[0] if pick is None else pick.numel()
        t = torch.empty((n, *self.shape[1:]), dtype=self.dtype, pin_memory=self.pin)
        if pick is None:
            return t.copy_(rows)
        if rows.dtype == self.dtype:
            return torch.index_select(rows, 0, pick, out=t)
        return t.copy_(rows.index_select(0, pick))

    def _read_batch(self, layer: int, units: torch.Tensor, data: memoryview, parts: list[int],
                    segments: list[tuple[int, int, int]]) -> list[int]:
        """Read the runs ``segments`` (buffer rows ``r0..r1-1`` hold units ``u0..``) of each of
        ``parts`` into ``data`` (the parts' planes of ``units.numel()`` rows each, back to back),
        verify their units and return the bad ones. A batch's rows are contiguous."""
        ub, hkv, plane = self.unit_bytes, self.shape[0], units.numel() * self.unit_bytes
        lo, hi = segments[0][0], segments[-1][1]
        done, bad = 0, []
        for p, w in enumerate(parts):
            base, at = self._offsets[layer][w], p * plane
            for r0, r1, u0 in segments:
                done += self._preadv(data[at + r0 * ub: at + r1 * ub], base + u0 * ub, layer,
                                     u0 // hkv, (u0 + r1 - r0 - 1) // hkv + 1)
            bad += self._bad_units(layer, units[lo:hi], data[at + lo * ub: at + hi * ub], w)
        with self._lock:
            self.bytes_read += done
        return bad


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The bytes of contiguous ``t``, writable, without a copy."""
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


def _batches(units: torch.Tensor, n: int) -> list[list[tuple[int, int, int]]]:
    """Sorted distinct ``units`` cut into runs of consecutive ids (one positioned read each), the
    runs grouped into at most ``n`` batches of about equal numbers of units (a run crossing a
    batch boundary is cut there). Each run is ``(r0, r1, u0)``: rows ``r0..r1-1`` of ``units``,
    which are ``u0, u0 + 1, ...``."""
    total = units.numel()
    if total == 0:
        return []
    begins = torch.ones(total, dtype=torch.bool)
    begins[1:] = units[1:] != units[:-1] + 1
    n = min(n, int(begins.sum()))
    cuts = torch.arange(n) * total // n            # first row of each batch
    begins[cuts] = True
    first = begins.nonzero().flatten()
    batch = (torch.searchsorted(cuts, first, right=True) - 1).tolist()
    ends = first[1:].tolist() + [total]
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    for r0, r1, u0, k in zip(first.tolist(), ends, units[first].tolist(), batch):
        out[k].append((r0, r1, u0))
    return out


def _release(fd: int, pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False)
    try:
        os.close(fd)
    except OSError:
        pass


class DiskBlocks:
    """One layer's full blocks of a reloaded document: on disk, served to the compute device through
    a bounded :class:`DeviceBlockCache` (least recently used evicted first)."""

    def __init__(self, file: BlocksFile, layer: int, n_blocks: int, shape: tuple[int, int, int],
                 dtype: torch.dtype, device: torch.device, capacity: int):
        self.file, self.layer, self.n_blocks = file, layer, n_blocks
        self.block_bytes = file.block_bytes
        self.cache = DeviceBlockCache(self._read, n_blocks, shape, dtype, device, max(1, min(capacity, n_blocks)))

    def reserve(self, n: int) -> None:
        """Nothing: a reloaded document's blocks are read-only."""

    def device_parts(self, device: torch.device) -> None:
        """None: the blocks are on disk."""

    def _read(self, blocks: torch.Tensor, heads: torch.Tensor, keys: bool = True,
              values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One head of each of ``blocks``, the parts asked for: read head by head (format version 4),
        or, where the file verifies whole blocks (older versions), each block read (and verified)
        once, keys and values, whatever number of its heads and parts is asked for."""
        if self.file.per_head:
            return self.file.read_units(self.layer, blocks, heads, keys, values)
        uniq, at = torch.unique(blocks, return_inverse=True)
        k, v = self.file.read(self.layer, uniq.tolist())
        return (k[at, heads] if keys else None), (v[at, heads] if values else None)

    def read_range(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.file.read_range(self.layer, a, b)

    def read_part(self, a: int, b: int, which: int) -> torch.Tensor:
        return self.file.read_part(self.layer, a, b, which)

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.cache.gather(idx, device, keys, values)


def load_directory(engine: Any, directory: str | Path, verify: str = "blocks",
                   on_corrupt: Callable[[], None] | None = None, expect: dict | None = None) -> Document:
    """The :class:`~actqkv_llm.document.Document` saved in ``directory``, for ``engine``.

    ``expect`` (optional) names values the manifest must hold (e.g. ``{"key": ...}``: the key a
    document is opened under). Raises :class:`CacheMismatchError` (another format version, model or
    option set) or :class:`CacheError` (missing, truncated, corrupt, swapped or unreadable files),
    naming the file and the field. Nothing but the three cache files is opened, each a regular file.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    directory = Path(directory)
    if not is_real_dir(directory):
        raise CacheError(f"{directory} is not a document cache directory (missing, not a directory, or a "
                         "symbolic link)")
    try:
        return _load(engine, directory, verify, on_corrupt, expect or {})
    except CacheError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, RuntimeError, OverflowError, struct.error,
            RecursionError, UnicodeError, SafetensorError) as exc:  # a check we missed: still our error
        raise CacheError(f"{directory} is corrupt ({type(exc).__name__}: {exc}); prefill the document "
                         "again") from None


def _load(engine: Any, directory: Path, verify: str, on_corrupt: Callable[[], None] | None,
          expect: dict) -> Document:
    manifest = Manifest.read(directory)
    check_compatible(manifest, engine, directory)
    for name, value in expect.items():
        if getattr(manifest, name) != value:
            raise CacheError(f"{directory / MANIFEST} belongs to another document (field {name!r} is "
                             f"{str(getattr(manifest, name))[:16]}..., expected {str(value)[:16]}...); "
                             "refusing to use it")

    state_path, blocks_path = directory / STATE, directory / BLOCKS
    entry = manifest.files[STATE]
    raw = read_regular(state_path, entry.bytes, expected=entry.bytes)
    if hashlib.sha256(raw).hexdigest() != entry.sha256:
        raise CacheError(f"{state_path} is corrupt (sha256 mismatch); prefill the document again")
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CacheError(f"{state_path} is corrupt ({exc})") from None
    del raw
    if verify == "full" and sha256_cache_file(blocks_path, manifest.files[BLOCKS].bytes) != manifest.files[BLOCKS].sha256:
        raise CacheError(f"{blocks_path} is corrupt (sha256 mismatch); prefill the document again")

    ids = tensors.get("token_ids")
    if ids is None or ids.dtype not in ID_DTYPES or ids.dim() != 1 or ids.numel() != manifest.n_tokens:
        raise CacheError(f"{state_path} is corrupt: tensor 'token_ids' does not match the manifest")
    ids = ids.to(torch.int32).to(torch.long) if ids.dtype == torch.uint16 else ids.to(torch.long)
    if sha256_ids(ids) != manifest.token_ids_sha256:
        raise CacheError(f"{state_path} is corrupt: tensor 'token_ids' does not match field "
                         "'token_ids_sha256' of the manifest")
    text_t = tensors.get("text")
    if text_t is not None and (text_t.dtype != torch.uint8 or text_t.dim() != 1):
        raise CacheError(f"{state_path} is corrupt: tensor 'text' is not bytes")
    try:
        text = bytes(text_t.numpy()).decode("utf-8") if text_t is not None else ""
    except UnicodeDecodeError:
        raise CacheError(f"{state_path} is corrupt: the document text is not UTF-8") from None
    if sha256_text(text) != manifest.text_sha256:
        raise CacheError(f"{state_path} is corrupt: the document text does not match field 'text_sha256' "
                         "of the manifest")
    logits = tensors.get("last_logits")
    vocab = getattr(engine.model.config, "vocab_size", None) if hasattr(engine, "model") else None
    if logits is None or logits.dtype != torch.float32 or logits.dim() != 1 or logits.numel() == 0 \
            or (isinstance(vocab, int) and logits.numel() > vocab + 1024):
        raise CacheError(f"{state_path} is corrupt: tensor 'last_logits' is missing or malformed")

    digests: dict[int, torch.Tensor] = {}
    for i, n in enumerate(manifest.n_blocks):
        if n:
            d = tensors.get(layer_name(i, "block_sha256"))
            want = (n, manifest.kv_heads, 2, DIGEST_BYTES) if manifest.block_checksums == BLOCK_CHECKSUMS \
                else (n, 2, DIGEST_BYTES)
            if d is None or d.dtype != torch.uint8 or tuple(d.shape) != want:
                raise CacheError(f"{state_path} is corrupt: block checksums of layer {i} "
                                 f"(tensor {layer_name(i, 'block_sha256')!r}) are missing or malformed")
            digests[i] = d

    adapter, dev, dt = engine.adapter, engine.device, engine.dtype
    stored = TORCH_DTYPES[manifest.kv_dtype]
    shape = (adapter.n_kv_heads, engine.config.block_size, adapter.head_dim)
    bfile = None
    if manifest.total_blocks:
        bfile = BlocksFile(blocks_path, manifest, digests, dt, pin=(dev.type == "cuda"), on_corrupt=on_corrupt,
                           stored=stored)
    else:
        check_size(blocks_path, manifest.files[BLOCKS].bytes)

    def make_blocks(i: int):
        n = manifest.n_blocks[i]
        if n == 0:
            return GrowableBlocks(*shape, dt, dev, capacity=1)
        return DiskBlocks(bfile, i, n, shape, dt, dev, engine.config.device_cache_blocks)

    session = unpack_state(engine, tensors, manifest.n_blocks, make_blocks, str(state_path), stored=stored,
                           n_tokens=manifest.n_tokens)
    doc = Document(engine, session, ids, text, manifest.layout, logits.to(dev), key=manifest.key, path=directory)
    doc.manifest = manifest
    return doc
