"""The ``actqkv`` command line: ask questions about a long document from the terminal.

    actqkv ask book.txt "Who is the narrator?"    # prefill (or reuse the cache), stream the answer
    actqkv chat book.txt                          # many questions, one prefill
    actqkv prefill a.txt b.txt                    # fill the cache ahead of time
    actqkv ls | actqkv rm KEY | actqkv gc         # the document cache
    actqkv doctor | actqkv rebuild-index          # check the cache / rebuild its index
    actqkv server status | actqkv server stop     # the resident server that keeps models loaded
    actqkv bench quality|speed                    # the benchmarks (actqkv_llm.bench)

Each command is one small function ``cmd_*(args) -> exit code``. The model is built in exactly one
place, :func:`make_engine`, which tests replace with a tiny model. Errors print one line
(``actqkv: error: ...``) and exit 2 for bad usage or input, 1 otherwise; ``--debug`` adds the
traceback. Warnings print as one line too (``actqkv: warning: ...``).

Parsing and validating the command line imports neither torch nor transformers (bad options
fail in well under a second); the model stack is imported by :func:`make_engine` only.

``ask`` first hands its question to the resident server (:mod:`actqkv_llm.server`), which keeps the
model and recent documents loaded between calls: this process then never imports torch, and prints
what the server streams exactly as it would print its own answer. When the server cannot be used,
one note says why and the question is answered here (``--no-server`` / ``ACTQKV_SERVER=off``: always).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError, ServerError
from .reporting import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, UsageError, answer_record, error_exit_code,
                        error_line)

# First bytes inspected to tell a binary file from text.
SNIFF_BYTES = 8192
CHAT_EXIT_WORDS = ("exit", "quit")

# Command-line flags of RetrievalConfig's options: (flag, field, type, help). ``--method`` and
# ``--budget`` are listed first in --help; tests check that every config field has a flag here.
RETRIEVAL_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--block-size", "block_size", int, "tokens per memory block"),
    ("--n-sink", "n_sink", int, "initial tokens kept forever (attention sinks)"),
    ("--n-local", "n_local", int, "local window: recent tokens at their true positions"),
    ("--exec-block", "exec_block", int, "queries that share one retrieval during prefill"),
    ("--repr-topk", "repr_topk", int, "representative keys averaged into a block's summary"),
    ("--min-blocks", "min_blocks", int, "per-layer minimum of the dynamic cut-off"),
    ("--max-blocks", "max_blocks", int, "per-layer maximum of the dynamic cut-off"),
    ("--question-weight", "question_weight", float, "lambda: weight of the question in block scores"),
    ("--prefill-chunk", "prefill_chunk", int, "tokens per forward pass during prefill"),
    ("--device-cache-blocks", "device_cache_blocks", int, "device-side block cache size (with --offload)"),
    ("--host-kv-dtype", "host_kv_dtype", str, "model | int8: how offloaded blocks are held in host memory"),
    ("--probe", "probe", str, "mean | activation | tokens | activation-tokens (default: the method's)"),
    ("--scorer", "scorer", str, "dot | cosine | bound | l1 (default: the method's)"),
    ("--token-reduce", "token_reduce", str, "softmax | max: how per-token block scores combine"),
    ("--per-head", "per_head", "on-off", "on: each KV head picks its own blocks; off: one set per layer"),
    ("--positions", "positions", str, "auto | exact | fixed: where memory sits (default: the method's)"),
    ("--budget-rule", "budget_rule", str, "fixed | entropy: blocks per layer"),
    ("--keep-edges", "keep_edges", "on-off", "on: always pick the blocks next to the sinks and the window"),
    ("--l1-budget", "l1_budget", int, "acre: first-level entries attended per step"),
    ("--min-refill", "min_refill", int, "acre: blocks refilled for a fully focused question"),
    ("--max-refill", "max_refill", int, "acre: blocks refilled for a fully diffuse question"),
    ("--rerank", "rerank", int, "candidates re-ranked by exact attention, in average blocks per layer (question, decode)"),
    ("--question-rerank", "question_rerank", int, "of those, how many (in average blocks per layer) the question re-ranks"),
    ("--reselect-every", "reselect_every", int, "decode steps one selection serves (1: pick every step)"),
    ("--rescore-every", "rescore_every", int, "decode steps one scoring's rerank candidates serve (1: score every step)"),
    ("--decode-pad-rows", "decode_pad_rows", int, "rows the static decode step's dense layers always compute "
     "(the same products for one answer as for several: answer_many's tokens are the one-by-one tokens)"),
)


def on_off(text: str) -> bool:
    """'on'/'off' (also true/false, yes/no, 1/0) -> bool, for switches that default to the method's."""
    value = {"on": True, "true": True, "yes": True, "1": True,
             "off": False, "false": False, "no": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where to look, not the whole usage."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ============================================================================ building blocks
def say(args: argparse.Namespace, message: str) -> None:
    """A status line on stderr (stdout carries only answers and listings), unless --quiet."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def retrieval_options(args: argparse.Namespace) -> dict[str, Any]:
    """The retrieval options given on the command line (others keep the model-scaled defaults)."""
    options = {"method": args.method}
    for _flag, name, _type, _help in RETRIEVAL_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if args.budget is not None:
        options["budget"] = args.budget
    for name in ("offload", "batch_prefill", "decode_graph", "decode_compile", "decode_joined_projections",
                 "decode_static_scoring", "question_batch"):
        if getattr(args, name, None) is not None:
            options[name] = {"on": True, "off": False, "auto": "auto"}[getattr(args, name)]
    for name in ("prefill_kernel", "decode_kernel"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """Sampling options, checked now (without importing torch) so a typo fails before minutes of
    prefill; the engine checks them again with :class:`~actqkv_llm.generation.Sampling`."""
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                   stop=args.stop or None, seed=args.seed)
    if args.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ConfigError(f"temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {args.top_p}")
    return options


def check_retrieval_options(args: argparse.Namespace) -> None:
    """Validate the retrieval flags now (config.py is light), before any model is loaded."""
    from .config import RetrievalConfig

    options = retrieval_options(args)
    RetrievalConfig.for_model(1 << 20, method=options.pop("method"), **options)


def check_cache_dir(args: argparse.Namespace) -> None:
    """--cache-dir must be a directory (or not exist yet): a clear error, not '[Errno 17]'."""
    value = getattr(args, "cache_dir", None)
    if value is None:
        return
    if not str(value).strip():
        raise UsageError("--cache-dir is empty: give a directory")
    path = Path(value).expanduser()
    for p in (path, *path.parents):
        if os.path.lexists(p):
            if not p.is_dir():
                where = "" if p == path else f" (its parent {str(p)!r} is a file)"
                raise UsageError(f"--cache-dir {str(value)!r} is not a directory{where}: give a directory")
            break


def check_model_args(args: argparse.Namespace) -> None:
    if args.gguf_file and not args.model:
        raise UsageError("--gguf-file needs --model (the directory holding it); "
                         "or pass the .gguf file itself to --model")


def make_engine(args: argparse.Namespace):
    """The one place the CLI builds an engine (tests patch this to use a tiny model)."""
    from .engine import Engine
    from .models.choice import check_engine_options, resolve_cli_model

    check_model_args(args)
    if args.quiet:
        _quiet_transformers()
    options = retrieval_options(args)
    check_engine_options(args.device, args.dtype, options)  # option errors come before "loading ..."
    model, label = resolve_cli_model(args.model, args.cache_dir, args.gguf_file)
    kwargs = dict(device=args.device, dtype=args.dtype, progress=not args.quiet,
                  cache_dir=args.cache_dir, cache=not args.no_cache,
                  allow_past_window=getattr(args, "force_past_window", False), **options)
    say(args, f"{PROG}: loading {label} ...")
    return Engine.from_pretrained(model, gguf_file=args.gguf_file, **kwargs)


def open_cache(args: argparse.Namespace):
    """The document cache at --cache-dir (default: $ACTQKV_CACHE_DIR or the per-user cache)."""
    check_cache_dir(args)
    from .persist import DocumentCache

    return DocumentCache(args.cache_dir)


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _read_regular_file(path: str, name: str) -> bytes:
    """The bytes of a regular file; a FIFO, device or socket is refused without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{name} is a directory: give a text file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{name} is a directory: give a text file")
        for test, what in _NOT_REGULAR:
            if test(mode):
                raise UsageError(f"{name} is {what}, not a regular file: give a text file "
                                 "(or '-' to read standard input)")
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    except IsADirectoryError:
        raise UsageError(f"{name} is a directory: give a text file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_question(args: argparse.Namespace) -> str:
    """The question: QUESTION, or --question-file PATH ('-' = standard input); never empty."""
    given = getattr(args, "question", None)
    qfile = getattr(args, "question_file", None)
    if given is not None and qfile is not None:
        raise UsageError("give QUESTION or --question-file, not both")
    if qfile is not None:
        if qfile == "-" and args.file == "-":
            raise UsageError("the document and the question cannot both come from standard input")
        name = "standard input" if qfile == "-" else repr(qfile)
        data = sys.stdin.buffer.read() if qfile == "-" else _read_regular_file(qfile, name)
        try:
            given = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UsageError(f"the question in {name} is not UTF-8 text") from None
    if given is None:
        raise UsageError("give a QUESTION (or --question-file PATH, '-' for standard input)")
    if not given.strip():
        raise UsageError("the question is empty: ask something")
    return given.strip()


def read_document(path: str) -> str:
    """Read FILE ('-' = stdin) as UTF-8 text, with a clear error for missing, binary, empty or
    non-regular (FIFO, device) files."""
    name = "standard input" if path == "-" else repr(path)
    if path == "-":
        try:
            data = sys.stdin.buffer.read()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    else:
        data = _read_regular_file(path, name)
    if b"\0" in data[:SNIFF_BYTES]:
        raise UsageError(f"{name} looks like a binary file: convert it to plain text first "
                         "(e.g. pdftotext for a PDF)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                         "convert it, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise UsageError(f"{name} is empty: give a file with some text")
    return text


def prefill(args: argparse.Namespace, eng, path: str, text: str):
    """Prefill (or load from the cache) one document; returns it and a JSON-able description."""
    start = time.perf_counter()
    doc = eng.prefill(text, chat=not args.raw, cache=not args.no_cache)
    seconds = time.perf_counter() - start
    info = {"file": path, "tokens": doc.n_tokens, "layout": doc.layout, "key": doc.key,
            "path": str(doc.path) if doc.path else None, "seconds": round(seconds, 3)}
    say(args, f"{PROG}: {path}: {doc.n_tokens:,} tokens ready in {seconds:.1f} s")
    return doc, info


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def print_sources(sources: Iterable[dict[str, Any]]) -> None:
    """The spans an answer drew on (``answer_record``'s sources)."""
    sources = list(sources)
    if not sources:
        print("Sources: none (the answer came from the local window and sinks)")
        return
    print("Sources:")
    for i, s in enumerate(sources, 1):
        print(f"  [{i}] tokens {s['start']}-{s['end']} ({100 * s['score']:.0f}%): {_one_line(s['text'], 160)}")


def write_piece(args: argparse.Namespace, piece: str) -> None:
    """One piece of a streamed answer to stdout (nothing with --json: the record comes at the end)."""
    if not args.json:
        sys.stdout.write(piece)
        sys.stdout.flush()


def report_answer(args: argparse.Namespace, text: str, record: dict[str, Any], seconds: float,
                  where: str = "") -> None:
    """After the streamed answer: its end of line, --sources, the stats line and the stop note."""
    if not args.json:
        if not text.endswith("\n"):
            sys.stdout.write("\n")
        if args.sources:
            print_sources(record["sources"])
        sys.stdout.flush()
        u = record["usage"]
        say(args, f"[{u['completion_tokens']} tokens in {seconds:.1f} s; document {u['cached_tokens']:,} tokens"
                  f"{where}{'; stopped at --max-new-tokens' if record['finish_reason'] == 'length' else ''}]")
    if record["stop_reason"] == "repetition":
        say(args, f"{PROG}: note: stopped early: the answer started repeating itself")


def answer_one(args: argparse.Namespace, eng, doc, question: str, sampling: dict[str, Any],
               history: list[dict] | None = None):
    """Answer one question, streaming it to stdout unless --json; returns the Answer."""
    if args.raw:
        stream = eng.complete(doc, question, stream=True, **sampling)
    else:
        messages = (history or []) + [{"role": "user", "content": question}]
        stream = eng.chat(doc, messages, stream=True, **sampling)
    start, text = time.perf_counter(), ""
    for piece in stream:
        text += piece
        write_piece(args, piece)
    answer = stream.answer
    report_answer(args, text, answer_record(answer, {}), time.perf_counter() - start)
    return answer


def max_bytes(text: str) -> int:
    """--max-bytes: '20G', '500M', '1048576' (the cache's own size syntax)."""
    from .files.paths import parse_size

    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def human_size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _when(ts: Any) -> str:
    if isinstance(ts, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    return str(ts) if ts else "-"


def _json_out(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


# ============================================================================ commands
def check_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every option a model command takes, validated before the model stack is imported."""
    check_cache_dir(args)
    check_retrieval_options(args)
    return sampling_options(args) if hasattr(args, "max_new_tokens") else {}


def cache_root(args: argparse.Namespace) -> Path:
    """The cache root: --cache-dir, else $ACTQKV_CACHE_DIR or the per-user cache (absolute)."""
    from .files.paths import default_cache_root

    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_root()
    return root.absolute()


def server_config():
    """The resident server's settings ($ACTQKV_SERVER, $ACTQKV_SERVER_IDLE, $ACTQKV_SERVER_DOCUMENTS)."""
    from .server.config import ServerConfig

    return ServerConfig.from_env()


def resident_client(args: argparse.Namespace):
    """The client of this build's resident server under the cache root."""
    from .server.client import ResidentClient
    from .server.config import ServerPaths

    return ResidentClient(ServerPaths.under(cache_root(args)), server_config())


def ask_resident(args: argparse.Namespace, question: str, text: str, sampling: dict[str, Any]) -> int | None:
    """Ask through the resident server (started on demand), streaming its answer as an in-process
    run would print it. None: the server could not be used, and nothing was printed (one note says
    why): the caller answers in this process."""
    from .server.client import ServerLost
    from .server.config import ServerUnavailable
    from .server.protocol import AskRequest

    check_model_args(args)
    model = args.model
    if model and Path(model).expanduser().exists():  # the server runs in another directory
        model = str(Path(model).expanduser().resolve())
    request = AskRequest(
        text=text, file=args.file, question=question, raw=args.raw, sampling=sampling, model=model,
        gguf_file=args.gguf_file, device=args.device, dtype=args.dtype, cache_dir=str(cache_root(args)),
        cache=not args.no_cache, force_past_window=args.force_past_window, retrieval=retrieval_options(args),
        progress=not args.quiet, debug=args.debug)
    client = resident_client(args)
    answer, bar = "", None
    try:
        for event in client.ask(request):
            kind = event.get("event")
            if kind == "piece":
                answer += event["text"]
                write_piece(args, event["text"])
            elif kind == "progress" and not args.quiet:
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=event["total"], desc="prefill", unit="tok", unit_scale=True,
                               dynamic_ncols=True, leave=False)
                bar.update(event["done"] - bar.n)
            elif kind == "status":
                if bar is not None:
                    bar = bar.close()
                say(args, event["text"])
            elif kind == "warning" and not args.quiet:
                print(f"{PROG}: warning: {event['text']}", file=sys.stderr, flush=True)
            elif kind == "answer":
                report_answer(args, answer, event["record"], event["seconds"], "; resident server")
                if args.json:
                    _json_out(event["record"])
                return EXIT_OK
            elif kind == "error":
                raise ServerError(event["message"], event.get("exit_code", EXIT_FAILURE), event.get("traceback"))
    except (ServerUnavailable, ServerLost) as exc:
        if answer:  # part of the answer is out: answering again here would print it twice
            raise
        say(args, f"{PROG}: note: answering in this process: the resident server is unavailable "
                  f"({' '.join(str(exc).split())}); ACTQKV_SERVER=off skips it")
        return None
    finally:
        if bar is not None:
            bar.close()
    raise ServerError("the resident server ended the request without an answer")


def cmd_ask(args: argparse.Namespace) -> int:
    sampling = check_options(args)
    question = read_question(args)
    text = read_document(args.file)
    if not args.no_server and server_config().enabled:
        code = ask_resident(args, question, text, sampling)
        if code is not None:
            return code
    eng = make_engine(args)
    doc, info = prefill(args, eng, args.file, text)
    answer = answer_one(args, eng, doc, question, sampling)
    if args.json:
        _json_out(answer_record(answer, info))
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    if args.file == "-":
        raise UsageError("chat reads questions from standard input, so FILE cannot be '-'")
    sampling = check_options(args)
    text = read_document(args.file)
    eng = make_engine(args)
    doc, info = prefill(args, eng, args.file, text)
    interactive = sys.stdin.isatty()
    if interactive and not args.quiet:
        print(f"Ask about {args.file} (empty line, 'exit' or Ctrl-D to leave).", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        question = line.strip()
        if not question or question.lower() in CHAT_EXIT_WORDS:
            break
        answer = answer_one(args, eng, doc, question, sampling, history if args.history else None)
        if args.history:
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]
        if args.json:
            print(json.dumps({"question": question, **answer_record(answer, info)}, ensure_ascii=False))
            sys.stdout.flush()
    return EXIT_OK


def cmd_prefill(args: argparse.Namespace) -> int:
    if args.no_cache:
        raise UsageError("prefill stores documents in the cache: drop --no-cache")
    check_options(args)
    texts = [(path, read_document(path)) for path in args.files]  # all readable before any work
    eng = make_engine(args)
    infos = [prefill(args, eng, path, text)[1] for path, text in texts]
    if args.json:
        _json_out(infos)
    elif not args.quiet:
        for info in infos:
            print(f"{info['key'] or '-'}  {info['tokens']:>9,} tokens  {info['file']}")
    return EXIT_OK


def _short_model(model: str) -> str:
    """A model path shows as its file or directory name; a hub id stays as it is."""
    return Path(model).name if model.startswith(("/", "~", ".")) else model


def cmd_ls(args: argparse.Namespace) -> int:
    entries = open_cache(args).entries()  # most recently used first
    if args.json:
        _json_out(entries)
        return EXIT_OK
    if not entries:
        say(args, f"{PROG}: the cache is empty")
        return EXIT_OK
    print(f"{'KEY':<14}{'SIZE':>10}  {'TOKENS':>9}  {'LAYOUT':<6}  {'METHOD':<9} {'LAST USED':<17} MODEL")
    for e in entries:
        print(f"{e['key'][:12]:<14}{human_size(e['size']):>10}  {e['tokens']:>9,}  {e['layout']:<6}  "
              f"{e['method'] or '-':<9} {_when(e['last_used']):<17} {_short_model(e['model'])}")
    say(args, f"{len(entries)} document(s), {human_size(sum(e['size'] for e in entries))}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .models.choice import models_table
    from .models.registry import listing

    rows = listing(args.cache_dir)
    if args.json:
        _json_out(rows)
    else:
        print(models_table(rows))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    from .errors import CacheError

    cache = open_cache(args)
    if args.all:
        if args.keys:
            raise UsageError("give KEYs or --all, not both")
        say(args, f"{PROG}: removed {cache.clear()} document(s)")
        return EXIT_OK
    if not args.keys:
        raise UsageError("give the KEY of a document to remove ('actqkv ls' lists them), or --all")
    try:
        keys = [cache.resolve_key(k) for k in args.keys]  # all checked before any is removed
    except CacheError as exc:
        raise UsageError(str(exc)) from None
    for key in keys:
        cache.remove(key)
        say(args, f"{PROG}: removed {key[:12]}")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    cache = open_cache(args)
    report = cache.collect(args.max_bytes)
    left = cache.total_bytes()
    if args.json:
        _json_out({**dataclasses.asdict(report), "total_bytes": left})
    else:
        say(args, f"{PROG}: removed {len(report.removed)} document(s) and {report.temp_dirs} leftover "
                  f"temporary dir(s), freed {human_size(report.bytes_freed)}; {human_size(left)} left"
                  + (f"; {len(report.problems)} problem(s): {report.problems[0]}" if report.problems else ""))
    return EXIT_FAILURE if report.problems else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    report = open_cache(args).doctor()
    if args.json:
        _json_out(dataclasses.asdict(report))
    else:
        print(f"{PROG}: {report.line()}")
    return EXIT_FAILURE if report.damaged or report.unreadable else EXIT_OK


def cmd_rebuild_index(args: argparse.Namespace) -> int:
    cache = open_cache(args)
    n = cache.rebuild_index()
    say(args, f"{PROG}: rebuilt the document index of {cache.root} from {n} cached document(s)")
    return EXIT_OK


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def cmd_server(args: argparse.Namespace) -> int:
    client = resident_client(args)
    if args.action == "stop":
        pids = client.stop()
        if not pids:
            say(args, f"{PROG}: no resident server is running")
        for pid in pids:
            say(args, f"{PROG}: stopped the resident server (pid {pid})")
        return EXIT_OK
    servers = client.status()
    if args.json:
        _json_out(servers)
        return EXIT_OK
    if not servers:
        print(f"{PROG}: no resident server is running (the next 'actqkv ask' starts one)")
    for s in servers:
        build = "" if s["current_build"] else ", an older build (it exits when idle)"
        print(f"pid {s['pid']}: up {_duration(s['uptime_s'])}, idle {_duration(s['idle_s'])} "
              f"(exits after {_duration(s['idle_timeout_s'])} idle), {s['served']} question(s), "
              f"{s['active']} now{build}")
        print(f"  models: {'; '.join(s.get('models') or []) or 'none loaded'}")
        docs = s.get("documents") or []
        sizes = ", ".join(f"{d['tokens']:,} tokens" for d in docs)
        print(f"  documents in memory: {len(docs)} of {s['max_documents']}" + (f" ({sizes})" if docs else ""))
        print(f"  memory: {human_size(s['rss_bytes'])}; log: {s['log']}")
    return EXIT_OK


# ============================================================================ the parser
def _flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """-q and --debug, accepted before or after the command."""
    default = False if top else argparse.SUPPRESS
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bars or status lines: only the answer (for scripts)")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback when something fails")


def _model_options(p: argparse.ArgumentParser) -> None:
    from .config import METHODS
    from .models.registry import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME|PATH", help="a short name from 'actqkv models' (e.g. "
                   "qwen2.5-coder-0.5b), a model directory, cached Hugging Face id or .gguf file "
                   f"(default: {DEFAULT_MODEL}, embedded)")
    g.add_argument("--gguf-file", metavar="NAME", help="GGUF file name inside the --model directory")
    g.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    g.add_argument("--dtype", metavar="DTYPE", help="bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)")
    r = p.add_argument_group("retrieval (defaults scale with the model's window; docs/configuration.md)")
    r.add_argument("--method", choices=METHODS, default="actqkv", help="default: actqkv")
    r.add_argument("--budget", type=int, metavar="N", help="KV tokens attended per step and layer (sinks + window + blocks)")
    for flag, name, kind, text in RETRIEVAL_FLAGS:
        if kind == "on-off":
            r.add_argument(flag, dest=name, type=on_off, metavar="on|off", help=text)
        else:
            r.add_argument(flag, dest=name, type=kind, metavar="N" if kind is int else "X", help=text)
    r.add_argument("--batch-prefill", choices=("auto", "on", "off"),
                   help="off: prefill one execution block at a time (the reference loop); "
                        "auto: batched on a GPU, the loop on the CPU")
    r.add_argument("--prefill-kernel", choices=("auto", "triton", "torch"),
                   help="what scores a batched prefill chunk's blocks (auto: two Triton passes on a GPU "
                        "where they agree with PyTorch; torch: PyTorch ops)")
    r.add_argument("--decode-graph", choices=("auto", "on", "off"),
                   help="decode steps with static shapes, replayed as one CUDA graph (auto: on a GPU; "
                        "on: also on the CPU, eagerly; off: the reference step)")
    r.add_argument("--decode-kernel", choices=("auto", "triton", "torch"),
                   help="what computes the static decode step's attention (auto: a Triton kernel on a "
                        "GPU where it agrees with PyTorch; torch: PyTorch ops)")
    r.add_argument("--decode-compile", choices=("auto", "on", "off"),
                   help="the model's layer code in the static decode step through torch.compile "
                        "(auto: on a GPU with Triton; on: also on the CPU; off: as it is)")
    r.add_argument("--decode-joined-projections", choices=("on", "off"),
                   help="the static decode step runs Llama-like layers with query/key/value and gate/up "
                        "projections joined (4 products per layer instead of 7; default off)")
    r.add_argument("--decode-static-scoring", choices=("auto", "on", "off"),
                   help="decode steps that score every block again do it with static shapes, captured as "
                        "CUDA graphs (auto: on a GPU; on: also on the CPU, eagerly; off: eager scoring)")
    r.add_argument("--question-batch", choices=("on", "off"),
                   help="answer_many reads its questions as rows of one batch (default off: on a GPU its "
                        "tokens were not yet shown to be one-by-one's)")
    r.add_argument("--offload", choices=("auto", "on", "off"),
                   help="keep full blocks in host memory (auto: on when the model runs on a GPU)")
    r.add_argument("--force-past-window", action="store_true",
                   help="let --method full read a document longer than the model's native window "
                        "(its answers then degrade)")
    c = p.add_argument_group("cache")
    _cache_dir(c)
    c.add_argument("--no-cache", action="store_true", help="neither read nor write the document cache")
    p.add_argument("--raw", action="store_true",
                   help="raw completion after the document instead of the chat template "
                        "(small models often answer better this way)")


def _cache_dir(p) -> None:
    p.add_argument("--cache-dir", metavar="DIR", help="cache root (default: $ACTQKV_CACHE_DIR or the per-user cache)")


def _answer_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("answer")
    g.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="default: 256")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default: 1.0)")
    g.add_argument("--stop", action="append", metavar="TEXT", help="cut the answer before TEXT (repeatable)")
    g.add_argument("--seed", type=int, metavar="N", help="random seed for sampling")
    g.add_argument("--sources", action="store_true", help="after the answer, list the document spans it drew on")
    g.add_argument("--json", action="store_true", help="print a JSON record instead of streaming text")


def build_parser(bench: bool = True) -> argparse.ArgumentParser:
    """The parser; ``bench=False`` leaves out the benchmark options (they import torch)."""
    from . import __version__

    parser = Parser(prog=PROG, description="Ask many questions about one very long document with a local "
                                           "language model: prefill once, cache the KV on disk, retrieve "
                                           "the few blocks each step needs.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _flags(parser, top=True)
    common = Parser(add_help=False)
    _flags(common, top=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    p = commands.add_parser("ask", parents=[common], help="answer one question about a document",
                            description="Prefill FILE (or reuse its cache) and stream the answer.")
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file, or - for standard input")
    p.add_argument("question", metavar="QUESTION", nargs="?")
    p.add_argument("--question-file", metavar="PATH", help="read the question from PATH (- for standard input)")
    _model_options(p)
    _answer_options(p)
    p.add_argument("--no-server", action="store_true",
                   help="answer in this process, not through the resident server (also: ACTQKV_SERVER=off)")
    p.set_defaults(func=cmd_ask)

    p = commands.add_parser("chat", parents=[common], help="many questions about one document",
                            description="Prefill FILE once, then answer each line read from standard "
                                        "input; an empty line, 'exit' or end of input leaves.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--history", action="store_true",
                   help="keep earlier questions and answers in the conversation")
    _model_options(p)
    _answer_options(p)
    p.set_defaults(func=cmd_chat)

    p = commands.add_parser("prefill", parents=[common], help="prefill documents into the cache",
                            description="Read each FILE once and store its KV in the cache.")
    p.add_argument("files", metavar="FILE", nargs="+")
    p.add_argument("--json", action="store_true", help="print a JSON list of the documents")
    _model_options(p)
    p.set_defaults(func=cmd_prefill)

    p = commands.add_parser("models", parents=[common], help="the models known by short name",
                            description="Models that ship as PyPI packages, usable as --model NAME: "
                                        "installed or not, size, native window, and which is the default.")
    _cache_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = commands.add_parser("ls", parents=[common], help="list cached documents")
    _cache_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = commands.add_parser("rm", parents=[common], help="remove cached documents")
    p.add_argument("keys", metavar="KEY", nargs="*", help="a key from 'actqkv ls' (a unique prefix is enough)")
    p.add_argument("--all", action="store_true", help="remove every cached document")
    _cache_dir(p)
    p.set_defaults(func=cmd_rm)

    p = commands.add_parser("gc", parents=[common], help="shrink the cache, least recently used first")
    p.add_argument("--max-bytes", type=max_bytes, metavar="SIZE",
                   help="size to shrink to, e.g. 20G (default: $ACTQKV_CACHE_MAX_BYTES)")
    _cache_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gc)

    p = commands.add_parser("doctor", parents=[common], help="check the cache and its index (deletes nothing)",
                            description="Check every cached document and the index; an unreadable index "
                                        "is rebuilt. Exit 1 when something is damaged or unreadable.")
    _cache_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = commands.add_parser("server", parents=[common], help="the resident server that keeps models loaded",
                            description="'actqkv ask' hands questions to a per-user server process it starts "
                                        "on demand, which keeps the model and recent documents loaded and exits "
                                        "after $ACTQKV_SERVER_IDLE seconds (600) without a question. "
                                        "ACTQKV_SERVER=off (or ask --no-server) answers in-process instead.")
    p.add_argument("action", choices=("status", "stop"), help="status: what runs; stop: stop it now")
    _cache_dir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_server)

    p = commands.add_parser("rebuild-index", parents=[common], help="rebuild the index from the cached documents")
    _cache_dir(p)
    p.set_defaults(func=cmd_rebuild_index)

    if bench:
        from .bench import add_bench_arguments

        add_bench_arguments(commands)
    else:  # listed in --help; its own options are loaded only when it runs (they import torch)
        commands.add_parser("bench", help="benchmarks: quality and speed ('actqkv bench --help')")
    return parser


# ============================================================================ entry point
def _quiet_transformers() -> None:
    """Keep transformers' warnings and bars off a quiet run's output (imports it: call late)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _wants_bench(argv: list[str]) -> bool:
    """Whether the command is ``bench`` (or none is given: --help lists everything)."""
    words = [a for a in argv if not a.startswith("-")]
    return not words or words[0] == "bench"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        for category in (FutureWarning, DeprecationWarning):  # meant for developers of libraries we use
            warnings.simplefilter("ignore", category)
        args = build_parser(bench=_wants_bench(argv)).parse_args(argv)
        if args.quiet:
            warnings.simplefilter("ignore")
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `actqkv ask ... | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 (the one place every failure becomes one line)
        if args.debug:
            traceback.print_exc()
            if getattr(exc, "remote_traceback", None):
                print(f"The resident server's traceback:\n{exc.remote_traceback}", file=sys.stderr, end="")
        print(f"{PROG}: error: {error_line(exc)}", file=sys.stderr)
        return error_exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
