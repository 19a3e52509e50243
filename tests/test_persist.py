"""Document persistence: round trips (same process, fresh process, bf16), atomicity, concurrent saves,
corruption and mismatch detection, no pickle anywhere, the JSON-only index and LRU gc."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch

from actqkv_llm import CacheError, CacheMismatchError, Engine
from actqkv_llm.persist import DocumentCache, default_cache_root, load_document, save_document
from actqkv_llm.persist import writer as writer_mod
from actqkv_llm.persist.format import BLOCKS, FORMAT_VERSION, MANIFEST, STATE, engine_key
from actqkv_llm.persist.reader import DiskBlocks
from actqkv_llm.persist.writer import quick_check
from tiny_models import byte_tokenizer, tiny_model

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DOC = " ".join(f"Line {i}: the keeper counts {i * 7} gulls on the quay." for i in range(11))
QUESTIONS = ["How many gulls on line 3?",
             # longer than the tiny model's local window: the question session adds its own blocks
             # on top of the reloaded document's disk blocks
             "Please read every line again carefully and then tell me, line by line, " * 3 + "what is counted?"]
PROBE_IDS = [ord(c) for c in "Answer:"]


def answers(eng: Engine, doc) -> dict:
    return {"ask": [eng.ask(doc, q, max_new_tokens=12) for q in QUESTIONS],
            "ids": eng.generate_ids(doc, PROBE_IDS, max_new_tokens=12)}


def question_logits(eng: Engine, doc) -> torch.Tensor:
    return doc.session().forward(torch.tensor(PROBE_IDS), phase="question")


def blocks_offset(path: Path, name: str) -> tuple[int, int]:
    """(absolute byte offset, byte length) of tensor ``name`` in a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, end - begin


def bf16_engine(cache, **options) -> Engine:
    """KV is stored as bf16 by default: a bf16 engine round-trips bit for bit (fp32 ones are
    covered by tests/test_cache_trust.py, and here with kv_dtype="compute")."""
    return Engine(tiny_model().to(torch.bfloat16), byte_tokenizer(), progress=False, cache=cache, **options)


@pytest.fixture
def eng(tmp_path):
    return bf16_engine(tmp_path / "cache")


@pytest.fixture
def doc(eng):
    return eng.prefill(DOC)


# ---------------------------------------------------------------------------------------- round trips
def test_round_trip_same_process(eng, doc):
    assert doc.key and doc.path and (doc.path / MANIFEST).is_file()  # prefill stored it
    expected, logits = answers(eng, doc), question_logits(eng, doc)
    loaded = eng.load(doc.key)
    layer0 = loaded.state.memory[0].blocks
    assert isinstance(layer0, DiskBlocks) and loaded.n_blocks == doc.n_blocks > 0
    assert loaded.n_tokens == doc.n_tokens and loaded.text == DOC and loaded.layout == "chat"
    assert torch.equal(question_logits(eng, loaded), logits)
    assert answers(eng, loaded) == expected
    assert layer0.cache.misses > 0  # blocks really came from disk, on demand
    again = eng.prefill(DOC)  # the cache lookup returns the stored document
    assert isinstance(again.state.memory[0].blocks, DiskBlocks) and answers(eng, again) == expected
    # a reloaded document saves again (blocks read back from its file, verified) to another path
    copy = load_document(eng, save_document(loaded, doc.path.parent.parent / "copy"))
    assert answers(eng, copy) == expected


def test_round_trip_in_a_fresh_process(eng, doc, tmp_path):
    expected = answers(eng, doc)
    script = ("import json, sys\n"
              f"sys.path.insert(0, {str(TESTS)!r})\n"
              "from tiny_models import byte_tokenizer, tiny_model\n"
              "from test_persist import answers, bf16_engine\n"
              "eng = bf16_engine(sys.argv[1])\n"
              "doc = eng.load(sys.argv[2])\n"
              "print(json.dumps({'answers': answers(eng, doc), 'n_blocks': doc.n_blocks,\n"
              "                  'kind': type(doc.state.memory[0].blocks).__name__}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache"), doc.key], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kind"] == "DiskBlocks" and got["n_blocks"] == doc.n_blocks
    assert got["answers"] == expected  # token for token


def test_bf16_round_trip(tmp_path):
    eng = Engine(tiny_model().to(torch.bfloat16), byte_tokenizer(), progress=False, cache=False)
    doc = eng.prefill(DOC)
    path = doc.save(tmp_path / "bf16")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["fingerprint"]["dtype"] == "torch.bfloat16"
    loaded = eng.load(path)
    for a, b in zip(doc.state.memory, loaded.state.memory):
        assert a.sink_k.dtype == b.sink_k.dtype == torch.bfloat16
        assert torch.equal(a.local_k, b.local_k) and torch.equal(a.summaries.all(), b.summaries.all())
        if a.n_blocks:
            k, v = b.blocks.read_range(0, b.n_blocks)
            assert k.dtype == torch.bfloat16 and torch.equal(k, a.blocks.keys) and torch.equal(v, a.blocks.values)
    assert answers(eng, loaded) == answers(eng, doc)


@pytest.mark.parametrize("arch,method", [("gemma3", "actqkv"), ("qwen2", "infllm"), ("llama", "streaming"),
                                         ("qwen3", "full")])
def test_round_trip_other_architectures_and_methods(make_engine, tmp_path, arch, method):
    eng = make_engine(arch, method)
    doc = eng.prefill(DOC)
    loaded = eng.load(doc.save(tmp_path / "doc", kv_dtype="compute"))  # fp32 kept: bit for bit
    assert loaded.n_blocks == doc.n_blocks
    assert torch.equal(question_logits(eng, loaded), question_logits(eng, doc))
    assert answers(eng, loaded) == answers(eng, doc)


def test_offloaded_document_round_trip(make_engine, tmp_path):
    eng = make_engine(offload=True, device_cache_blocks=4)  # blocks in host memory behind a device cache
    doc = eng.prefill(DOC)
    loaded = eng.load(doc.save(tmp_path / "offloaded", kv_dtype="compute"))
    assert loaded.state.memory[0].blocks.cache.capacity == 4  # the bounded device-side LRU
    assert answers(eng, loaded) == answers(eng, doc)


def test_index_and_directory_layout(eng, doc, tmp_path):
    root = tmp_path / "cache"
    assert doc.path == root / "documents" / doc.key
    for d in (root, root / "documents", doc.path):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    m = json.loads((doc.path / MANIFEST).read_text())
    assert m["format_version"] == FORMAT_VERSION and m["kv_options"] == eng.config.kv_options()
    assert m["n_tokens"] == doc.n_tokens and m["layout"] == "chat" and len(m["n_blocks"]) == m["n_layers"]
    for name in (STATE, BLOCKS):
        assert m["files"][name]["bytes"] == (doc.path / name).stat().st_size
    [entry] = eng.cache.entries()
    assert entry["key"] == doc.key and entry["tokens"] == doc.n_tokens and entry["model"] == "llama"
    assert entry["size"] > 0 and entry["last_used"] >= entry["created"] > 0


def test_index_stores_only_json(eng, doc, tmp_path):
    con = sqlite3.connect(tmp_path / "cache" / "document-index" / "cache.db")
    rows = con.execute("SELECT key, raw, mode, value, filename FROM Cache").fetchall()
    con.close()
    assert rows
    for key, raw, mode, value, filename in rows:
        assert raw == 1 and mode == 1 and filename is None  # MODE_RAW: bytes stored as they are
        assert json.loads(zlib.decompress(key)) == doc.key
        row = json.loads(zlib.decompress(value))
        assert set(row) == {"size", "last_used", "created"}  # plain facts: no path, ever


def test_nothing_is_ever_unpickled(tmp_path, monkeypatch):
    eng = bf16_engine(tmp_path / "cache")
    expected = answers(eng, eng.prefill(DOC, cache=False))

    def refuse(*a, **k):
        raise AssertionError("pickle/torch.load used")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    doc = eng.prefill(DOC)               # lookup (miss), prefill, put
    again = eng.prefill(DOC)             # lookup (hit): load
    assert isinstance(again.state.memory[0].blocks, DiskBlocks)
    assert answers(eng, again) == expected
    assert answers(eng, eng.load(doc.key)) == expected
    assert DocumentCache(tmp_path / "cache").entries()[0]["key"] == doc.key
    # a tampered index row stored the pickle way is refused (and dropped), never decoded
    con = sqlite3.connect(tmp_path / "cache" / "document-index" / "cache.db")
    con.execute("UPDATE Cache SET mode = 4, value = ?", (pickle.dumps({"path": "elsewhere"}),))
    con.commit()
    con.close()
    with pytest.warns(RuntimeWarning, match="pickled value"):
        assert eng.cache.get(doc.key) == doc.path  # the directory is the truth
    assert answers(eng, eng.load(doc.key[:8])) == expected
    eng.cache.gc(max_bytes=0)
    assert eng.cache.entries() == []


# ---------------------------------------------------------------------------------------- atomicity
def test_failed_save_leaves_nothing_complete(eng, doc, tmp_path, monkeypatch):
    target = tmp_path / "saved"
    original = doc.save(target)
    expected = answers(eng, eng.load(original))
    other = eng.prefill(DOC[: len(DOC) // 2], cache=False)

    calls = {"n": 0}
    real = writer_mod._write_all

    def disk_full_midway(fd, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(writer_mod, "_write_all", disk_full_midway)
    with pytest.raises(CacheError, match="disk is full"):
        other.save(target)                      # replacing an existing cache: it stays intact
    calls["n"] = 0
    with pytest.raises(CacheError, match="saved-new"):
        other.save(tmp_path / "saved-new")      # a new target: nothing appears
    monkeypatch.setattr(writer_mod, "_write_all", real)
    assert not (tmp_path / "saved-new").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # temp dirs cleaned
    assert answers(eng, eng.load(target)) == expected


def test_crashed_save_is_never_used_and_gc_cleans_it(eng, tmp_path):
    docs = tmp_path / "cache" / "documents"
    other = eng.prefill(DOC + " more", cache=False)
    key = writer_mod.doc_key(other)
    # a process died mid-save: a temp dir, and a key dir with data but no manifest
    tmp = docs / f".tmp-{key}-1-dead"
    tmp.mkdir(parents=True)
    (tmp / BLOCKS).write_bytes(b"\0" * 100)
    half = docs / key
    half.mkdir()
    (half / STATE).write_bytes(b"\0" * 100)
    with pytest.raises(CacheError, match="manifest.json is missing"):
        eng.load(half)
    assert eng.cache.gc() == [] and tmp.exists() and half.exists()   # young: left alone
    assert eng.cache.gc(grace=0) == [key]
    assert not tmp.exists() and not half.exists()
    half.mkdir()
    (half / STATE).write_bytes(b"\0" * 100)
    with pytest.warns(RuntimeWarning, match="manifest.json is missing"):  # never used, reported
        assert eng.cache.lookup(eng, other.text, "chat", other.token_ids) is None
    assert eng.prefill(other.text).path == half and quick_check(half) is not None  # saved properly now


def test_concurrent_saves_of_the_same_document_threads(eng, tmp_path, monkeypatch):
    doc = eng.prefill(DOC, cache=False)
    target = tmp_path / "shared"
    n = 4
    barrier = threading.Barrier(n)
    real_build = writer_mod.build_files

    def build_then_wait(*a, **k):
        manifest = real_build(*a, **k)
        barrier.wait(timeout=30)  # every thread renames at the same moment
        return manifest

    monkeypatch.setattr(writer_mod, "build_files", build_then_wait)
    results, errors = [], []

    def save():
        try:
            results.append(writer_mod.save_to(doc, target)[0])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [target] * n
    assert quick_check(target) is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert answers(eng, eng.load(target)) == answers(eng, doc)


def test_concurrent_prefill_and_save_from_two_processes(tmp_path):
    root, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    text = tmp_path / "doc.txt"
    text.write_text(DOC, encoding="utf-8")
    # one thread here and in the test process: bf16 sums must round alike for the answers to match
    script = ("import json, os, sys, time, torch\n"
              "torch.set_num_threads(1)\n"
              f"sys.path.insert(0, {str(TESTS)!r})\n"
              "from tiny_models import byte_tokenizer, tiny_model\n"
              "from test_persist import bf16_engine\n"
              "eng = bf16_engine(sys.argv[1])\n"
              "doc = eng.prefill(open(sys.argv[2], encoding='utf-8').read(), cache=False)\n"
              "open(os.path.join(sys.argv[3], str(os.getpid())), 'w').close()\n"
              "deadline = time.time() + 60\n"
              "while len(os.listdir(sys.argv[3])) < 2 and time.time() < deadline:\n"
              "    time.sleep(0.001)\n"
              "path = eng.cache.put(doc)\n"
              "print(json.dumps({'key': doc.key, 'path': str(path)}))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(text), str(barrier)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert got[0] == got[1]
    docs = root / "documents"
    assert sorted(p.name for p in docs.iterdir()) == [got[0]["key"]]  # one cache, no temp leftovers
    assert quick_check(Path(got[0]["path"])) is not None
    eng = bf16_engine(root)
    assert [e["key"] for e in eng.cache.entries()] == [got[0]["key"]]
    threads = torch.get_num_threads()   # earlier tests may have changed this process's count
    torch.set_num_threads(1)
    try:
        assert answers(eng, eng.load(got[0]["key"])) == answers(eng, eng.prefill(DOC, cache=False))
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- damage
def test_truncated_blocks_file(eng, doc):
    path = doc.path / BLOCKS
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CacheError, match=r"blocks\.safetensors is truncated"):
        eng.load(doc.path)
    # prefill reports the damaged entry, discards it and prefills again
    with pytest.warns(RuntimeWarning, match="damaged"):
        fresh = eng.prefill(DOC)
    assert not isinstance(fresh.state.memory[0].blocks, DiskBlocks)
    assert path.stat().st_size == size and quick_check(doc.path) is not None


def test_missing_or_corrupt_state_file(eng, doc):
    state = doc.path / STATE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"state\.safetensors is corrupt \(sha256"):
        eng.load(doc.key)
    state.unlink()
    with pytest.raises(CacheError, match=r"state\.safetensors is missing"):
        eng.load(doc.path)


def test_corrupted_block_raises_when_read(eng, doc):
    expected = answers(eng, doc)
    blocks = doc.path / BLOCKS
    offset, length = blocks_offset(blocks, "layers.0.keys")
    n = doc.state.memory[0].n_blocks
    per_block = length // n
    with open(blocks, "r+b") as f:          # one flipped byte in every block of layer 0
        for j in range(n):
            f.seek(offset + j * per_block + 5)
            b = f.read(1)
            f.seek(offset + j * per_block + 5)
            f.write(bytes([b[0] ^ 0x01]))
    loaded = load_document(eng, doc.path)   # sizes and the state are fine: opens lazily
    layer1 = loaded.state.memory[1].blocks
    layer1.gather(torch.tensor([0, 1]), eng.device)  # other layers still read
    with pytest.raises(CacheError, match=r"blocks\.safetensors is corrupt: block 2 of layer 0"):
        loaded.state.memory[0].blocks.gather(torch.tensor([2]), eng.device)
    with pytest.raises(CacheError, match="corrupt"):
        eng.ask(loaded, QUESTIONS[0], max_new_tokens=4)  # never an answer
    with pytest.raises(CacheError, match=r"blocks\.safetensors is corrupt \(sha256"):
        load_document(eng, doc.path, verify="full")
    # through the cache: the damaged entry is dropped when detected and prefilled again next time
    with pytest.raises(CacheError):
        eng.ask(eng.load(doc.key), QUESTIONS[0], max_new_tokens=4)
    assert not doc.path.exists() and eng.cache.entries() == []
    assert answers(eng, eng.prefill(DOC)) == expected


def test_future_format_version(eng, doc):
    m = json.loads((doc.path / MANIFEST).read_text())
    m["format_version"] = 99
    (doc.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CacheMismatchError, match=rf"manifest\.json has cache format version 99.*up to version {FORMAT_VERSION}"):
        eng.load(doc.key)
    with pytest.warns(RuntimeWarning, match="format version 99"):
        assert eng.cache.lookup(eng, DOC, "chat", doc.token_ids) is None
    with pytest.warns(RuntimeWarning, match="format version 99"):
        fresh = eng.prefill(DOC)  # prefilled again; its save replaces the entry
    assert not isinstance(fresh.state.memory[0].blocks, DiskBlocks)
    assert json.loads((doc.path / MANIFEST).read_text())["format_version"] == FORMAT_VERSION


def test_cache_from_another_model_or_options(make_engine, eng, doc, tmp_path):
    other_opts = make_engine(cache=tmp_path / "cache", block_size=8)
    with pytest.raises(CacheMismatchError, match=r"kv_options\.block_size: expected 8, found 16"):
        other_opts.load(doc.key)
    assert engine_key(other_opts, DOC, "chat", doc.token_ids) != doc.key       # other options, other key
    assert other_opts.cache.lookup(other_opts, DOC, "chat", doc.token_ids) is None
    assert not isinstance(other_opts.prefill(DOC).state.memory[0].blocks, DiskBlocks)
    streaming = make_engine(method="streaming", cache=tmp_path / "cache")
    with pytest.raises(CacheMismatchError, match=r"kv_options\.method: expected 'streaming', found 'actqkv'"):
        streaming.load(doc.path)
    other_model = Engine(tiny_model(), byte_tokenizer(), progress=False, cache=tmp_path / "cache",
                         fingerprint={"model_id": "someone/else", "dtype": "torch.float32", "weights": "abc"})
    with pytest.raises(CacheMismatchError) as info:
        other_model.load(doc.key)
    msg = str(info.value)
    assert "fingerprint.model_id: expected 'someone/else', found 'llama'" in msg
    assert "fingerprint.weights: expected 'abc', found '<absent>'" in msg and str(doc.path) in msg


def test_unknown_key_and_path(eng):
    with pytest.raises(CacheError, match="unknown key"):
        eng.load("0" * 64)
    with pytest.raises(CacheError, match="unknown key"):
        eng.load("0123456789abcdef-no-such-document")
    with pytest.raises(CacheError, match="no such document cache directory"):
        eng.load(Path("/nonexistent/actqkv/doc"))


def test_refuses_to_overwrite_a_foreign_directory(doc, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match="refusing to overwrite"):
        doc.save(target)
    assert (target / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------- gc
def test_gc_evicts_least_recently_used_directories(make_engine, tmp_path):
    eng = make_engine(cache=tmp_path / "cache")
    texts = [DOC, DOC.replace("gulls", "crabs"), DOC.replace("gulls", "boats")]
    docs = [eng.prefill(t) for t in texts]
    time.sleep(0.01)
    assert eng.cache.lookup(eng, texts[0], "chat", docs[0].token_ids) is not None  # A is now most recent
    sizes = {e["key"]: e["size"] for e in eng.cache.entries()}
    removed = eng.cache.gc(max_bytes=sum(sizes.values()) - 1)
    assert removed == [docs[1].key] and not docs[1].path.exists()
    assert docs[0].path.exists() and docs[2].path.exists()
    assert {e["key"] for e in eng.cache.entries()} == {docs[0].key, docs[2].key}
    # rows whose directory vanished are dropped; unknown valid dirs are re-indexed after the grace period
    shutil.rmtree(docs[2].path)
    eng.cache._index.delete(docs[0].key)
    assert eng.cache.gc(grace=0) == []
    assert {e["key"] for e in eng.cache.entries()} == {docs[0].key}
    assert eng.cache.gc(max_bytes=0) == [docs[0].key] and eng.cache.entries() == []
    assert [p.name for p in (tmp_path / "cache" / "documents").iterdir()] == []


def test_size_limit_from_the_environment(make_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ACTQKV_CACHE_MAX_BYTES", "1")
    eng = make_engine(cache=tmp_path / "cache")
    first = eng.prefill(DOC)
    second = eng.prefill(DOC.replace("gulls", "crabs"))
    assert not first.path.exists() and second.path.exists()  # the one just stored is kept
    assert [e["key"] for e in eng.cache.entries()] == [second.key]


def test_default_root_remove_and_clear(make_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("ACTQKV_CACHE_DIR", str(tmp_path / "env-root"))
    assert default_cache_root() == tmp_path / "env-root"
    monkeypatch.delenv("ACTQKV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "actqkv"
    eng = make_engine(cache=True)
    doc = eng.prefill(DOC)
    assert doc.path.parent == tmp_path / "xdg" / "actqkv" / "documents"
    plain = make_engine(cache=False).prefill(DOC)
    assert save_document(plain) == doc.path  # default: into the cache root, same key
    assert eng.cache.remove(doc.key[:10]) and not doc.path.exists()
    eng.prefill(DOC)
    eng.prefill(DOC.replace("gulls", "crabs"))
    assert eng.cache.clear() == 2 and eng.cache.entries() == []


def test_scattered_block_reads_match_contiguous_reads(eng, doc):
    """A request for scattered blocks is split into runs read in parallel; every block comes back
    in the requested order, equal to a plain contiguous read, and a damaged run is still caught."""
    loaded = load_document(eng, doc.path)
    layer = loaded.state.memory[1].blocks
    n = layer.n_blocks
    assert n >= 8
    file = layer.file
    ref_k, ref_v = file.read_range(1, 0, n)
    ids = [n - 1, 0, n // 2, 3]                     # unordered, far apart: several runs
    before = file.runs
    k, v = file.read(1, ids)
    assert file.runs - before >= 3
    assert torch.equal(k, ref_k[ids]) and torch.equal(v, ref_v[ids])
    hits = file.prefetch_hits
    k1, _ = file.read(1, [1])                       # read ahead with block 0, served from the buffer
    assert file.prefetch_hits == hits + 1 and torch.equal(k1[0], ref_k[1])
    offset, length = blocks_offset(doc.path / BLOCKS, "layers.1.values")
    with open(doc.path / BLOCKS, "r+b") as f:       # damage block n//2 only
        f.seek(offset + (n // 2) * (length // n) + 3)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    fresh = load_document(eng, doc.path)
    with pytest.raises(CacheError, match=rf"block {n // 2} of layer 1"):
        fresh.state.memory[1].blocks.file.read(1, [0, n // 2, n - 1])


def test_a_reloaded_document_keeps_its_key_bounds_and_reads_no_block_to_score(make_engine, tmp_path, monkeypatch):
    """The first question after a reload scores blocks from the saved bounds (not by reading every
    block), with the same result as the document in memory (KV saved in the compute dtype: bf16
    KV answers within its rounding, which can flip near-equal choices on a random tiny model)."""
    from actqkv_llm.memory import layer_memory
    from actqkv_llm.persist import state

    monkeypatch.setattr(state, "bounds_to_keep", lambda doc: "exact")   # as on an accelerator
    eng = make_engine("llama", method="actqkv", block_size=8, n_sink=4, n_local=64, exec_block=16,
                      budget=4 + 64 + 8 * 4, prefill_chunk=96)
    doc = eng.prefill_ids(torch.randint(0, 250, (700,), generator=torch.Generator().manual_seed(4)))
    expected = eng.generate_ids(doc, [7, 8, 9], max_new_tokens=4)
    path = eng.save(doc, tmp_path / "doc", kv_dtype="compute")
    measured = []
    real = layer_memory.measure_bounds
    monkeypatch.setattr(layer_memory, "measure_bounds", lambda *a: measured.append(a[1:3]) or real(*a))
    again = eng.load(path)
    layer = eng.adapter.memory_layers[0]
    saved = doc.state.memory[layer].digests["bounds", "exact"].known
    loaded = again.state.memory[layer].digests["bounds", "exact"].known
    assert saved is not None and all(torch.equal(a, b) for a, b in zip(saved, loaded))
    assert eng.generate_ids(again, [7, 8, 9], max_new_tokens=4) == expected
    assert all(a >= loaded[0].shape[0] for a, _ in measured)   # at most the question's own blocks
    again.state.memory[layer].bounds("fixed")   # never measured during the prefill: read from the blocks
    assert (0, loaded[0].shape[0]) in measured


def test_a_document_filling_the_window_keeps_the_fixed_angle_bounds_its_questions_need(make_engine, tmp_path, monkeypatch):
    """Prefilled inside the window (exact positions), its questions run past it (fixed angle):
    the saved document carries the fixed angle's bounds, measured when saving."""
    from actqkv_llm.persist import state

    monkeypatch.setattr(state, "bounds_to_keep", lambda doc: "fixed")   # as on an accelerator, past the window
    eng = make_engine("llama", method="actqkv")
    doc = eng.prefill_ids(torch.randint(0, 250, (1024,), generator=torch.Generator().manual_seed(4)))
    layer = eng.adapter.memory_layers[0]
    assert doc.state.memory[layer].digests["bounds", "fixed"].known is None
    again = eng.load(eng.save(doc, tmp_path / "doc"))
    n = doc.state.memory[layer].n_blocks
    assert again.state.memory[layer].digests["bounds", "fixed"].n_known == n > 0
