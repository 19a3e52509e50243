"""What the client and the resident server say to each other (light: no torch).

One connection carries one request. The client sends one JSON line, ``{"op": "ask" | "status" |
"stop", "protocol": PROTOCOL, ...}``; the server answers with JSON lines, each an ``{"event": ...}``:

- ``accepted``: an ask was taken (always the first reply to one, sent before any work);
- ``status`` (``text``): a status line for stderr; ``warning`` (``text``): a warning raised while answering;
- ``progress`` (``done``, ``total``): document tokens prefilled so far;
- ``alive``: sent every ``heartbeat`` seconds while nothing else is, so silence means trouble;
- ``piece`` (``text``): the next piece of the answer, as soon as it is decoded;
- ``answer`` (``record``, ``seconds``): the end: the record ``actqkv ask --json`` prints;
- ``error`` (``message``, ``exit_code``, ``traceback``): the end, failed;
- ``info`` (the server's state) answers ``status``; ``stopping`` (``pid``) answers ``stop``.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, fields
from typing import Any

PROTOCOL = 1
# The longest line either side accepts (a request carries the document's text).
MAX_LINE = 256 << 20
FINAL_EVENTS = frozenset({"answer", "error"})

# The type of each field of an ask request, checked by the server.
_ASK_TYPES: dict[str, Any] = {
    "text": str, "file": str, "question": str, "raw": bool, "sampling": dict, "model": (str, type(None)),
    "gguf_file": (str, type(None)), "device": (str, type(None)), "dtype": (str, type(None)), "cache_dir": str,
    "cache": bool, "force_past_window": bool, "retrieval": dict, "progress": bool, "debug": bool}


class ProtocolError(Exception):
    """The other side sent something that is not this protocol."""


class Channel:
    """JSON lines over a connected socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._reader = sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message; None when the other side closed the connection.

        Raises:
            TimeoutError: nothing complete arrived within ``timeout`` seconds (the channel is then
                unusable: close it).
            ProtocolError: a line that is not a JSON object, or longer than :data:`MAX_LINE`.
        """
        self.sock.settimeout(timeout)
        try:
            line = self._reader.readline(MAX_LINE + 1)
        except socket.timeout:
            raise TimeoutError(f"nothing received in {timeout:g} s") from None
        if not line:
            return None
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise ProtocolError("a message longer than the protocol allows (or cut short)")
        try:
            message = json.loads(line)
        except ValueError:
            raise ProtocolError("a message that is not JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("a message that is not a JSON object")
        return message

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self.sock.close()


@dataclass(frozen=True)
class AskRequest:
    """One ``actqkv ask``: the document's text, the question and every option that shapes the answer.

    Paths (``model`` when it is one, ``cache_dir``) are absolute: the server runs elsewhere.
    """

    text: str
    file: str                      # how the document is named in status lines and the JSON record
    question: str
    raw: bool                      # plain completion after the document instead of the chat template
    sampling: dict[str, Any]       # Engine.chat's sampling keywords
    model: str | None
    gguf_file: str | None
    device: str | None
    dtype: str | None
    cache_dir: str                 # the cache root (models, documents)
    cache: bool                    # read and write the document cache
    force_past_window: bool
    retrieval: dict[str, Any]      # method and retrieval options (the CLI's retrieval_options)
    progress: bool                 # send prefill progress
    debug: bool                    # send the traceback with an error

    def message(self) -> dict[str, Any]:
        return {"op": "ask", "protocol": PROTOCOL, "request": asdict(self)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "AskRequest":
        body = message.get("request")
        names = {f.name for f in fields(cls)}
        if not isinstance(body, dict) or set(body) != names:
            raise ProtocolError(f"an ask request needs exactly the fields {sorted(names)}")
        for name, kind in _ASK_TYPES.items():
            if not isinstance(body[name], kind):
                raise ProtocolError(f"ask request field {name!r} has the wrong type")
        if "method" not in body["retrieval"]:
            raise ProtocolError("ask request: retrieval options need a method")
        return cls(**body)
