"""sha256 digests of text and files (no torch: the command line's option checks and the model
cache's hash memo use them before torch is imported)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_stream(f, chunk: int) -> str:
    h = hashlib.sha256()
    while True:
        buf = f.read(chunk)
        if not buf:
            return h.hexdigest()
        h.update(buf)


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f, chunk)
