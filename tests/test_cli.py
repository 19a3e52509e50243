"""The ``actqkv`` command line, run in-process on a tiny random model (and once on the real one)."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actqkv_llm import Engine, RetrievalConfig
from actqkv_llm import cli
from tiny_models import byte_tokenizer, tiny_model

# A document a few times longer than the tiny model's local window (64 tokens), so it has blocks.
DOC = " ".join(f"Line {i}: the lighthouse keeper counts {i * 7} gulls on the quay." for i in range(40))


def _has_persist() -> bool:
    try:
        return hasattr(importlib.import_module("actqkv_llm.persist"), "DocumentCache")
    except ImportError:
        return False


needs_persist = pytest.mark.skipif(not _has_persist(), reason="actqkv_llm.persist (DocumentCache) not there yet")


@pytest.fixture
def engines(monkeypatch):
    """Replace the CLI's engine factory by a tiny model; returns the engines it built."""
    built: list[Engine] = []
    tokenizer = byte_tokenizer()

    def make(args):
        cache = False if args.no_cache or not _has_persist() else (args.cache_dir or True)
        eng = Engine(tiny_model(), tokenizer, progress=False, cache=cache, **cli.retrieval_options(args))
        built.append(eng)
        return eng

    monkeypatch.setattr(cli, "make_engine", make)
    return built


@pytest.fixture
def doc(tmp_path) -> Path:
    path = tmp_path / "book.txt"
    path.write_text(DOC, encoding="utf-8")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); argparse's own exits included."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


ASK = ("--max-new-tokens", "12")


# ---------------------------------------------------------------------------------------- ask
def test_ask_streams_the_answer(engines, doc, capsys, monkeypatch):
    code, out, _ = run(capsys, "-q", "ask", str(doc), "How many gulls?", *ASK, "--json")
    assert code == 0
    answer = json.loads(out)["answer"]

    writes: list[str] = []

    class Terminal(io.StringIO):
        def write(self, s):
            writes.append(s)
            return super().write(s)

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert cli.main(["-q", "ask", str(doc), "How many gulls?", *ASK]) == 0
    printed = "".join(writes)
    assert printed.rstrip("\n") == answer.rstrip("\n")
    assert len([w for w in writes if w.strip("\n")]) > 1  # piece by piece, not one write at the end


def test_ask_json_record(engines, doc, capsys):
    code, out, err = run(capsys, "ask", str(doc), "How many gulls?", *ASK, "--json")
    assert code == 0
    record = json.loads(out)
    assert set(record) >= {"answer", "sources", "usage", "document"}
    assert isinstance(record["answer"], str)
    assert record["document"]["tokens"] == record["usage"]["cached_tokens"] > 0
    assert record["usage"]["completion_tokens"] <= 12
    for source in record["sources"]:
        assert set(source) == {"start", "end", "text", "score"} and 0 <= source["score"] <= 1
    assert "Traceback" not in err


def test_ask_sources_and_status(engines, doc, capsys):
    code, out, err = run(capsys, "ask", str(doc), "How many gulls?", *ASK, "--sources")
    assert code == 0
    assert "Sources:" in out
    assert "tokens ready" in err  # status lines go to stderr, the answer to stdout


def test_quiet_prints_only_the_answer(engines, doc, capsys):
    code, out, err = run(capsys, "-q", "ask", str(doc), "How many gulls?", *ASK)
    assert code == 0 and err == "" and out.endswith("\n")
    code, out2, err = run(capsys, "ask", "-q", str(doc), "How many gulls?", *ASK)  # after the command too
    assert code == 0 and err == "" and out2 == out


def test_ask_reads_stdin_and_raw(engines, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DOC.encode())))
    code, out, _ = run(capsys, "-q", "ask", "-", "The keeper counts", "--raw", *ASK, "--json")
    assert code == 0
    assert json.loads(out)["document"]["layout"] == "raw"


def test_options_reach_the_engine(engines, doc, capsys):
    code, _, _ = run(capsys, "-q", "ask", str(doc), "q", "--max-new-tokens", "2", "--method", "infllm",
                     "--block-size", "8", "--n-local", "48", "--exec-block", "16", "--budget", "120",
                     "--question-weight", "2.5", "--offload", "off", "--batch-prefill", "on",
                     "--prefill-kernel", "torch", "--decode-kernel", "torch", "--decode-compile", "off",
                     "--decode-static-scoring", "off", "--question-batch", "on")
    assert code == 0
    cfg = engines[-1].config
    assert cfg.decode_static_scoring is False and cfg.question_batch is True
    assert (cfg.method, cfg.block_size, cfg.n_local, cfg.exec_block, cfg.budget, cfg.question_weight,
            cfg.offload, cfg.batch_prefill, cfg.prefill_kernel, cfg.decode_kernel, cfg.decode_compile) == \
        ("infllm", 8, 48, 16, 120, 2.5, False, True, "torch", "torch", False)
    assert cfg.n_sink == RetrievalConfig.for_model(1024).n_sink  # not given: the model-scaled default


def test_every_retrieval_option_has_a_flag():
    flags = {name for _flag, name, _t, _h in cli.RETRIEVAL_FLAGS} | {"method", "budget", "offload", "batch_prefill",
                                                                   "decode_graph", "prefill_kernel", "decode_kernel",
                                                                   "decode_compile", "decode_joined_projections",
                                                                   "decode_static_scoring", "question_batch"}
    fields = {f.name for f in dataclasses.fields(RetrievalConfig) if not f.name.startswith("_")}
    assert fields == flags


# ---------------------------------------------------------------------------------------- errors
def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("actqkv: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("content, args, match", [
    (None, (), "no such file"),
    (b"", (), "empty"),
    (b"  \n\t\n", (), "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", (), "binary"),
    ("caf\u00e9 au lait".encode("latin-1"), (), "not UTF-8"),
    (DOC.encode(), ("--block-size", "0"), "block_size"),
    (DOC.encode(), ("--n-local", "4"), "n_local"),
    (DOC.encode(), ("--method", "magic"), "invalid choice"),
    (DOC.encode(), ("--block-size", "big"), "invalid int"),
    (DOC.encode(), ("--max-new-tokens", "0"), "max_new_tokens"),
    (DOC.encode(), ("--top-p", "2"), "top_p"),
    (DOC.encode(), ("--no-such-option",), "unrecognized"),
])
def test_errors_are_one_line_with_exit_code_2(engines, tmp_path, capsys, content, args, match):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "ask", str(path), "question?", *args)
    assert code == 2
    assert match in _one_line_error(err)
    assert out == ""


def test_directory_and_chat_from_stdin_are_usage_errors(engines, tmp_path, capsys):
    code, _, err = run(capsys, "ask", str(tmp_path), "q")
    assert code == 2 and "directory" in _one_line_error(err)
    code, _, err = run(capsys, "chat", "-")
    assert code == 2 and "standard input" in _one_line_error(err)


def test_debug_shows_the_traceback(engines, doc, capsys):
    code, _, err = run(capsys, "--debug", "ask", str(doc), "q", "--block-size", "0")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("actqkv: error: ")
    code, _, err = run(capsys, "ask", str(doc), "q", "--block-size", "0", "--debug")  # after the command
    assert "Traceback" in err


def test_unexpected_failure_exit_1_suggests_debug(monkeypatch, doc, capsys):
    def broken(args):
        raise RuntimeError("the model fell over\nsecond line")

    monkeypatch.setattr(cli, "make_engine", broken)
    code, _, err = run(capsys, "ask", str(doc), "q")
    assert code == 1
    line = _one_line_error(err)
    assert "the model fell over second line" in line and "--debug" in line


def test_missing_model_is_a_usage_error(doc, capsys, tmp_path):
    code, _, err = run(capsys, "-q", "ask", str(doc), "q", "--model", str(tmp_path / "nope"))
    assert code == 2
    assert "nope" in _one_line_error(err)


def test_gguf_file_needs_model(doc, capsys):
    code, _, err = run(capsys, "ask", str(doc), "q", "--gguf-file", "x.gguf")
    assert code == 2 and "--model" in _one_line_error(err)


# ---------------------------------------------------------------------------------------- chat
def test_chat_answers_each_line_with_one_prefill(engines, doc, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("How many gulls?\nWho counts them?\n\nnever asked\n"))
    code, out, _ = run(capsys, "-q", "chat", str(doc), *ASK, "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in records] == ["How many gulls?", "Who counts them?"]
    assert len(engines) == 1


def test_chat_stops_at_exit_and_eof(engines, doc, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first?\nexit\nsecond?\n"))
    code, out, _ = run(capsys, "-q", "chat", str(doc), *ASK, "--json")
    assert code == 0 and len(out.splitlines()) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("one?\ntwo?"))  # no final newline, then EOF
    code, out, _ = run(capsys, "-q", "chat", str(doc), *ASK, "--json", "--history")
    assert code == 0 and len(out.splitlines()) == 2


# ---------------------------------------------------------------------------------------- prefill and cache
def test_prefill_json(engines, doc, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(DOC[: len(DOC) // 2], encoding="utf-8")
    code, out, _ = run(capsys, "prefill", str(doc), str(other), "--json")
    assert code == 0
    infos = json.loads(out)
    assert [i["file"] for i in infos] == [str(doc), str(other)]
    assert infos[0]["tokens"] > infos[1]["tokens"] > 0
    assert len(engines) == 1  # one model for all files


def test_prefill_refuses_no_cache_and_checks_every_file_first(engines, doc, tmp_path, capsys):
    code, _, err = run(capsys, "prefill", str(doc), "--no-cache")
    assert code == 2 and "--no-cache" in _one_line_error(err)
    code, _, err = run(capsys, "prefill", str(doc), str(tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt" in _one_line_error(err)
    assert engines == []  # failed before loading a model


@needs_persist
def test_ls_rm_gc_on_a_temporary_cache(engines, doc, tmp_path, capsys):
    root = tmp_path / "cache"
    other = tmp_path / "other.txt"
    other.write_text(DOC[: len(DOC) // 2], encoding="utf-8")
    assert run(capsys, "-q", "prefill", str(doc), str(other), "--cache-dir", str(root))[0] == 0

    code, out, _ = run(capsys, "ls", "--cache-dir", str(root), "--json")
    assert code == 0
    keys = [e["key"] for e in json.loads(out)]
    assert len(keys) == 2
    code, out, _ = run(capsys, "ls", "--cache-dir", str(root))
    assert code == 0 and keys[0][:12] in out and keys[1][:12] in out

    code, _, err = run(capsys, "rm", "no-such-key", "--cache-dir", str(root))
    assert code == 2 and "actqkv ls" in _one_line_error(err)
    assert run(capsys, "rm", keys[0][:12], "--cache-dir", str(root))[0] == 0  # a prefix is enough
    code, out, _ = run(capsys, "ls", "--cache-dir", str(root), "--json")
    assert [e["key"] for e in json.loads(out)] == keys[1:]

    assert run(capsys, "gc", "--max-bytes", "0", "--cache-dir", str(root))[0] == 0
    code, out, _ = run(capsys, "ls", "--cache-dir", str(root), "--json")
    assert json.loads(out) == []


@needs_persist
def test_ask_reuses_the_cache(engines, doc, tmp_path, capsys, monkeypatch):
    root = tmp_path / "cache"
    first = run(capsys, "-q", "ask", str(doc), "q?", *ASK, "--cache-dir", str(root), "--json")
    from actqkv_llm import Engine   # the second run must not prefill again
    monkeypatch.setattr(Engine, "_prefill_ids", lambda *a, **k: pytest.fail("prefilled again"))
    second = run(capsys, "-q", "ask", str(doc), "q?", *ASK, "--cache-dir", str(root), "--json")
    a, b = json.loads(first[1]), json.loads(second[1])
    assert a["answer"] == b["answer"] and b["document"]["key"]


def test_gc_size_syntax(capsys):
    assert cli.max_bytes("2G") == 2 << 30
    code, _, err = run(capsys, "gc", "--max-bytes", "lots")
    assert code == 2 and "not a size" in _one_line_error(err)


# ---------------------------------------------------------------------------------------- wiring
def test_bench_is_wired(capsys):
    code, out, _ = run(capsys, "bench", "quality", "--help")
    assert code == 0 and "--lengths" in out
    code, out, _ = run(capsys, "bench", "speed", "--help")
    assert code == 0


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in ("ask", "chat", "prefill", "ls", "rm", "gc", "bench"))
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("actqkv ")


def test_real_model_via_the_installed_command(tmp_path_factory):
    """`actqkv ask` works right after install, offline, on the embedded default model."""
    root = tmp_path_factory.mktemp("real-cache")
    path = root / "note.txt"
    path.write_text("The harbour master keeps the spare key of the lighthouse in a blue tin box "
                    "under the third step.\n" * 3, encoding="utf-8")
    env = {**os.environ, "ACTQKV_CACHE_DIR": str(root)}
    exe = Path(sys.executable).with_name("actqkv")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "actqkv_llm"]
    extra = [] if _has_persist() else ["--no-cache"]
    proc = subprocess.run([*command, "-q", "ask", str(path), "Where is the spare key kept?",
                           "--max-new-tokens", "24", "--json", *extra],
                          capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["answer"].strip()
    assert "box" in record["answer"].lower() or "step" in record["answer"].lower(), record["answer"]
