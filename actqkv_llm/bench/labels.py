"""How the benchmarks name and order what they report: lengths (``32K``), methods in a fixed order."""

from __future__ import annotations

from typing import Iterable, Sequence

# the quality benchmark's methods, and the order every report lists methods in
DEFAULT_METHODS: tuple[str, ...] = ("full", "streaming", "infllm", "actqkv")


def format_length(n: int) -> str:
    """4096 -> '4K', 1048576 -> '1M', 5000 -> '5000'."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """``values`` in ``preferred`` order first, the rest sorted."""
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))
