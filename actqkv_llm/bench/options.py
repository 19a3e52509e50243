"""``-o KEY=VALUE`` options of the benchmarks, parsed into typed values (the command line's and
``bench recall``'s variant specs share it)."""

from __future__ import annotations

import argparse
from typing import Any


def parse_option(text: str) -> tuple[str, Any]:
    """'budget=2048' -> ('budget', 2048); values become bool / None / int / float / str."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    low = raw.strip().lower()
    value: Any
    if low in ("true", "false"):
        value = low == "true"
    elif low == "none":
        value = None
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
        else:
            value = raw.strip()
    return key.strip().replace("-", "_"), value
