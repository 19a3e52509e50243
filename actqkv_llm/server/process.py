"""The resident server process: ``python -m actqkv_llm.server --dir DIR --build ID`` (started by
:class:`~actqkv_llm.server.client.ResidentClient`, not by hand).

It takes the build's lock file (held for its whole life: one server per build and cache root),
replaces a stale socket, listens (0600, in a 0700 directory), and only then imports torch, in the
background, so a client's first question is accepted at once. Each connection gets a thread; an
ask runs in a worker thread whose events the connection's thread forwards, with an ``alive``
message whenever the worker is silent for ``heartbeat`` seconds. A client that goes away cancels
its request. The server exits after ``idle_timeout`` seconds without a question, on ``stop``, or on
SIGTERM / SIGINT, removing its socket.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from .config import ServerConfig, ServerPaths, ServerUnavailable, build_id
from .protocol import FINAL_EVENTS, PROTOCOL, AskRequest, Channel, ProtocolError

# How often the accept loop wakes to check the idle deadline and the stop flag.
_POLL_SECONDS = 0.25
# How long a stopping server waits for requests it cancelled to wind up.
_DRAIN_SECONDS = 10.0


class ResidentServer:
    """One build's server under one cache root."""

    def __init__(self, paths: ServerPaths, config: ServerConfig, log: logging.Logger):
        self.paths, self.config, self.log = paths, config, log
        self.started = time.time()
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._active: dict[int, threading.Event] = {}   # request number -> its cancel flag
        self._served = 0
        self._last_question = time.monotonic()
        self._service = None
        self._service_lock = threading.Lock()
        self._current = threading.local()               # the worker's emit function, for warnings
        self._socket_inode: int | None = None

    # ------------------------------------------------------------------ life
    def run(self) -> int:
        lock_fd = self._take_lock()
        if lock_fd is None:
            self.log.info("another server holds %s; leaving", self.paths.lock)
            return 0
        listener = None
        try:
            listener = self._listen()
            self.log.info("pid %d serving on %s (idle timeout %g s)", os.getpid(), self.paths.socket,
                          self.config.idle_timeout)
            threading.Thread(target=self._load_service, name="warm-up", daemon=True).start()
            self._accept_loop(listener)
        finally:
            self._shut_down(listener)
            os.close(lock_fd)
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _take_lock(self) -> int | None:
        """The build's lock; None when another server has it and listens (or does not let go of it
        within ``start_timeout``: an older server of this build may be exiting)."""
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline or self._stop.is_set() or self._someone_listens():
                    os.close(fd)
                    return None
                time.sleep(0.1)

    def _someone_listens(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.paths.socket))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def _listen(self) -> socket.socket:
        path = str(self.paths.socket)
        try:
            os.unlink(path)  # stale: we hold the lock, so no live server owns it
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._socket_inode = os.stat(path).st_ino
        listener.listen(16)
        listener.settimeout(_POLL_SECONDS)
        return listener

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            with self._state:
                idle = not self._active and time.monotonic() - self._last_question > self.config.idle_timeout
            if idle:
                self.log.info("idle for %g s: exiting", self.config.idle_timeout)
                return
            if not self._socket_is_ours():
                self.log.info("the socket %s was removed: nobody can reach this server; exiting", self.paths.socket)
                return
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                self.log.error("accept failed: %s", exc)
                return
            conn.settimeout(None)
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.paths.socket).st_ino == self._socket_inode
        except OSError:
            return False

    def _shut_down(self, listener: socket.socket | None) -> None:
        """Stop taking connections (the socket goes first), cancel requests, wait a little for them."""
        if listener is not None and self._socket_is_ours():
            with contextlib.suppress(OSError):
                os.unlink(self.paths.socket)
        if listener is not None:
            listener.close()
        with self._state:
            flags = list(self._active.values())
        for flag in flags:
            flag.set()
        deadline = time.monotonic() + _DRAIN_SECONDS
        while time.monotonic() < deadline:
            with self._state:
                if not self._active:
                    break
            time.sleep(0.05)
        self.log.info("stopped after %d question(s)", self._served)

    # ------------------------------------------------------------------ the model side
    def _load_service(self):
        """The service (imports torch and transformers: seconds), made once."""
        with self._service_lock:
            if self._service is None:
                from .service import Service

                self._service = Service(self.config.max_documents)
            return self._service

    def info(self) -> dict[str, Any]:
        with self._state:
            active, served, idle = len(self._active), self._served, time.monotonic() - self._last_question
        info = {"pid": os.getpid(), "build": self.paths.build, "socket": str(self.paths.socket),
                "log": str(self.paths.log), "started": self.started, "uptime_s": round(time.time() - self.started, 1),
                "idle_s": round(0.0 if active else idle, 1), "idle_timeout_s": self.config.idle_timeout,
                "active": active, "served": served, "max_documents": self.config.max_documents,
                "rss_bytes": _rss_bytes()}
        service = self._service
        if service is not None:
            info.update(service.describe())
        return info

    # ------------------------------------------------------------------ one connection
    def _serve_connection(self, conn: socket.socket) -> None:
        channel = Channel(conn)
        try:
            message = channel.receive(self.config.handshake_timeout)
            if message is None:
                return
            if message.get("protocol") != PROTOCOL:
                channel.send({"event": "error", "exit_code": 1, "message":
                              f"the resident server speaks protocol {PROTOCOL}, not {message.get('protocol')!r}"})
                return
            op = message.get("op")
            if op == "status":
                channel.send({"event": "info", "info": self.info()})
            elif op == "stop":
                channel.send({"event": "stopping", "pid": os.getpid()})
                self.log.info("asked to stop")
                self.stop()
            elif op == "ask":
                self._ask(channel, AskRequest.from_message(message))
            else:
                raise ProtocolError(f"unknown op {op!r}")
        except (ProtocolError, TimeoutError) as exc:
            self.log.warning("a bad request: %s", exc)
            try:
                channel.send({"event": "error", "exit_code": 1,
                              "message": f"bad request to the resident server: {exc}"})
            except OSError:
                pass
        except OSError as exc:
            self.log.info("connection lost: %s", exc)
        finally:
            channel.close()

    def _ask(self, channel: Channel, req: AskRequest) -> None:
        cancelled = threading.Event()
        with self._state:
            self._served += 1
            number = self._served
            self._active[number] = cancelled
        try:
            channel.send({"event": "accepted", "pid": os.getpid()})
            events: queue.Queue = queue.Queue()
            threading.Thread(target=self._work, args=(req, events.put, cancelled), daemon=True,
                             name=f"ask-{number}").start()
            while True:
                try:
                    event = events.get(timeout=self.config.heartbeat)
                except queue.Empty:
                    event = {"event": "alive"}
                try:
                    channel.send(event)
                except OSError:
                    self.log.info("request %d: the client left; cancelling", number)
                    cancelled.set()
                    return
                if event["event"] in FINAL_EVENTS:
                    return
        finally:
            with self._state:
                self._active.pop(number, None)
                self._last_question = time.monotonic()

    def _work(self, req: AskRequest, emit, cancelled: threading.Event) -> None:
        from ..reporting import error_exit_code, error_line

        self._current.emit = emit
        t0 = time.perf_counter()
        try:
            self._load_service().ask(req, emit, cancelled)
            self.log.info("answered %s in %.1f s", req.file, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 (every failure goes back to the client as one line)
            from .service import Cancelled

            if not isinstance(exc, Cancelled):
                self.log.warning("request failed: %s", "".join(traceback.format_exception(exc)).strip())
            emit({"event": "error", "message": error_line(exc), "exit_code": error_exit_code(exc),
                  "traceback": traceback.format_exc() if req.debug else None})
        finally:
            self._current.emit = None

    def show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """warnings.showwarning: a warning raised while answering goes to that client, others to the log."""
        emit = getattr(self._current, "emit", None)
        text = " ".join(str(message).split())
        if emit is not None:
            emit({"event": "warning", "text": text})
        self.log.warning("%s: %s", category.__name__, text)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actqkv_llm.server",
                                description="The resident server of 'actqkv ask' (started on demand).")
    p.add_argument("--dir", required=True, help="the server directory (<cache root>/server)")
    p.add_argument("--build", required=True, help="the build id the client computed")
    p.add_argument("--idle", type=float, required=True, help="idle timeout in seconds")
    p.add_argument("--documents", type=int, required=True, help="documents kept in memory")
    a = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s {os.getpid()} %(levelname)s %(message)s")
    log = logging.getLogger("actqkv.server")
    if a.build != build_id():
        log.error("this server is build %s, the client asked for %s: the library changed; not serving",
                  build_id(), a.build)
        return 3
    config = ServerConfig(idle_timeout=a.idle, max_documents=a.documents)
    try:
        paths = ServerPaths(Path(a.dir), a.build).prepare()
    except ServerUnavailable as exc:
        log.error("not serving: %s", exc)
        return 3
    server = ResidentServer(paths, config, log)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    warnings.showwarning = server.show_warning
    warnings.simplefilter("always")
    for category in (FutureWarning, DeprecationWarning):  # meant for developers of libraries we use
        warnings.simplefilter("ignore", category)
    return server.run()
