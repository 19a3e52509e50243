"""Caches that can be trusted: no deletion outside the cache root, no lost prefill, no silent wrong
document (the "Caches that can be trusted" issue, one section per numbered finding)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import diskcache
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from actqkv_llm import CacheError, CacheMismatchError, Engine, cli
from actqkv_llm.persist import DocumentCache, load_document
from actqkv_llm.files import paths as paths_mod
from actqkv_llm.persist import writer as writer_mod
from actqkv_llm.persist.format import BLOCKS, FORMAT_VERSION, MANIFEST, STATE
from actqkv_llm.persist.reader import DiskBlocks
from tiny_models import byte_tokenizer, tiny_model

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DOC_A = " ".join(f"Line {i}: the keeper counts {i * 7} gulls on the quay." for i in range(11))
DOC_B = DOC_A.replace("gulls", "crabs")
Q = "How many gulls on line 3?"


def ask(eng, doc) -> str:
    return eng.ask(doc, Q, max_new_tokens=8)


@pytest.fixture
def eng(tmp_path):
    return Engine(tiny_model(), byte_tokenizer(), progress=False, cache=tmp_path / "root")


@pytest.fixture
def victim(tmp_path) -> Path:
    """A directory outside the cache root that nothing may touch."""
    v = tmp_path / "victim"
    (v / "sub").mkdir(parents=True)
    (v / "sub" / "file").write_text("precious")
    (v / "keep.txt").write_text("precious too")
    return v


def intact(v: Path) -> bool:
    return (v / "sub" / "file").read_text() == "precious" and (v / "keep.txt").read_text() == "precious too"


def index_db(eng) -> Path:
    return eng.cache.root / "document-index" / "cache.db"


def set_row(eng, key: str, value: dict) -> None:
    """Write an index row the way a foreign diskcache client would (plain JSONDisk)."""
    eng.cache.close()
    with diskcache.Cache(str(eng.cache.root / "document-index"), disk=diskcache.JSONDisk) as other:
        other.set(key, value)


# ------------------------------------------------------------------ 1. index rows never steer file operations
def test_row_with_a_path_deletes_nothing_outside_the_root(eng, victim):
    doc = eng.prefill(DOC_A)
    rel = os.path.relpath(victim, eng.cache.documents)
    set_row(eng, doc.key, {"path": rel, "size": 1, "last_used": 1.0, "created": 1.0})
    with pytest.warns(RuntimeWarning, match="did not write"):
        again = eng.prefill(DOC_A)            # lookup: the row is reported, the directory is the truth
    assert isinstance(again.state.memory[0].blocks, DiskBlocks) and again.path == doc.path
    set_row(eng, doc.key, {"path": rel, "size": 1, "last_used": 1.0, "created": 1.0})
    with pytest.warns(RuntimeWarning, match="did not write"):
        assert eng.cache.remove(doc.key)      # `actqkv rm KEY`
    assert intact(victim) and not doc.path.exists()


def test_row_naming_a_file_never_makes_us_delete_it(eng, victim):
    doc = eng.prefill(DOC_A)
    target = os.path.relpath(victim / "sub" / "file", eng.cache.root / "document-index")
    eng.cache.close()
    con = sqlite3.connect(index_db(eng))
    con.execute("UPDATE Cache SET filename = ?, mode = 2", (target,))  # MODE_BINARY, value in "a file"
    con.commit()
    con.close()
    with pytest.warns(RuntimeWarning, match="stored in a file"):
        assert eng.cache.lookup(eng, DOC_A, "chat", doc.token_ids) is not None
    eng.cache.remove(doc.key)
    eng.cache.gc(max_bytes=0, grace=0)
    assert intact(victim)


def test_a_symlinked_entry_is_never_followed(eng, victim):
    a, b = eng.prefill(DOC_A), eng.prefill(DOC_B)
    shutil.rmtree(a.path)
    os.symlink(b.path, a.path)                # documents/<key A> -> B's directory
    with pytest.raises(CacheError, match="symbolic link"):
        eng.load(a.key)
    os.unlink(a.path)
    os.symlink(victim, a.path)                # ... or -> somewhere outside
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        fresh = eng.prefill(DOC_A, cache=True)  # not used; prefilled again and saved in its place
    assert fresh.path == a.path and not a.path.is_symlink() and ask(eng, fresh)
    os.rename(a.path, a.path.with_name("moved"))
    os.symlink(victim, a.path)
    eng.cache.remove(a.key)
    eng.cache.gc(max_bytes=0, grace=0)
    assert intact(victim) and b.path.is_dir() is False  # B evicted by max_bytes=0, victim untouched


def test_a_swapped_document_is_refused_by_its_key(eng):
    a, b = eng.prefill(DOC_A), eng.prefill(DOC_B)
    for name in (MANIFEST, STATE, BLOCKS):    # B's files copied into A's directory
        shutil.copyfile(b.path / name, a.path / name)
    with pytest.raises(CacheError, match="belongs to another document"):
        eng.load(a.key)
    # ... even with the manifest's key edited to A's: the key must match the manifest's content
    m = json.loads((a.path / MANIFEST).read_text())
    m["key"] = a.key
    (a.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CacheError, match="field 'key' does not match"):
        eng.load(a.key)
    # ... and the lookup never returns B for A (the entry is reported and prefilled again)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = eng.prefill(DOC_A)            # the lookup never returns B for A
    assert again.text == DOC_A and "crabs" not in again.text


# ------------------------------------------------------------------ 2. a garbled index is rebuilt
@pytest.mark.parametrize("garble", ["overwrite", "directory", "symlink"])
def test_garbled_index_is_rebuilt_and_answers(eng, garble, tmp_path):
    doc = eng.prefill(DOC_A)
    expected = ask(eng, doc)
    eng.cache.close()
    db = index_db(eng)
    outside = tmp_path / "elsewhere.db"
    outside.write_bytes(b"not mine")
    db.unlink()
    if garble == "overwrite":
        db.write_bytes(os.urandom(4096))
    elif garble == "directory":
        db.mkdir()
    else:
        os.symlink(outside, db)
    other = Engine(eng.model, eng.tokenizer, progress=False, cache=eng.cache.root)
    with pytest.warns(RuntimeWarning, match=r"document index .* was unreadable .* rebuilt it from 1 cached"):
        again = other.prefill(DOC_A)
    assert isinstance(again.state.memory[0].blocks, DiskBlocks)  # served from the cache, not prefilled
    assert ask(other, again) == expected
    assert [e["key"] for e in other.cache.entries()] == [doc.key]
    assert outside.read_bytes() == b"not mine"


def test_doctor_and_rebuild_index_commands(eng, capsys):
    eng.prefill(DOC_A)
    root = str(eng.cache.root)
    eng.cache.close()
    index_db(eng).write_bytes(b"garbage" * 100)
    assert cli.main(["doctor", "--cache-dir", root]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 and "index rebuilt" in out and "1 document(s)" in out
    assert len(err.strip().splitlines()) == 1 and err.startswith("actqkv: warning: ")
    assert cli.main(["rebuild-index", "--cache-dir", root]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == f"actqkv: rebuilt the document index of {root} from 1 cached document(s)"


# ------------------------------------------------------------------ 3. a failed save never costs the answer
def test_disk_full_during_save_still_answers(eng, monkeypatch):
    expected = ask(eng, eng.prefill(DOC_A, cache=False))

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod, "_write_all", disk_full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc = eng.prefill(DOC_A)
    ours = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(ours) == 1 and "not saved" in ours[0] and "disk is full" in ours[0] and doc.key is None
    assert ask(eng, doc) == expected
    assert list(eng.cache.documents.iterdir()) == []  # nothing half-written left behind


def test_disk_full_in_the_cli_answers_with_one_warning(tmp_path, capsys, monkeypatch):
    book = tmp_path / "book.txt"
    book.write_text(DOC_A)
    monkeypatch.setattr(cli, "make_engine", lambda args: Engine(tiny_model(), byte_tokenizer(), progress=False,
                                                                cache=args.cache_dir))
    monkeypatch.setattr(writer_mod, "_write_all",
                        lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    code = cli.main(["ask", str(book), Q, "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip()
    warned = [line for line in err.splitlines() if line.startswith("actqkv: warning:")]
    assert len(warned) == 1 and "disk is full" in warned[0]


# ------------------------------------------------------------------ 4. save writes only where it may
def test_a_lone_manifest_json_survives(eng, tmp_path):
    doc = eng.prefill(DOC_A, cache=False)
    target = tmp_path / "theirs"
    target.mkdir()
    (target / MANIFEST).write_text('{"mine": true}')
    with pytest.raises(CacheError, match="refusing to overwrite"):
        doc.save(target)
    assert (target / MANIFEST).read_text() == '{"mine": true}'
    empty = tmp_path / "empty"
    empty.mkdir()
    assert doc.save(empty) == empty            # an empty directory is fine
    other = eng.prefill(DOC_B, cache=False)
    assert other.save(empty) == empty          # ... and one of ours is replaced
    assert load_document(eng, empty).text == DOC_B
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="not a directory"):
        doc.save(tmp_path / "file")


# ------------------------------------------------------------------ 5. gc and leftovers
def test_gc_removes_stale_temp_dirs_and_reports_bytes(eng):
    doc = eng.prefill(DOC_A)
    docs = eng.cache.documents
    stale = docs / f".tmp-{doc.key}-1-dead"
    stale.mkdir()
    (stale / BLOCKS).write_bytes(b"\0" * 5000)
    old = time.time() - 600
    for p in (stale / BLOCKS, stale):
        os.utime(p, (old, old))
    young = docs / f".tmp-{doc.key}-2-live"
    young.mkdir()
    (young / BLOCKS).write_bytes(b"\0" * 100)
    trash = docs / ".trash-x-1-dead"
    (trash / "locked").mkdir(parents=True)
    (trash / "locked" / "f").write_bytes(b"\0" * 700)
    os.chmod(trash / "locked", 0)
    report = eng.cache.collect()
    assert report.temp_dirs == 2 and report.bytes_freed == 5700 and report.problems == []
    assert not stale.exists() and not trash.exists() and young.exists() and doc.path.exists()


def test_permission_errors_are_reported_not_treated_as_damage(eng, monkeypatch, capsys):
    doc = eng.prefill(DOC_A)
    eng.cache._db("delete", doc.key)          # unknown to the index: gc would check it
    old = time.time() - 7200
    for p in [*doc.path.iterdir(), doc.path]:
        os.utime(p, (old, old))
    real_open = paths_mod.os.open

    def denied(path, flags, *a):
        if str(path).startswith(str(doc.path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(paths_mod.os, "open", denied)
    report = eng.cache.collect()
    assert doc.path.exists() and report.removed == [] and "permission denied" in report.problems[0]
    with pytest.warns(RuntimeWarning, match="permission denied"):
        assert eng.cache.lookup(eng, DOC_A, "chat", doc.token_ids) is None
    assert doc.path.exists()                  # left as it is
    monkeypatch.setattr(paths_mod.os, "open", real_open)
    assert eng.cache.lookup(eng, DOC_A, "chat", doc.token_ids) is not None


# ------------------------------------------------------------------ 6. every loader path is bounded
def test_hostile_manifests_and_files(eng, tmp_path):
    doc = eng.prefill(DOC_A)
    saved = {n: (doc.path / n).read_bytes() for n in (MANIFEST, STATE, BLOCKS)}

    def restore():
        for n, data in saved.items():
            p = doc.path / n
            if p.is_symlink() or p.exists():
                p.unlink() if not p.is_dir() or p.is_symlink() else shutil.rmtree(p)
            p.write_bytes(data)

    cases = {
        "nested": lambda: (doc.path / MANIFEST).write_text("[" * 100000 + "]" * 100000),
        "fifo": lambda: ((doc.path / MANIFEST).unlink(), os.mkfifo(doc.path / MANIFEST)),
        "zero": lambda: ((doc.path / STATE).unlink(), os.symlink("/dev/zero", doc.path / STATE)),
        "huge": lambda: (doc.path / MANIFEST).write_bytes(b" " * (2 << 20)),
        "dir": lambda: ((doc.path / BLOCKS).unlink(), (doc.path / BLOCKS).mkdir()),
    }
    expected = {"nested": "nested deeper", "fifo": "is a FIFO", "zero": "symbolic link", "huge": "too large",
                "dir": "is a directory"}
    for name, corrupt in cases.items():
        corrupt()
        with pytest.raises(CacheError, match=expected[name]) as info:
            load_document(eng, doc.path)
        assert str(doc.path) in str(info.value)
        restore()
    m = json.loads(saved[MANIFEST])
    m["n_blocks"] = [n + 1 for n in m["n_blocks"]]  # shapes inconsistent with the files
    (doc.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CacheError, match=r"safetensors is corrupt: .*layer"):
        load_document(eng, doc.path)


# ------------------------------------------------------------------ 7. the command line
@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "make_engine", lambda args: Engine(tiny_model(), byte_tokenizer(), progress=False,
                                                                cache=False))
    book = tmp_path / "book.txt"
    book.write_text(DOC_A)
    return book


def run_cli(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actqkv: error: "), err
    return lines[0]


@pytest.mark.parametrize("question", ["", "   \n\t"])
def test_empty_questions_are_refused(tiny_cli, capsys, question, tmp_path):
    code, out, err = run_cli(capsys, "ask", str(tiny_cli), question)
    assert code == 2 and "question is empty" in one_line(err) and out == ""
    qf = tmp_path / "q.txt"
    qf.write_text(question)
    code, _, err = run_cli(capsys, "ask", str(tiny_cli), "--question-file", str(qf))
    assert code == 2 and "question is empty" in one_line(err)


def test_question_file_and_stdin(tiny_cli, capsys, tmp_path, monkeypatch):
    import io

    code, out, _ = run_cli(capsys, "-q", "ask", str(tiny_cli), Q, "--max-new-tokens", "4", "--no-cache")
    assert code == 0
    qf = tmp_path / "q.txt"
    qf.write_text(Q + "\n")
    assert run_cli(capsys, "-q", "ask", str(tiny_cli), "--question-file", str(qf), "--max-new-tokens", "4",
                   "--no-cache")[1] == out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(Q.encode())))
    assert run_cli(capsys, "-q", "ask", str(tiny_cli), "--question-file", "-", "--max-new-tokens", "4",
                   "--no-cache")[1] == out
    code, _, err = run_cli(capsys, "ask", str(tiny_cli), Q, "--question-file", str(qf))
    assert code == 2 and "not both" in one_line(err)
    code, _, err = run_cli(capsys, "ask", "-", "--question-file", "-")
    assert code == 2 and "standard input" in one_line(err)


def test_fifo_and_devices_are_refused_as_documents(tiny_cli, capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "ask", str(fifo), Q)
    assert code == 2 and "FIFO" in one_line(err)
    code, _, err = run_cli(capsys, "ask", "/dev/zero", Q)
    assert code == 2 and "character device" in one_line(err) and "prefill-chunk" not in err


def test_cache_dir_at_a_file(tiny_cli, capsys, tmp_path):
    for argv in (["ask", str(tiny_cli), Q], ["ls"], ["gc"], ["rm", "--all"], ["doctor"]):
        code, _, err = run_cli(capsys, *argv, "--cache-dir", str(tiny_cli))
        assert code == 2 and "is not a directory" in one_line(err) and "Errno" not in err


BAD_OPTIONS = [
    ["ask", "{doc}", "q", "--block-size", "0"],
    ["ask", "{doc}", "q", "--method", "magic"],
    ["ask", "{doc}", "q", "--top-p", "2"],
    ["ask", "{doc}", "q", "--max-new-tokens", "0"],
    ["ask", "{doc}", ""],
    ["ask", "{doc}", "q", "--cache-dir", "{doc}"],
    ["ask", "/dev/zero", "q"],
    ["gc", "--max-bytes", "lots"],
]


def test_bad_options_are_refused_without_importing_torch(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(DOC_A)
    script = ("import sys, json\nfrom actqkv_llm import cli\ncodes = []\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    try:\n        codes.append(cli.main(argv))\n"
              "    except SystemExit as exc:\n        codes.append(exc.code)\n"
              "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules,"
              " 'transformers': 'transformers' in sys.modules}))\n")
    argvs = [[a.replace("{doc}", str(book)) for a in argv] for argv in BAD_OPTIONS]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"codes": [2] * len(BAD_OPTIONS), "torch": False, "transformers": False}, out.stderr
    assert all(line.startswith("actqkv: error: ") for line in out.stderr.strip().splitlines())


@pytest.mark.parametrize("argv", BAD_OPTIONS[:3] + BAD_OPTIONS[5:7])
def test_bad_options_refused_in_under_1_s(tmp_path, argv):
    book = tmp_path / "book.txt"
    book.write_text(DOC_A)
    command = [sys.executable, "-m", "actqkv_llm", *[a.replace("{doc}", str(book)) for a in argv]]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert seconds < 1.0, f"{seconds:.2f} s"


# ------------------------------------------------------------------ 9. KV stored compactly, format version 3
LONG = " ".join(f"Line {i}: the keeper counts {i * 7} gulls on the quay." for i in range(120))
# Bytes of each document's cache with the tiny llama in format version 1 (KV in the compute dtype,
# fp32 on CPU; int64 token ids; 32-byte block digests; summary keys), measured with the code at
# b6834c2. The short document (532 tokens) weighs the per-document tensors that do not halve (last
# logits, window scores, activation statistics): format version 2 stored 0.509 of it.
V1_BYTES = {DOC_A: 439781, LONG: 4883795}


@pytest.mark.parametrize("text", [DOC_A, LONG], ids=["short", "long"])
def test_fp32_engine_stores_bf16_and_halves_the_bytes(eng, tmp_path, text):
    doc = eng.prefill(text, cache=False)
    path = doc.save(tmp_path / "doc")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["dtype"] == "float32" and manifest["kv_dtype"] == "bfloat16"
    assert manifest["format_version"] == FORMAT_VERSION == 4
    total = sum(p.stat().st_size for p in path.iterdir())
    # version 4 checksums each KV head of a block (32 bytes per head instead of per block): 3% of
    # this tiny model's 1 KiB blocks, 0.3% of SmolLM2's; the KV itself is what halves
    per_head = sum(manifest["n_blocks"]) * (manifest["kv_heads"] - 1) * 32
    assert (total - per_head) / V1_BYTES[text] <= 0.5, (total, per_head, V1_BYTES[text])
    loaded = load_document(eng, path)
    for a, b in zip(doc.state.memory, loaded.state.memory):
        assert b.sink_k.dtype == torch.float32 and torch.equal(b.sink_k, a.sink_k.to(torch.bfloat16).float())
        if a.n_blocks:
            k, v = b.blocks.read_range(0, b.n_blocks)
            assert k.dtype == torch.float32 and torch.equal(k, a.blocks.keys[: a.n_blocks].to(torch.bfloat16).float())
    assert torch.allclose(loaded.session().forward(torch.tensor([65, 66]), phase="question"),
                          doc.session().forward(torch.tensor([65, 66]), phase="question"), atol=0.02)
    exact = load_document(eng, doc.save(tmp_path / "exact", kv_dtype="compute"))
    assert ask(eng, exact) == ask(eng, doc)


def test_older_format_is_refused_clearly(eng):
    doc = eng.prefill(DOC_A)
    m = json.loads((doc.path / MANIFEST).read_text())
    m["format_version"] = 1
    (doc.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CacheMismatchError, match=r"format version 1, older than this actqkv_llm reads"):
        eng.load(doc.key)
    with pytest.warns(RuntimeWarning, match="older than"):
        fresh = eng.prefill(DOC_A)            # prefilled again; its save replaces the old entry
    assert json.loads((fresh.path / MANIFEST).read_text())["format_version"] == FORMAT_VERSION


def test_summary_keys_are_kept_only_for_scorers_that_read_them(eng, tmp_path):
    for engine, kept in ((eng, False), (eng.with_method("infllm"), True)):  # bound scorer / dot scorer
        doc = engine.prefill(DOC_A, cache=False)
        assert doc.n_blocks and [m.summaries.n_blocks for m in doc.state.memory] == \
            [m.n_blocks if kept else 0 for m in doc.state.memory]
        path = doc.save(tmp_path / engine.config.method)
        with safe_open(path / STATE, "pt") as f:
            assert any(name.endswith(".summaries") for name in f.keys()) == kept
        loaded = load_document(engine, path)
        assert all(torch.equal(a.summaries.all(), b.summaries.all().to(torch.bfloat16).float())
                   for a, b in zip(loaded.state.memory, doc.state.memory))


def as_older_version(path: Path, version: int, summaries: bool = False) -> None:
    """Rewrite a saved document as format ``version`` (2 or 3): one checksum per whole block (keys,
    values) instead of one per KV head of a block; version 2 also stored summary keys for every
    method (``summaries``: add some)."""
    m = json.loads((path / MANIFEST).read_text())
    state = load_file(path / STATE)
    with safe_open(path / BLOCKS, "pt") as f:
        for i, n in enumerate(m["n_blocks"]):
            if n:
                parts = [f.get_tensor(f"layers.{i}.{w}").contiguous().view(torch.uint8).reshape(n, -1).numpy()
                         for w in ("keys", "values")]
                raw = b"".join(hashlib.sha256(parts[w][j]).digest()[:16] for j in range(n) for w in (0, 1))
                state[f"layers.{i}.block_sha256"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(n, 2, 16)
                if summaries:
                    state[f"layers.{i}.summaries"] = torch.ones((n, m["kv_heads"], m["head_dim"]), dtype=torch.bfloat16)
    data = st_save(state, metadata={"format": "actqkv-document", "format_version": str(version), "content": "state",
                                    "key": m["key"]})
    (path / STATE).write_bytes(data)
    m["format_version"], m["block_checksums"] = version, "sha256-128"
    m["files"][STATE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / MANIFEST).write_text(json.dumps(m))


def test_version_2_cache_is_read_as_it_is(eng):
    """Version 2 stored summary keys for every method; a method that does not read them ignores them."""
    doc = eng.prefill(DOC_A)
    before = ask(eng, eng.load(doc.key))
    as_older_version(doc.path, 2, summaries=True)
    assert ask(eng, load_document(eng, doc.path)) == before


def test_version_3_cache_is_read_whole_blocks_and_version_4_reads_the_heads_it_picks(eng, tmp_path):
    """Version 4 checksums each KV head of a block, so the first question after a reload reads the
    heads its per-head selection picks; version 3 (one checksum per block) reads whole blocks.
    Both give the same answer, and both catch a damaged byte in the heads they read."""
    doc = eng.prefill(LONG, cache=False)
    v4 = doc.save(tmp_path / "v4")
    v3 = doc.save(tmp_path / "v3")
    as_older_version(v3, 3)
    read, got = {}, {}
    for name, path in (("v4", v4), ("v3", v3)):
        loaded = load_document(eng, path)
        assert ask(eng, loaded) == ask(eng, doc)
        # what a per-head selection asks of a reloaded layer: each KV head its own blocks
        mem = next(m for m in load_document(eng, path).state.memory if m.n_blocks)
        ids = torch.stack([torch.arange(0, 10), torch.arange(20, 30)])[:mem.kv_heads]
        got[name] = mem.blocks.gather(ids, torch.device("cpu"))
        read[name] = mem.blocks.file.bytes_read
    unit = mem.blocks.file.unit_bytes
    assert read["v4"] == ids.numel() * 2 * unit                 # the picked heads' keys and values
    fresh = next(m for m in load_document(eng, v4).state.memory if m.n_blocks)
    fresh.blocks.gather(ids, torch.device("cpu"), values=False)   # the rerank reads candidates' keys only
    assert fresh.blocks.file.bytes_read == ids.numel() * unit
    assert read["v3"] >= 20 * mem.kv_heads * 2 * unit           # every head of 20 blocks
    assert all(torch.equal(a, b) for a, b in zip(got["v4"], got["v3"]))
    # a flipped byte in the values of one KV head of one block: found when that head is read
    m = json.loads((v4 / MANIFEST).read_text())
    hkv, layer = m["kv_heads"], next(i for i, n in enumerate(m["n_blocks"]) if n)
    with safe_open(v4 / BLOCKS, "pt") as f:
        n = m["n_blocks"][layer]
    loaded = load_document(eng, v4)
    file = loaded.state.memory[layer].blocks.file
    unit = file.unit_bytes
    raw = (v4 / BLOCKS).read_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    begin = json.loads(raw[8:header])[f"layers.{layer}.values"]["data_offsets"][0]
    at = header + begin + (2 * hkv + 1) * unit + 5        # block 2, head 1
    with open(v4 / BLOCKS, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([raw[at] ^ 0x20]))
    fresh = load_document(eng, v4).state.memory[layer].blocks.file
    k, _ = fresh.read_units(layer, [2, n - 1], [0, 1])    # other heads of block 2 are intact
    assert k.shape[0] == 2
    with pytest.raises(CacheError, match=rf"block 2 of layer {layer}"):
        fresh.read_units(layer, [0, 2], [1, 1])
    with pytest.raises(CacheError, match=rf"block 2 of layer {layer}"):
        fresh.read_range(layer, 0, n)


def test_index_rows_hold_only_facts(eng):
    doc = eng.prefill(DOC_A)
    eng.cache.close()
    con = sqlite3.connect(index_db(eng))
    [(value, filename)] = con.execute("SELECT value, filename FROM Cache").fetchall()
    con.close()
    assert filename is None and set(json.loads(zlib.decompress(value))) == {"size", "last_used", "created"}
    assert eng.cache.path_for(doc.key) == doc.path
    for bad in ("../" + doc.key[3:], doc.key.upper(), "/etc", ""):
        with pytest.raises(CacheError, match="not a document cache key"):
            eng.cache.path_for(bad)


def test_cache_root_at_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CacheError, match="is not a directory"):
        DocumentCache(f)
    with pytest.raises(CacheError, match="is a part of that path a file"):
        DocumentCache(f / "sub")


# ------------------------------------------------------------------ 8. converted model weights are verified
def test_converted_weights_are_verified(tmp_path, monkeypatch):
    from actqkv_llm.models import loading

    root = tmp_path / "root"
    model_dir = root / "models" / ("a" * 64)
    model_dir.mkdir(parents=True)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(os.urandom(2 << 20))          # above the memo threshold
    (model_dir / "config.json").write_text("{}")
    record = {"format": loading.CONVERSION_FORMAT, "gguf_sha256": "a" * 64,
              "files": loading._record_files(model_dir, root)}
    (model_dir / loading.MANIFEST_NAME).write_text(json.dumps(record))
    assert loading._converted_ok(model_dir, "a" * 64, root)
    from actqkv_llm.models import cache_dir

    hashed = []
    real = cache_dir.sha256_file
    monkeypatch.setattr(cache_dir, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    assert loading._converted_ok(model_dir, "a" * 64, root) and hashed == []  # unchanged: sizes only
    data = bytearray(weights.read_bytes())
    data[12345] ^= 0xFF                                 # same size, new content (and mtime)
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(time.time_ns() + 10 ** 9,) * 2)
    with pytest.warns(RuntimeWarning, match=r"does not match its recorded sha256\); converting the GGUF again"):
        assert not loading._converted_ok(model_dir, "a" * 64, root)
    assert hashed == ["model.safetensors"]              # hashed once, after the mtime changed
    weights.write_bytes(bytes(data[:-1]))
    with pytest.warns(RuntimeWarning, match=r"bytes, \d+ recorded"):
        assert not loading._converted_ok(model_dir, "a" * 64, root)
    (model_dir / "extra.safetensors").write_bytes(b"x")
    weights.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="unrecorded weight file"):
        assert not loading._converted_ok(model_dir, "a" * 64, root)
    record["format"] = 1                                # an older conversion (no record): redone
    (model_dir / loading.MANIFEST_NAME).write_text(json.dumps(record))
    assert not loading._converted_ok(model_dir, "a" * 64, root)


def test_rm_command_with_a_hostile_row_deletes_nothing_outside(eng, victim, capsys):
    doc = eng.prefill(DOC_A)
    set_row(eng, doc.key, {"path": str(victim), "size": 1, "last_used": 1.0, "created": 1.0})
    assert cli.main(["rm", doc.key[:10], "--cache-dir", str(eng.cache.root)]) == 0
    err = capsys.readouterr().err
    assert "did not write" in err and intact(victim) and not doc.path.exists()
    assert cli.main(["rm", "--all", "--cache-dir", str(eng.cache.root)]) == 0 and intact(victim)


def test_an_unusable_cache_root_never_costs_the_answer(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    eng = Engine(tiny_model(), byte_tokenizer(), progress=False, cache=f)
    with pytest.warns(RuntimeWarning, match="document cache is off: the cache root .* is not a directory"):
        doc = eng.prefill(DOC_A)
    assert ask(eng, doc) and doc.key is None and f.read_text() == "x"


def test_gc_command_reports_temp_dirs_and_bytes(eng, capsys):
    eng.prefill(DOC_A)
    stale = eng.cache.documents / ".tmp-dead-1-x"
    stale.mkdir()
    (stale / BLOCKS).write_bytes(b"\0" * 4096)
    old = time.time() - 600
    os.utime(stale / BLOCKS, (old, old))
    os.utime(stale, (old, old))
    assert cli.main(["gc", "--cache-dir", str(eng.cache.root)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("actqkv: removed 0 document(s) and 1 leftover temporary dir(s), freed 4.0 KiB;")
    assert len(err.splitlines()) == 1 and not stale.exists()
