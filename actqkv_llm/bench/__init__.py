"""Benchmarks shipped with the package: ``actqkv bench quality`` and ``actqkv bench speed``.

Modules (one job each):

- ``tasks``: synthetic RULER-style samples (passkey, single / multi-key / multi-value needles,
  variable tracking) on a filler or a prose haystack, sized in tokens; exact-match scoring.
- ``quality``: :func:`run_quality`: every method on the same samples, resumable ``results.jsonl``,
  ``summary.json``, ``results.md``.
- ``speed``: :func:`run_speed`: prefill, time to first token (in memory / from disk), decode,
  peak memory, against the same model under plain Hugging Face SDPA attention.
- ``plots``: the heat maps and the speed figure (matplotlib, Agg canvas).
- ``cli``: :func:`add_bench_arguments`, the argparse wiring.

Wiring into the main CLI (``actqkv_llm/cli.py``)::

    from actqkv_llm.bench import add_bench_arguments

    parser = argparse.ArgumentParser(prog="actqkv")
    commands = parser.add_subparsers(dest="command", required=True)
    ...                                   # the other commands
    add_bench_arguments(commands)         # adds `bench quality` and `bench speed`
    args = parser.parse_args(argv)
    return args.func(args)                # each bench command sets `func`; it returns an exit code

``add_bench_arguments`` uses ``dest="bench_command"`` for its own level, and ``set_defaults(func=...)``
on each leaf, so the main CLI's other commands should also dispatch through ``args.func``.
Errors a user can cause are raised as :class:`actqkv_llm.errors.ActQKVError` subclasses
(``ConfigError`` for a conflicting output directory or an unknown dtype); the main CLI's usual
handler prints them.

Programmatic use::

    from actqkv_llm.bench import run_quality, run_speed
    run_quality("out/q", methods=["full", "actqkv"], tasks=["passkey"], lengths=[4096, 16384])
    run_speed("out/s", random_arch="llama-3.1-8b", lengths=[8192, 32768, 131072])
"""

from __future__ import annotations

from .cli import add_bench_arguments
from .quality import run_quality, write_reports
from .speed import run_speed

__all__ = ["add_bench_arguments", "run_quality", "run_speed", "write_reports"]
