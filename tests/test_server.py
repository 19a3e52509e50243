"""The resident server behind ``actqkv ask``: started on demand, reused, idle exit, fallback,
the off switch, stale and hung sockets. A tiny random model saved as a local model directory
serves real server processes; every wait is bounded (subprocess timeouts, short client timeouts)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from actqkv_llm import Engine, cli
from actqkv_llm.errors import ConfigError
from actqkv_llm.server import client as client_mod
from actqkv_llm.server.client import ResidentClient
from actqkv_llm.server.config import ServerConfig, ServerPaths, ServerUnavailable
from actqkv_llm.server.protocol import AskRequest
from tiny_models import byte_tokenizer, tiny_model

REPO = Path(__file__).resolve().parent.parent
DOC = " ".join(f"Line {i}: the lighthouse keeper counts {i * 7} gulls on the quay." for i in range(40))
ASK = ("--max-new-tokens", "12")
RUN_TIMEOUT = 180  # seconds any one command may take (a server start is a few seconds)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and its byte tokenizer, saved as a local Hugging Face model directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama").save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "book.txt"
    path.write_text(DOC, encoding="utf-8")
    return path


def _new_root() -> Path:
    # short on purpose: a Unix socket path must stay under ~100 bytes
    return Path(tempfile.mkdtemp(prefix="aq-", dir="/tmp"))


def _stop_all(root: Path) -> None:
    client = ResidentClient(ServerPaths.under(root), ServerConfig(handshake_timeout=5))
    try:
        client.stop(wait=30)
    except ServerUnavailable:
        pass


@pytest.fixture
def root():
    """A fresh cache root; every server started under it is stopped at the end."""
    path = _new_root()
    yield path
    _stop_all(path)
    shutil.rmtree(path, ignore_errors=True)


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ACTQKV_CACHE_DIR": str(root), "ACTQKV_SERVER": "on", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.update(extra)
    return env


def actqkv(root: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actqkv_llm", *argv], env=_env(root, **env), text=True,
                          capture_output=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, cwd=REPO)


def status(root: Path) -> list[dict]:
    proc = actqkv(root, "server", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ask_json(root: Path, doc: Path, model: Path, *extra: str, **env: str) -> dict:
    proc = actqkv(root, "-q", "ask", str(doc), "How many gulls?", "--model", str(model), *ASK, "--json", *extra,
                  **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------- started, reused, stopped
def test_ask_starts_the_server_the_next_ask_reuses_it_and_stop_stops_it(root, doc, tiny_dir):
    first = ask_json(root, doc, tiny_dir)
    [server] = status(root)
    assert server["served"] == 1 and server["model_loads"] == 1 and len(server["documents"]) == 1
    assert server["current_build"] and server["models"] == [str(tiny_dir)]
    assert oct(os.stat(root / "server").st_mode & 0o777) == "0o700"

    # the second ask: same server, model and document still loaded; the client never imports torch
    code = ("import json, sys; from actqkv_llm import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'the client imported torch'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "-q", "ask", str(doc), "How many gulls?", "--model",
                           str(tiny_dir), *ASK, "--json"], env=_env(root), text=True, capture_output=True,
                          timeout=RUN_TIMEOUT, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert second["answer"] == first["answer"] and second["document"]["tokens"] == first["document"]["tokens"]
    [again] = status(root)
    assert again["pid"] == server["pid"] and again["served"] == 2 and again["model_loads"] == 1

    # the answer streams piece by piece, and is the one the same request gets in-process
    client = ResidentClient(ServerPaths.under(root), ServerConfig())
    request = AskRequest(text=DOC, file="book.txt", question="How many gulls?", raw=False,
                         sampling={"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "stop": None,
                                   "seed": None},
                         model=str(tiny_dir), gguf_file=None, device=None, dtype=None, cache_dir=str(root),
                         cache=False, force_past_window=False, retrieval={"method": "actqkv"}, progress=False,
                         debug=False)
    events = list(client.ask(request))
    assert events[0]["event"] == "accepted" and events[-1]["event"] == "answer"
    pieces = [e["text"] for e in events if e["event"] == "piece"]
    assert len(pieces) > 1 and "".join(pieces) == events[-1]["record"]["answer"]
    local = ask_json(root, doc, tiny_dir, "--no-server", "--no-cache")
    assert local["answer"] == events[-1]["record"]["answer"]

    # the server's refusals are the in-process ones: one line, exit code 2
    proc = actqkv(root, "ask", str(doc), "q", "--model", str(root / "no-such-model"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"actqkv: error: no such file or directory: {root / 'no-such-model'}"

    proc = actqkv(root, "server", "stop")
    assert proc.returncode == 0 and f"pid {server['pid']}" in proc.stderr
    assert status(root) == [] and not ServerPaths.under(root).socket.exists()
    assert "no resident server is running" in actqkv(root, "server", "status").stdout


def test_concurrent_first_asks_share_one_server_and_one_load(root, doc, tiny_dir):
    argv = [sys.executable, "-m", "actqkv_llm", "-q", "ask", str(doc), "How many gulls?", "--model",
            str(tiny_dir), *ASK, "--json"]
    procs = [subprocess.Popen(argv, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO) for _ in range(3)]
    outs = [p.communicate(timeout=RUN_TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    answers = {json.loads(out)["answer"] for out, _ in outs}
    assert len(answers) == 1
    [server] = status(root)
    assert server["served"] == 3 and server["model_loads"] == 1 and len(server["documents"]) == 1


def test_an_idle_server_exits_and_removes_its_socket(root, doc, tiny_dir):
    ask_json(root, doc, tiny_dir, ACTQKV_SERVER_IDLE="1")
    deadline = time.monotonic() + 60
    while status(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status(root) == []
    assert not ServerPaths.under(root).socket.exists()


def test_a_stale_socket_is_replaced_by_a_new_server(root, doc, tiny_dir):
    paths = ServerPaths.under(root).prepare()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(paths.socket))  # a server that died: its socket file stays, nobody listens
    dead.close()
    assert paths.socket.exists()
    proc = actqkv(root, "ask", str(doc), "How many gulls?", "--model", str(tiny_dir), *ASK)
    assert proc.returncode == 0, proc.stderr
    assert "resident server" in proc.stderr and "note:" not in proc.stderr
    assert len(status(root)) == 1


def test_a_hung_server_is_given_up_within_the_timeouts(root):
    """A process that holds the lock and the socket but never answers: the client does not hang."""
    paths = ServerPaths.under(root).prepare()
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(paths.socket))
    hung.listen(4)  # connections queue up; nothing is ever read or answered
    try:
        client = ResidentClient(paths, ServerConfig(handshake_timeout=1, start_timeout=2))
        start = time.monotonic()
        with pytest.raises(ServerUnavailable, match="did not answer within 1 s"):
            list(client.ask(AskRequest(text="x", file="x", question="q", raw=False, sampling={}, model=None,
                                       gguf_file=None, device=None, dtype=None, cache_dir=str(root), cache=False,
                                       force_past_window=False, retrieval={"method": "actqkv"}, progress=False,
                                       debug=False)))
        assert time.monotonic() - start < 10
    finally:
        hung.close()
        os.close(lock)


# ---------------------------------------------------------------------------------------- fallback, the off switch
@pytest.fixture
def engines(monkeypatch):
    """The CLI's in-process engine factory replaced by a tiny model; returns the engines it built."""
    built: list[Engine] = []

    def make(args):
        eng = Engine(tiny_model(), byte_tokenizer(), progress=False, cache=False, **cli.retrieval_options(args))
        built.append(eng)
        return eng

    monkeypatch.setattr(cli, "make_engine", make)
    return built


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_spawn(monkeypatch):
    """Starting a server fails the test."""
    def refuse(*_a, **_k):
        raise AssertionError("a resident server was started")

    monkeypatch.setattr(client_mod.subprocess, "Popen", refuse)


def test_unavailable_server_falls_back_in_process_with_one_note(engines, doc, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ACTQKV_SERVER", "on")
    cache = tmp_path / "cache"
    (cache / "server").mkdir(parents=True)
    os.chmod(cache / "server", 0o755)  # not private: the server is refused
    code, out, err = _run(capsys, "ask", str(doc), "How many gulls?", *ASK, "--cache-dir", str(cache), "--no-cache")
    assert code == 0 and out.strip() and len(engines) == 1
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "open to other users" in notes[0] and "ACTQKV_SERVER=off" in notes[0]
    code, _, err = _run(capsys, "-q", "ask", str(doc), "How many gulls?", *ASK, "--cache-dir", str(cache), "--no-cache")
    assert code == 0 and err == ""  # -q: no note either


def test_a_server_that_fails_to_start_falls_back(engines, doc, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ACTQKV_SERVER", "on")

    class Exits:
        pid = 0

        def __init__(self, *a, **k):
            pass

        def poll(self):
            return 3

    monkeypatch.setattr(client_mod.subprocess, "Popen", Exits)
    cache = Path(tempfile.mkdtemp(prefix="aq-", dir="/tmp"))
    try:
        code, out, err = _run(capsys, "ask", str(doc), "q?", *ASK, "--cache-dir", str(cache), "--no-cache")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert code == 0 and out.strip() and len(engines) == 1, err
    assert "exited at start (exit status 3)" in err and err.count("note:") == 1


@pytest.mark.parametrize("switch", [("ACTQKV_SERVER", "off"), ("flag", "--no-server")])
def test_the_off_switch_answers_in_process(engines, no_spawn, doc, capsys, monkeypatch, tmp_path, switch):
    name, value = switch
    extra = []
    if name == "flag":
        monkeypatch.setenv("ACTQKV_SERVER", "on")
        extra = [value]
    else:
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    code, out, err = _run(capsys, "ask", str(doc), "How many gulls?", *ASK, "--cache-dir", str(cache), *extra)
    assert code == 0 and out.strip() and len(engines) == 1
    assert "note:" not in err and not (cache / "server").exists()


def test_bad_server_settings_are_one_line_usage_errors(engines, doc, capsys, monkeypatch):
    monkeypatch.setenv("ACTQKV_SERVER", "sometimes")
    code, _, err = _run(capsys, "ask", str(doc), "q?")
    assert code == 2 and err.strip() == "actqkv: error: ACTQKV_SERVER='sometimes': use on or off"
    monkeypatch.setenv("ACTQKV_SERVER", "on")
    monkeypatch.setenv("ACTQKV_SERVER_IDLE", "-5")
    code, _, err = _run(capsys, "ask", str(doc), "q?")
    assert code == 2 and "idle_timeout must be a positive number" in err and engines == []


def test_server_config_is_validated():
    assert ServerConfig.from_env({}) == ServerConfig()
    cfg = ServerConfig.from_env({"ACTQKV_SERVER": "OFF", "ACTQKV_SERVER_IDLE": "30", "ACTQKV_SERVER_DOCUMENTS": "4"})
    assert (cfg.enabled, cfg.idle_timeout, cfg.max_documents) == (False, 30.0, 4)
    for bad in ({"max_documents": 0}, {"heartbeat": 0}, {"heartbeat": 5, "silence_timeout": 5}, {"idle_timeout": True}):
        with pytest.raises(ConfigError):
            ServerConfig(**bad)
    with pytest.raises(ConfigError, match="ACTQKV_SERVER_DOCUMENTS='many'"):
        ServerConfig.from_env({"ACTQKV_SERVER_DOCUMENTS": "many"})


def test_a_socket_path_too_long_is_unavailable(tmp_path):
    with pytest.raises(ServerUnavailable, match="longer than a Unix socket allows"):
        ServerPaths.under(tmp_path / ("x" * 120)).prepare()


# ---------------------------------------------------------------------------------------- the CPU bench of ask
def test_bench_ask_times_the_command_from_outside(root, tiny_dir, tmp_path, monkeypatch):
    from actqkv_llm.bench import ask as bench_ask, realqa

    question = realqa.Question("How many gulls does the keeper count on line 3?", ("21",), "counts 21 gulls")
    monkeypatch.setattr(realqa, "load_text", lambda: DOC)
    monkeypatch.setattr(realqa, "QUESTIONS", (question,))
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    result = bench_ask.run_ask_bench(tmp_path / "out", model=str(tiny_dir), cache_dir=str(root), timeout=RUN_TIMEOUT)
    steps = result["steps"]
    assert set(steps) == {"first", "second", "restarted", "in-process"}
    assert all(s["returncode"] == 0 and 0 < s["first_token_s"] <= s["total_s"] for s in steps.values())
    assert steps["second"]["resident"] and not steps["in-process"]["resident"]
    assert result["qa_n"] == 1 and result["all_resident"] and status(root) == []  # stopped at the end
    report = (tmp_path / "out" / bench_ask.REPORT).read_text()
    assert "| second |" in report and "QA through `actqkv ask`" in report
