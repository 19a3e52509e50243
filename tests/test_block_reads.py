"""Reading (block, KV head) units of a format-4 blocks file in batches, and the device-side block
cache's bookkeeping: both answer exactly what a plain per-unit read would, catch a damaged unit
anywhere in a large request, and keep the least recently used eviction order."""

from __future__ import annotations

import hashlib
import os
import random
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from actqkv_llm import CacheError
from actqkv_llm.memory.block_cache import DeviceBlockCache
from actqkv_llm.persist.format import BLOCK_CHECKSUMS, BLOCKS, DIGEST_BYTES
from actqkv_llm.persist.reader import BlocksFile

N, HKV, B, D = 40, 4, 4, 8          # blocks, KV heads, block size, head dim: tiny
LAYER = 1                           # layer 0 holds no blocks: offsets and digests are per layer


def unit_digests(t: torch.Tensor) -> torch.Tensor:
    """sha256-128 of each (block, head) of ``[n, Hkv, B, d]``, as the writer stores them."""
    rows = t.contiguous().view(torch.uint8).reshape(t.shape[0] * t.shape[1], -1).numpy()
    raw = b"".join(hashlib.sha256(r).digest()[:DIGEST_BYTES] for r in rows)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(t.shape[0], t.shape[1], DIGEST_BYTES)


def make_file(tmp_path, stored=torch.float32, dtype=torch.float32, threads=4, on_corrupt=None):
    """A format-4 ``blocks.safetensors`` of random keys and values, its BlocksFile, and the tensors."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(N, HKV, B, D, generator=g).to(stored)
    v = torch.randn(N, HKV, B, D, generator=g).to(stored)
    path = tmp_path / BLOCKS
    save_file({f"layers.{LAYER}.keys": k, f"layers.{LAYER}.values": v}, str(path))
    manifest = SimpleNamespace(n_blocks=[0, N], kv_heads=HKV, block_size=B, head_dim=D,
                               block_checksums=BLOCK_CHECKSUMS,
                               files={BLOCKS: SimpleNamespace(bytes=path.stat().st_size)})
    digests = {LAYER: torch.stack([unit_digests(k), unit_digests(v)], 2)}
    f = BlocksFile(path, manifest, digests, dtype, threads=threads, stored=stored, on_corrupt=on_corrupt)
    return f, k.to(dtype), v.to(dtype)


def damage(f: BlocksFile, block: int, head: int, which: int) -> None:
    """Flip one byte inside one unit of the file behind ``f``."""
    at = f._offsets[LAYER][which] + (block * HKV + head) * f.unit_bytes + f.unit_bytes // 2
    with open(f.path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_read_units_mixed_repeated_pairs_match_per_unit_reads(tmp_path, stored):
    """Scattered pairs, some asked several times, in no order: each comes back where it was asked,
    equal to reading it alone and to the tensor written; each distinct unit is read once."""
    f, k, v = make_file(tmp_path, stored=stored)
    rnd = random.Random(1)
    pairs = [(rnd.randrange(N), rnd.randrange(HKV)) for _ in range(150)]
    pairs += pairs[::7] + [(N - 1, HKV - 1), (0, 0), (0, 0)]
    rnd.shuffle(pairs)
    blocks, heads = [b for b, _ in pairs], [h for _, h in pairs]
    gk, gv = f.read_units(LAYER, blocks, heads)
    assert gk.dtype == gv.dtype == torch.float32 and gk.shape == (len(pairs), B, D)
    torch.testing.assert_close(gk, k[blocks, heads], rtol=0, atol=0)
    torch.testing.assert_close(gv, v[blocks, heads], rtol=0, atol=0)
    assert f.bytes_read == 2 * len(set(pairs)) * f.unit_bytes
    assert f.runs >= 4                                  # several runs, several batches
    for i in (0, 17, len(pairs) - 1):                   # a straightforward per-unit read agrees
        one_k, one_v = f.read_units(LAYER, [blocks[i]], [heads[i]])
        assert torch.equal(one_k[0], gk[i]) and torch.equal(one_v[0], gv[i])
    only_v = f.read_units(LAYER, torch.tensor(blocks), torch.tensor(heads), keys=False)
    assert only_v[0] is None and torch.equal(only_v[1], gv)
    assert f.read_units(LAYER, [], [])[0].shape == (0, B, D)
    with pytest.raises(IndexError):
        f.read_units(LAYER, [0, N], [0, 0])
    with pytest.raises(IndexError):
        f.read_units(LAYER, [0, 1], [0, HKV])


def test_a_damaged_unit_inside_a_large_batched_request_is_caught(tmp_path):
    """One flipped byte in the values of one (block, head), asked among half the units of the layer
    (every other one: dozens of runs over several batches): the request raises, naming the block,
    and the callback fires; its keys, and every other unit, still read clean."""
    hits = []
    f, k, v = make_file(tmp_path, threads=3, on_corrupt=lambda: hits.append(1))
    damage(f, 29, 1, 1)
    half = [(b, h) for b in range(N) for h in range(HKV) if (b + h) % 2 == 0][::-1]
    blocks, heads = [b for b, _ in half], [h for _, h in half]
    with pytest.raises(CacheError, match=rf"block 29 of layer {LAYER}"):
        f.read_units(LAYER, blocks, heads)
    assert hits == [1]
    gk, none = f.read_units(LAYER, blocks, heads, values=False)     # the damage is in the values only
    assert none is None and torch.equal(gk, k[blocks, heads])
    rest = [(b, h) for b, h in half if (b, h) != (29, 1)]
    gk, gv = f.read_units(LAYER, [b for b, _ in rest], [h for _, h in rest])
    assert torch.equal(gv, v[[b for b, _ in rest], [h for _, h in rest]])
    assert f.runs > 3 * 20                             # three requests, each of dozens of runs
    damage(f, 3, 1, 0)                                 # a second one, in the keys, in another batch
    with pytest.raises(CacheError, match=rf"block 3 of layer {LAYER}"):
        f.read_units(LAYER, blocks, heads, values=False)


def recording_cache(store: torch.Tensor, capacity: int, n_blocks: int | None = None):
    """A DeviceBlockCache over ``store`` ([n, Hkv, B, d]; values are ``-store``) whose reads are
    logged as (sorted units read, keys, values)."""
    reads = []

    def reader(b, h, keys, values):
        reads.append((sorted((b * store.shape[1] + h).tolist()), keys, values))
        return (store[b, h] if keys else None), (-store[b, h] if values else None)

    cache = DeviceBlockCache(reader, store.shape[0] if n_blocks is None else n_blocks, tuple(store.shape[1:]),
                             store.dtype, "cpu", capacity)
    return cache, reads


def expected(store: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """What gather returns for ``idx`` ``[Hkv, n]``: ``[Hkv, n*B, d]`` keys."""
    return torch.stack([store[idx[h], h].reshape(-1, store.shape[-1]) for h in range(store.shape[1])])


def test_block_cache_keys_only_then_values_only_on_the_same_units():
    store = torch.randn(12, 2, 4, 3)
    cache, reads = recording_cache(store, 6)
    idx = torch.tensor([[5, 1, 5, 9], [0, 0, 11, 3]])
    k, v = cache.gather(idx, torch.device("cpu"), values=False)
    assert v is None and torch.equal(k, expected(store, idx))
    k, v = cache.gather(idx, torch.device("cpu"), keys=False)
    assert k is None and torch.equal(v, -expected(store, idx))
    units = sorted({b * 2 + h for h in range(2) for b in idx[h].tolist()})
    assert reads == [(units, True, False), (units, False, True)]   # each part of each pair once
    k, v = cache.gather(idx, torch.device("cpu"))
    assert len(reads) == 2 and torch.equal(k, expected(store, idx)) and torch.equal(v, -expected(store, idx))
    assert (cache.misses, cache.hits) == (len(units), 3 * 8 - len(units))


def lru_model(model: OrderedDict, units: list[int], slots: int) -> list[int]:
    """The reference: the pairs one request must read; ``model`` (least recently used first) is
    updated as the cache should be: the least recently used pairs not asked for make room, then
    every pair asked for counts as used at its last place in the request."""
    wanted = set(units)
    missing = sorted(wanted - set(model))
    need = len(model) + len(missing) - slots
    for u in [u for u in model if u not in wanted][:max(0, need)]:
        del model[u]
    for u in units:
        model[u] = True
        model.move_to_end(u)
    return missing


def test_block_cache_eviction_under_pressure_follows_lru_and_keeps_contents():
    """Random requests, many more pairs than slots: each request reads exactly the pairs a plain
    LRU over (block, head) pairs says are missing, and returns the right keys and values."""
    store = torch.randn(30, 3, 2, 5)
    cache, reads = recording_cache(store, 5, n_blocks=4)   # too small: the bookkeeping grows
    model: OrderedDict[int, bool] = OrderedDict()
    rnd = random.Random(5)
    hits = misses = 0
    for step in range(60):
        n = rnd.randint(1, 5)
        idx = torch.tensor([[rnd.randrange(12 if step % 3 else 30) for _ in range(n)] for _ in range(3)])
        units = [b * 3 + h for h in range(3) for b in idx[h].tolist()]
        before = len(reads)
        k, v = cache.gather(idx, torch.device("cpu"))
        torch.testing.assert_close(k, expected(store, idx), rtol=0, atol=0)
        torch.testing.assert_close(v, -expected(store, idx), rtol=0, atol=0)
        missing = lru_model(model, units, cache.units)
        got = reads[before:]
        assert [r[0] for r in got] == ([missing, missing] if missing else [])
        hits += len(units) - len(missing)
        misses += len(missing)
        assert cache.resident == len(model) and cache.resident + cache.free == cache.units
    assert (cache.hits, cache.misses) == (hits, misses) and misses > 60
    big = torch.arange(6)[None].expand(3, -1)               # 18 pairs > 15 slots: read straight through
    k, _ = cache.gather(big, torch.device("cpu"))
    assert torch.equal(k, expected(store, big)) and cache.resident == len(model)


def test_reader_threads_never_outnumber_the_cpus(monkeypatch):
    """The reader pool takes READ_THREADS threads, but no more than the CPUs this process may run on
    (each thread also hashes what it reads: more threads than CPUs only contend)."""
    from actqkv_llm.persist import reader

    monkeypatch.setattr(reader.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert reader.reader_threads() == 2
    monkeypatch.setattr(reader.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert reader.reader_threads() == reader.READ_THREADS == 16
    assert reader.reader_threads(4) == 4


def test_read_fd_reads_exactly_n_bytes_through_short_reads(tmp_path, monkeypatch):
    """read_fd returns exactly the bytes asked for when the OS hands them back a few at a time,
    and names the file when it ends early."""
    from actqkv_llm.errors import CacheError
    from actqkv_llm.files import paths

    path = tmp_path / "f"
    data = os.urandom(1000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert paths.read_fd(fd, 1000, 0, path) == data
        real = os.pread
        monkeypatch.setattr(paths.os, "pread", lambda f, n, off: real(f, min(n, 7), off))
        assert paths.read_fd(fd, 900, 50, path) == data[50:950]
        with pytest.raises(CacheError, match="truncated"):
            paths.read_fd(fd, 100, 950, path)
    finally:
        os.close(fd)


def test_read_units_announces_exactly_the_runs_it_reads(tmp_path, monkeypatch):
    """Before reading, a request names each of its runs to the OS (WILLNEED), for the parts asked
    only; the byte ranges hinted are the ones read. A refused hint changes nothing."""
    from actqkv_llm.persist import reader

    if not reader._WILLNEED:
        pytest.skip("this platform has no posix_fadvise")
    f, k, v = make_file(tmp_path)
    hinted = []
    monkeypatch.setattr(reader.os, "posix_fadvise",
                        lambda fd, off, n, advice: hinted.append((off, n, advice)))
    blocks, heads = [3, 4, 4, 9, 20], [0, 0, 1, 1, 0]
    gk, gv = f.read_units(LAYER, blocks, heads, keys=True, values=False)
    assert gv is None
    assert {a for _, _, a in hinted} == {os.POSIX_FADV_WILLNEED}
    ub, base = f.unit_bytes, f._offsets[LAYER][0]
    units = sorted({b * HKV + h for b, h in zip(blocks, heads)})
    covered = sorted((off - base) // ub + j for off, n, _ in hinted for j in range(n // ub))
    assert covered == units                         # every unit read, each once, keys only
    assert sum(n for _, n, _ in hinted) == f.bytes_read
    monkeypatch.setattr(reader.os, "posix_fadvise",
                        lambda *a: (_ for _ in ()).throw(OSError(22, "Invalid argument")))
    gk2, _ = f.read_units(LAYER, blocks, heads, keys=True, values=False)
    torch.testing.assert_close(gk2, k[blocks, heads], rtol=0, atol=0)
    torch.testing.assert_close(gk, gk2, rtol=0, atol=0)
