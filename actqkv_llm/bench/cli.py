"""Command-line arguments of ``actqkv bench quality`` and ``actqkv bench speed``.

:func:`add_bench_arguments` adds a ``bench`` command (with ``quality`` and ``speed`` under it) to
the main CLI's subparsers and sets ``func`` on the parsed namespace; ``func(args)`` runs the
benchmark and returns an exit code. See :mod:`actqkv_llm.bench` for the wiring.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import METHODS
from . import tasks as T
from .options import parse_option



def parse_length(text: str) -> int:
    """'4K' -> 4096, '128k' -> 131072, '1M' -> 1048576, '5000' -> 5000."""
    t = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    try:
        value = int(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (use e.g. 4096, 8K, 1M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"length must be positive: {text!r}")
    return value


def _csv(kind: Any):
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]
    return parse


def _methods(text: str) -> list[str]:
    methods = _csv(str)(text)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    return methods


def _tasks(text: str) -> list[str]:
    specs = _csv(str)(text)
    for spec in specs:
        try:
            T.parse_task(spec)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return specs


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--model", default=None,
                   help="a short name from 'actqkv models', a model directory or id "
                        "(default: the packaged default model, see 'actqkv models')")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the engine's choice)")
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: the engine's choice)")
    p.add_argument("--budget", type=int, default=None, help="KV tokens attended per step (all methods)")
    p.add_argument("-o", "--option", type=parse_option, action="append", default=[],
                   metavar="KEY=VALUE", help="any retrieval option, e.g. -o block_size=64 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=default_out, help=f"output directory (default: {default_out})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(args.option)
    if args.budget is not None:
        options["budget"] = args.budget
    return options


def add_bench_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench quality`` and ``bench speed`` to a CLI's ``add_subparsers()`` object."""
    from .quality import DEFAULT_LENGTHS, DEFAULT_METHODS

    bench = subparsers.add_parser("bench", help="quality and speed benchmarks",
                                  description="Benchmarks: retrieval quality on synthetic "
                                  "long-context tasks, and speed against plain Hugging Face attention.")
    sub = bench.add_subparsers(dest="bench_command", metavar="{quality,recall,speed,candidates,ask}", required=True)

    q = sub.add_parser("quality", help="accuracy of every method on synthetic RULER-style tasks",
                       description="Every method on the same generated samples; writes results.jsonl "
                       "(resumable), summary.json, results.md and heat maps.")
    _common(q, "bench-results/quality")
    q.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                   help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})")
    q.add_argument("--tasks", type=_tasks, default=list(T.TASKS),
                   help="comma-separated task[:haystack] (tasks: " + ", ".join(T.TASKS)
                   + "; haystacks: " + ", ".join(T.HAYSTACKS) + "); real-document QA: rstqa (chat, "
                   "as `actqkv ask`) or rstqa_raw: 48 questions about the reStructuredText spec, each "
                   "once per length (needs: pip install --no-deps pyperformance==1.14.0)")
    q.add_argument("--lengths", type=_csv(parse_length), default=list(DEFAULT_LENGTHS),
                   help="tokens of document + question, e.g. 4K,8K,32K,128K")
    q.add_argument("--depths", type=_csv(float), default=list(T.DEFAULT_DEPTHS),
                   help="needle depths in [0, 1] (default: 0,0.25,0.5,0.75,1)")
    q.add_argument("--samples", type=int, default=4, help="samples per task, length and depth")
    q.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length (default: per task, 12-48)")
    q.add_argument("--no-resume", dest="resume", action="store_false",
                   help="discard results already in --out instead of skipping them")
    q.add_argument("--no-plots", dest="plots", action="store_false", help="no heat maps")
    q.set_defaults(func=_quality_main)

    r = sub.add_parser("recall", help="attention mass the selected blocks recall, against full attention",
                       description="Every variant prefills and answers the same needle samples inside the "
                       "window with a recall meter on: per layer and phase, the share of full attention's "
                       "memory mass the selected blocks hold, next to the oracle's at the same budget. "
                       "Writes recall.jsonl, recall.json, recall.md and recall.png.")
    _common(r, "bench-results/recall")
    from .recall import DEFAULT_VARIANTS
    r.add_argument("--variants", type=_csv(str), default=list(DEFAULT_VARIANTS),
                   help="comma-separated METHOD[+KEY=VALUE...] (default: " + ",".join(DEFAULT_VARIANTS)
                   + "), e.g. actqkv+per_head=false")
    r.add_argument("--task", type=_tasks, default=["niah_single"], help="task[:haystack] (default: niah_single)")
    r.add_argument("--lengths", type=_csv(parse_length), default=[4096],
                   help="tokens of document + question, inside the model's window (default: 4K)")
    r.add_argument("--depths", type=_csv(float), default=list(T.DEFAULT_DEPTHS),
                   help="needle depths, used in turn by successive samples")
    r.add_argument("--samples", type=int, default=4, help="samples per length")
    r.add_argument("--first-sample", type=int, default=0, metavar="N",
                   help="start at sample N of the seed's sequence (the rest of a run cut short, or a run "
                   "split over machines: the samples are those of a run from 0)")
    r.add_argument("--layout", choices=("completion", "ask"), default="completion",
                   help="plain completion after the raw document, or the chat template (ask)")
    r.add_argument("--document-every", type=int, default=8,
                   help="measure every Nth execution block of the prefill (each costs a full-attention pass)")
    r.add_argument("--max-new-tokens", type=int, default=None)
    r.add_argument("--no-plots", dest="plots", action="store_false", help="no recall.png")
    r.add_argument("--no-meter", dest="meter", action="store_false",
                   help="accuracy and time only, no recall (past the window full attention is no truth)")
    r.add_argument("--yarn", type=float, default=None, metavar="FACTOR",
                   help="extend the model's positions by YaRN first (e.g. 4; every variant, 'hf' included)")
    r.set_defaults(func=_recall_main)

    s = sub.add_parser("speed", help="prefill / time to first token / decode against plain HF",
                       description="Times each method and the same model under plain Hugging Face "
                       "SDPA attention; writes speed.json, speed.md and speed.png.")
    _common(s, "bench-results/speed")
    from .speed import ARCHS, DEFAULT_LENGTHS as SPEED_LENGTHS
    s.add_argument("--random-arch", choices=sorted(ARCHS), default=None,
                   help="randomly initialised model of this shape, built on the device (no tokenizer)")
    s.add_argument("--max-position-embeddings", type=int, default=None,
                   help="native window of the random model (default: the architecture's)")
    s.add_argument("--methods", type=_methods, default=["actqkv"],
                   help="comma-separated (default: actqkv)")
    s.add_argument("--lengths", type=_csv(parse_length), default=list(SPEED_LENGTHS),
                   help="document tokens (default: 8K,32K,128K,1M; what cannot fit is skipped)")
    s.add_argument("--question-tokens", type=int, default=32)
    s.add_argument("--decode-tokens", type=int, default=64)
    s.add_argument("--warmup-tokens", type=int, default=2048,
                   help="document tokens of the untimed warm-up (its wall time per system is "
                        "reported apart: a process's first use)")
    s.add_argument("--repeats", type=int, default=2,
                   help="times the question and decode are timed; the fastest is kept")
    s.add_argument("--many", type=int, default=0, metavar="N",
                   help="also decode N questions on each document as one batch (generate_ids_many, "
                        "what answer_many runs) beside the same N one by one: throughput, same tokens, and the "
                        "part of the batch its question reads take (the reads timed alone)")
    s.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the plain Hugging Face baseline")
    s.add_argument("--baseline-chunk", type=parse_length, default=None,
                   help="baseline prefill chunk (default: one pass)")
    s.add_argument("--no-reload", dest="reload", action="store_false",
                   help="skip timing doc.save + eng.load + first token")
    s.set_defaults(func=_speed_main)

    from .candidates import DEFAULT_LENGTH
    c = sub.add_parser("candidates", help="the default-model table: QA accuracy, time to first answer, "
                       "disk, RAM of every installed registry model",
                       description="Each installed model of 'actqkv models', in its own process: prefill "
                       "the real-document QA text (needs: pip install --no-deps pyperformance==1.14.0), "
                       "time to first answer, every question asked on that one document, disk and peak "
                       "RAM. Writes candidates.json and candidates.md.")
    c.add_argument("--models", type=_csv(str), default=None,
                   help="comma-separated short names (default: every installed one)")
    c.add_argument("--length", type=parse_length, default=DEFAULT_LENGTH,
                   help=f"document tokens (default: {DEFAULT_LENGTH}; the whole text when shorter)")
    c.add_argument("--method", choices=METHODS, default="actqkv")
    c.add_argument("--device", default="cpu", help="default: cpu")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    c.add_argument("--questions", type=int, default=None, help="ask only the first N questions")
    c.add_argument("--out", default="bench-results/candidates")
    c.set_defaults(func=_candidates_main)

    a = sub.add_parser("ask", help="'actqkv ask' timed from outside: process start to first token, first "
                       "and later questions, with and without the resident server; QA through it",
                       description="Runs 'actqkv ask' as new processes on the real-document QA text (needs: "
                       "pip install --no-deps pyperformance==1.14.0): the first question (the server starts), "
                       "a second one (the server warm), one after 'actqkv server stop', one with --no-server; "
                       "then every QA question through 'actqkv ask', scored. Writes ask.json and ask.md.")
    a.add_argument("--model", default=None, help="--model for actqkv ask (default: the default model)")
    a.add_argument("--cache-dir", default=None, help="--cache-dir for actqkv ask (default: the user's cache)")
    a.add_argument("--questions", type=int, default=None, help="ask only the first N QA questions")
    a.add_argument("--out", default="bench-results/ask")
    a.set_defaults(func=_ask_main)
    return bench


def _quality_main(args: argparse.Namespace) -> int:
    from .quality import run_quality
    summary = run_quality(
        args.out, model=args.model, gguf_file=args.gguf_file, device=args.device, dtype=args.dtype,
        methods=args.methods, tasks=args.tasks, lengths=args.lengths, depths=args.depths,
        samples=args.samples, seed=args.seed, max_new_tokens=args.max_new_tokens,
        options=_options(args), resume=args.resume, progress=args.progress, plots=args.plots)
    for method, s in summary["overall"].items():
        print(f"{method:>10}: {100 * s['accuracy']:5.1f}% of {s['n']}")
    print(f"results in {args.out}/ (results.md, summary.json, results.jsonl)")
    return 0


def _recall_main(args: argparse.Namespace) -> int:
    from .recall import run_recall
    summary = run_recall(
        args.out, model=args.model, gguf_file=args.gguf_file, device=args.device, dtype=args.dtype,
        variants=args.variants, task=args.task[0], lengths=args.lengths, depths=args.depths,
        samples=args.samples, seed=args.seed, layout=args.layout, document_every=args.document_every,
        max_new_tokens=args.max_new_tokens, options=_options(args), progress=args.progress, plots=args.plots,
        meter=args.meter, yarn=args.yarn, first_sample=args.first_sample)
    for v, s in summary.items():
        q = s["phases"].get("question")
        rec = f"question recall {q['recall']:.3f} / oracle {q['oracle']:.3f}" if q else "no memory"
        print(f"{v:>28}: {100 * s['accuracy']:5.1f}% of {s['n']}  {rec}")
    print(f"results in {args.out}/ (recall.md, recall.json, recall.jsonl, recall.png)")
    return 0


def _candidates_main(args: argparse.Namespace) -> int:
    from .candidates import REPORT, run_candidates
    run_candidates(args.out, models=args.models, length=args.length, method=args.method, device=args.device,
                   threads=args.threads, questions=args.questions)
    print((Path(args.out) / REPORT).read_text())
    return 0


def _ask_main(args: argparse.Namespace) -> int:
    from .ask import REPORT, run_ask_bench
    run_ask_bench(args.out, model=args.model, cache_dir=args.cache_dir, questions=args.questions)
    print((Path(args.out) / REPORT).read_text())
    return 0


def _speed_main(args: argparse.Namespace) -> int:
    from .speed import run_speed, speed_markdown
    if args.model and args.random_arch:
        raise SystemExit("actqkv bench speed: pass --model or --random-arch, not both")
    result = run_speed(
        args.out, model=args.model, random_arch=args.random_arch, gguf_file=args.gguf_file,
        device=args.device, dtype=args.dtype, methods=args.methods, lengths=args.lengths,
        question_tokens=args.question_tokens, decode_tokens=args.decode_tokens,
        warmup_tokens=args.warmup_tokens, baseline=args.baseline, baseline_chunk=args.baseline_chunk,
        reload=args.reload, max_position_embeddings=args.max_position_embeddings,
        options=_options(args), repeats=args.repeats, seed=args.seed, progress=args.progress,
        many=args.many)
    print(speed_markdown(result))
    print(f"results in {args.out}/ (speed.json, speed.md, speed.png)")
    return 0
