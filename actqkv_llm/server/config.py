"""Settings and file locations of the resident server (light: no torch).

Settings come from the environment, validated once (:meth:`ServerConfig.from_env`):

- ``ACTQKV_SERVER``: ``on`` (default) or ``off``: ``off`` answers every ``actqkv ask`` in its own process;
- ``ACTQKV_SERVER_IDLE``: seconds an idle server waits for the next question before it exits (600);
- ``ACTQKV_SERVER_DOCUMENTS``: prefilled documents it keeps in memory, least recently used dropped (2).

Files live in ``<cache root>/server/``, a directory only its owner may enter (0700, checked on every
use), one set per build of the library (so an upgraded library never talks to an older server):
``<build>.sock`` (the socket, 0600), ``<build>.lock`` (held by the serving process for its whole
life) and ``<build>.log`` (the server's log).
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError, is_int, is_number
from ..files.paths import private_dir
from .protocol import PROTOCOL

ENV_SWITCH = "ACTQKV_SERVER"
ENV_IDLE = "ACTQKV_SERVER_IDLE"
ENV_DOCUMENTS = "ACTQKV_SERVER_DOCUMENTS"
DIRECTORY = "server"
# sun_path holds 108 bytes on Linux, 104 on macOS (with the final NUL).
MAX_SOCKET_PATH = 100
_SWITCH = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}


class ServerUnavailable(Exception):
    """The resident server cannot be used for this request (the reason is the message); the caller
    answers in its own process instead."""


@dataclass(frozen=True)
class ServerConfig:
    """How ``actqkv ask`` uses the resident server.

    Attributes:
        enabled: use it (start it when none runs); False answers in the calling process.
        idle_timeout: seconds without a question after which the server exits.
        max_documents: prefilled documents kept in memory (least recently used dropped first).
        start_timeout: seconds a client waits for a server it started to listen.
        handshake_timeout: seconds a client waits for a listening server's first reply.
        heartbeat: seconds between the server's "still working" messages during a request.
        silence_timeout: seconds a client waits for the next message before it gives up.
    """

    enabled: bool = True
    idle_timeout: float = 600.0
    max_documents: int = 2
    start_timeout: float = 30.0
    handshake_timeout: float = 15.0
    heartbeat: float = 2.0
    silence_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "start_timeout", "handshake_timeout", "heartbeat", "silence_timeout"):
            value = getattr(self, name)
            if not is_number(value) or not value > 0:
                raise ConfigError(f"server {name} must be a positive number of seconds, got {value!r}")
        if not is_int(self.max_documents) or self.max_documents < 1:
            raise ConfigError(f"server max_documents must be an integer >= 1, got {self.max_documents!r}")
        if self.silence_timeout <= self.heartbeat:
            raise ConfigError(f"server silence_timeout ({self.silence_timeout}) must exceed the heartbeat "
                              f"({self.heartbeat})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServerConfig":
        """The settings in ``ACTQKV_SERVER``, ``ACTQKV_SERVER_IDLE`` and ``ACTQKV_SERVER_DOCUMENTS``."""
        env = os.environ if environ is None else environ
        options: dict = {}
        switch = env.get(ENV_SWITCH, "").strip().lower()
        if switch:
            if switch not in _SWITCH:
                raise ConfigError(f"{ENV_SWITCH}={env[ENV_SWITCH]!r}: use on or off")
            options["enabled"] = _SWITCH[switch]
        for name, field_name, kind, what in ((ENV_IDLE, "idle_timeout", float, "the idle timeout in seconds, e.g. 600"),
                                             (ENV_DOCUMENTS, "max_documents", int, "a number of documents, e.g. 2")):
            raw = env.get(name, "").strip()
            if raw:
                try:
                    options[field_name] = kind(raw)
                except ValueError:
                    raise ConfigError(f"{name}={raw!r}: give {what}") from None
        try:
            return cls(**options)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from the environment: {ENV_IDLE}, {ENV_DOCUMENTS})") from None


def build_id() -> str:
    """Identifies this build of the library: protocol, interpreter, package location and the size
    and mtime of each of its source files. A client only talks to a server of its own build."""
    from .. import __version__

    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(f"{PROTOCOL}\0{__version__}\0{sys.executable}\0{package}\n".encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(package)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:10]


@dataclass(frozen=True)
class ServerPaths:
    """The files of one build's server under a cache root."""

    directory: Path
    build: str

    @classmethod
    def under(cls, cache_root: str | Path, build: str | None = None) -> "ServerPaths":
        return cls(Path(cache_root).expanduser().absolute() / DIRECTORY, build or build_id())

    @property
    def socket(self) -> Path:
        return self.directory / f"{self.build}.sock"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.build}.lock"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.build}.log"

    def prepare(self) -> "ServerPaths":
        """Create the directory (0700) if needed and check it is private to this user.

        Raises:
            ServerUnavailable: no Unix sockets here (Windows), or the directory cannot be created,
                belongs to someone else, is open to others, or its socket path is too long.
        """
        if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
            raise ServerUnavailable("this platform has no Unix sockets")
        try:
            private_dir(self.directory)
            st = os.lstat(self.directory)
        except OSError as exc:
            raise ServerUnavailable(f"cannot create {self.directory}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ServerUnavailable(f"{self.directory} is not a directory")
        if st.st_uid != os.getuid():
            raise ServerUnavailable(f"{self.directory} belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o077:
            raise ServerUnavailable(f"{self.directory} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
                                    f"make it private: chmod 700 {self.directory}")
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise ServerUnavailable(f"the socket path {self.socket} is longer than a Unix socket allows "
                                    f"({MAX_SOCKET_PATH} bytes): use a shorter cache root")
        return self

    def all_builds(self) -> list["ServerPaths"]:
        """The paths of every build's server with a socket or lock here (this one included)."""
        found = [*self.directory.glob("*.sock"), *self.directory.glob("*.lock")] if self.directory.is_dir() else []
        builds = {p.name.rsplit(".", 1)[0] for p in found}
        return [ServerPaths(self.directory, b) for b in sorted(builds | {self.build})]
