"""The client side of the resident server (light: no torch): find or start the server, send one
request, read its events, each wait bounded.

- No socket, or one nobody listens on (a server that died): start a server and wait up to
  ``start_timeout`` for it to listen. Two clients starting one at once get one server (the lock).
- A server that takes the connection but says nothing within ``handshake_timeout`` (hung, or
  exiting right then), or one that dies before accepting the request: :class:`ServerUnavailable`,
  after one more try. The caller answers in its own process.
- Once a request is accepted, silence longer than ``silence_timeout`` (the server sends ``alive``
  every ``heartbeat`` seconds) or a closed connection: :class:`ServerLost`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ServerError
from .config import ServerConfig, ServerPaths, ServerUnavailable
from .protocol import FINAL_EVENTS, PROTOCOL, AskRequest, Channel, ProtocolError

# Longest log kept when a new server starts (the log is appended to otherwise).
_LOG_KEEP_BYTES = 1 << 20
# Polling interval while waiting for a started server to listen, or a stopped one to exit.
_POLL_SECONDS = 0.05


class ServerLost(ServerError):
    """The server accepted the request, then went silent or away before its end."""


class ResidentClient:
    """Talks to the resident server of this build under one cache root."""

    def __init__(self, paths: ServerPaths, config: ServerConfig):
        self.paths, self.config = paths, config
        self.started_pid: int | None = None    # the server this client started, if it did

    # ------------------------------------------------------------------ asking
    def ask(self, request: AskRequest) -> Iterator[dict[str, Any]]:
        """The events of one ask, ``accepted`` first, ending with ``answer`` or ``error``.

        Raises:
            ServerUnavailable: before the request was accepted (nothing was done for it).
            ServerLost: after; the events so far were yielded.
        """
        self.paths.prepare()
        channel, first = self._open(request.message())
        try:
            if first.get("event") != "accepted":
                yield first  # an error the server answered at once (e.g. a protocol mismatch)
                return
            yield first
            while True:
                try:
                    event = channel.receive(self.config.silence_timeout)
                except TimeoutError:
                    raise ServerLost(f"the resident server said nothing for {self.config.silence_timeout:g} s; "
                                     f"its log: {self.paths.log}") from None
                except (ProtocolError, OSError) as exc:
                    raise ServerLost(f"the connection to the resident server broke ({exc})") from None
                if event is None:
                    raise ServerLost(f"the resident server closed the connection before the answer's end; "
                                     f"its log: {self.paths.log}")
                if event.get("event") != "alive":
                    yield event
                if event.get("event") in FINAL_EVENTS:
                    return
        finally:
            channel.close()

    def _open(self, message: dict[str, Any]) -> tuple[Channel, dict[str, Any]]:
        """Connect (starting the server when there is none), send ``message``, read the first reply."""
        reason = ""
        for _attempt in range(2):  # a server exiting right as we connected: one more try starts a new one
            sock = self._connect(start=True)
            channel = Channel(sock)
            try:
                channel.send(message)
                first = channel.receive(self.config.handshake_timeout)
            except TimeoutError:
                channel.close()
                raise ServerUnavailable(f"the resident server took the connection but did not answer within "
                                        f"{self.config.handshake_timeout:g} s (hung? 'actqkv server stop')") from None
            except (OSError, ProtocolError) as exc:
                channel.close()
                reason = f"the connection broke at once ({exc})"
                continue
            if first is None:
                channel.close()
                reason = "the server closed the connection at once"
                continue
            return channel, first
        raise ServerUnavailable(reason)

    # ------------------------------------------------------------------ connecting and starting
    def _try_connect(self, path: Path | None = None) -> socket.socket | None:
        """A connection to a listening server, or None when none listens (no socket, or a stale one)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.config.handshake_timeout)
        try:
            sock.connect(str(path or self.paths.socket))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise ServerUnavailable(f"cannot connect to {path or self.paths.socket}: {exc.strerror or exc}") from None

    def _connect(self, start: bool) -> socket.socket:
        sock = self._try_connect()
        if sock is not None:
            return sock
        if not start:
            raise ServerUnavailable("no resident server is running")
        process = self._spawn()
        deadline = time.monotonic() + self.config.start_timeout
        while time.monotonic() < deadline:
            sock = self._try_connect()
            if sock is not None:
                return sock
            code = process.poll()
            if code:  # 0: another server holds the lock (starting or stopping): keep waiting for it
                raise ServerUnavailable(f"the resident server exited at start (exit status {code}); "
                                        f"its log: {self.paths.log}")
            time.sleep(_POLL_SECONDS)
        raise ServerUnavailable(f"the resident server did not listen within {self.config.start_timeout:g} s; "
                                f"its log: {self.paths.log}")

    def _spawn(self) -> subprocess.Popen:
        """Start a server in its own session (a Ctrl-C here does not reach it), logging to its log file."""
        env = dict(os.environ)
        if env.get("PYTHONPATH"):  # the server runs in '/': relative entries would find other code
            entries = env["PYTHONPATH"].split(os.pathsep)
            env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in entries if p)
        log = self.paths.log
        restart_log = log.exists() and log.stat().st_size > _LOG_KEEP_BYTES
        argv = [sys.executable, "-m", "actqkv_llm.server", "--dir", str(self.paths.directory),
                "--build", self.paths.build, "--idle", repr(float(self.config.idle_timeout)),
                "--documents", str(self.config.max_documents)]
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if restart_log else 0), 0o600)
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd="/", env=env,
                                       start_new_session=True, close_fds=True)
        except OSError as exc:
            raise ServerUnavailable(f"cannot start the resident server: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        self.started_pid = process.pid
        return process

    # ------------------------------------------------------------------ status and stop
    def _request(self, paths: ServerPaths, message: dict[str, Any]) -> dict[str, Any] | None:
        """One short request to ``paths``' server; None when none runs there."""
        sock = self._try_connect(paths.socket)
        if sock is None:
            return None
        channel = Channel(sock)
        try:
            channel.send(message)
            return channel.receive(self.config.handshake_timeout)
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise ServerUnavailable(f"the server at {paths.socket} did not answer ({exc})") from None
        finally:
            channel.close()

    def status(self) -> list[dict[str, Any]]:
        """The state of every running server under this cache root (any build)."""
        out = []
        for paths in self.paths.all_builds():
            reply = self._request(paths, {"op": "status", "protocol": PROTOCOL})
            if reply is not None and reply.get("event") == "info":
                out.append({**reply["info"], "current_build": paths.build == self.paths.build})
        return out

    def stop(self, wait: float = 30.0) -> list[int]:
        """Stop every running server under this cache root; returns their pids (waited for up to ``wait`` s)."""
        pids = []
        for paths in self.paths.all_builds():
            reply = self._request(paths, {"op": "stop", "protocol": PROTOCOL})
            if reply is not None and reply.get("event") == "stopping":
                pids.append(int(reply["pid"]))
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(_POLL_SECONDS)
        return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a child of this process that exited stays a zombie until reaped
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
