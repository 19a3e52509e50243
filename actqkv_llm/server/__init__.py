"""The resident server: keeps models and recently used documents loaded between ``actqkv ask`` calls.

A second question about a cached document would otherwise pay for importing torch and transformers
and loading the model again (10-20 s on a 2-core CPU) before its first token. Instead ``actqkv ask``
hands the question to a per-user server process it starts on demand, and streams the answer back:

- ``config``: :class:`ServerConfig` (on/off, idle timeout, documents kept, timeouts; from the
  environment) and :class:`ServerPaths` (socket, lock and log in a private 0700 directory under the
  cache root, one set per installed build). No torch.
- ``protocol``: JSON lines over a Unix socket; :class:`AskRequest`. No torch.
- ``client``: :class:`ResidentClient`: connect, start the server when there is none, stream the
  events of one request; never imports torch, never waits without a deadline.
- ``service``: :class:`Service`: the models and documents the server holds, and one answer (torch).
- ``process``: :class:`ResidentServer`: the process: lock, socket, a thread per client, heartbeats,
  exit after the idle timeout (``python -m actqkv_llm.server``).

``ACTQKV_SERVER=off`` (or ``actqkv ask --no-server``) answers in the calling process instead;
``actqkv server status|stop`` inspect and stop it.
"""
