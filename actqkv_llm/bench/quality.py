"""``actqkv bench quality``: every method on the same synthetic samples, exact-match accuracy.

The model is loaded once; each method is a cheap view of it (``eng.with_method``). Each sample's
document is prefilled once per method as a raw completion (``eng.prefill(text, chat=False)``) and
answered with ``eng.generate(doc, continuation)``: small models such as SmolLM2 answer these tasks
only as plain completions (docs/limitations.md, docs/results/BASELINES.md).

Output directory:

- ``results.jsonl``: one line per (method, task, length, depth, sample), appended and flushed as
  each finishes. A rerun with the same output directory skips the keys already there (resume);
  a line cut short by a kill is dropped.
- ``run.json``: what the results depend on (model, dtype, seed, options); a rerun with other
  settings into the same directory is refused instead of mixing results.
- ``summary.json``, ``results.md``, ``heatmap_<task>.png``: rebuilt from ``results.jsonl`` at the
  end of every run (:func:`write_reports` does it alone).
"""

from __future__ import annotations

import gc
import json
import platform
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..errors import ConfigError, InputError
from . import realqa
from . import tasks as T
from .labels import DEFAULT_METHODS, format_length, ordered

RESULTS = "results.jsonl"
RUN = "run.json"
SUMMARY = "summary.json"
REPORT = "results.md"
DEFAULT_LENGTHS: tuple[int, ...] = (4096, 8192, 16384, 32768)
DEFAULT_TASKS: tuple[str, ...] = T.TASKS


def result_key(record: dict[str, Any]) -> tuple:
    """The identity of one result: (method, task label, length, depth, sample index)."""
    return (record["method"], record["task"], int(record["length"]), round(float(record["depth"]), 6),
            int(record["sample"]))


# ----------------------------------------------------------------------------- the results file
class ResultsLog:
    """``results.jsonl``: read what is there, append one flushed line per finished result."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[tuple, dict[str, Any]]:
        """Finished results by key. A torn or unreadable line (a killed run) is dropped from the file."""
        if not self.path.exists():
            return {}
        records: dict[tuple, dict[str, Any]] = {}
        good: list[str] = []
        text = self.path.read_text(encoding="utf-8")
        for line in text.splitlines():
            try:
                record = json.loads(line)
                key = result_key(record)
            except (ValueError, KeyError, TypeError):
                continue
            records[key] = record
            good.append(line)
        clean = "".join(line + "\n" for line in good)
        if clean != text:  # rewrite without the broken tail so appends start on a fresh line
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(clean, encoding="utf-8")
            tmp.replace(self.path)
        return records

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()


# What decides how a model reads a sample (the tokens, the arithmetic): the engine fingerprint's
# fields a resumed run must share with the results it adds to (not its path or source).
BUILD_FIELDS = ("weights_sha256", "config_sha256", "tokenizer_sha256", "chat_template_sha256", "model_type", "dtype")
BUILD = "model_build"


def _check_run(out_dir: Path, fingerprint: dict[str, Any], resume: bool) -> None:
    """Refuse to resume into a directory whose results were made with other settings."""
    run, results = out_dir / RUN, out_dir / RESULTS
    build = None
    if resume and results.exists() and run.exists():
        before = json.loads(run.read_text())
        build = before.pop(BUILD, None)   # checked once the model is loaded (_check_build)
        if before != fingerprint:
            diff = {k: (before.get(k), fingerprint.get(k)) for k in set(before) | set(fingerprint)
                    if before.get(k) != fingerprint.get(k)}
            raise ConfigError(
                f"{out_dir} holds results made with other settings ({diff}, as (before, now)); "
                "pick another --out, or pass --no-resume to discard them")
    if not resume and results.exists():
        results.unlink()
    run.write_text(json.dumps({**fingerprint, **({BUILD: build} if build else {})}, indent=2, sort_keys=True))


def _check_build(out_dir: Path, fingerprint: Any) -> None:
    """Refuse to add results read by another build of the model (weights, config, tokenizer, chat
    template, dtype) to a directory's results: the same samples would not be read alike (transformers
    5.17 built Gemma 3's GGUF tokenizer character by character, 5.18 as words: docs/benchmarks.md).
    Records the build in ``run.json`` for the next resume."""
    if not isinstance(fingerprint, dict):
        return
    build = {k: fingerprint[k] for k in BUILD_FIELDS if k in fingerprint}
    path = out_dir / RUN
    run = json.loads(path.read_text())
    before = run.get(BUILD)
    if before is not None and before != build and (out_dir / RESULTS).exists():
        diff = sorted(k for k in set(before) | set(build) if before.get(k) != build.get(k))
        raise ConfigError(f"{out_dir} holds results read by another build of the model ({', '.join(diff)} "
                          "differ): pick another --out, or pass --no-resume to discard them")
    run[BUILD] = build
    path.write_text(json.dumps(run, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- summary + report
def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (all expected values found) and mean recall by method, task, length and depth."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        depth = float(r["depth"])
        if realqa.is_real_task(r["task"]):  # each question has its own depth: report by quarter
            depth = (min(int(depth * 4), 3) + 0.5) / 4
        cells[(r["method"], r["task"], int(r["length"]), depth)].append(r)

    def stats(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
                "recall": sum(float(r["recall"]) for r in rs) / len(rs),
                "n": len(rs),
                "errors": sum(1 for r in rs if r.get("error"))}

    by_length: dict[tuple, list] = defaultdict(list)
    by_method_task: dict[tuple, list] = defaultdict(list)
    by_method: dict[str, list] = defaultdict(list)
    for (m, t, length, depth), rs in cells.items():
        by_length[(m, t, length)] += rs
        by_method_task[(m, t)] += rs
        by_method[m] += rs
    out: dict[str, Any] = {"by_length": {}, "by_depth": {}, "by_task": {}, "overall": {}}
    for (m, t, length), rs in sorted(by_length.items()):
        out["by_length"].setdefault(m, {}).setdefault(t, {})[str(length)] = stats(rs)
    for (m, t, length, depth), rs in sorted(cells.items()):
        out["by_depth"].setdefault(m, {}).setdefault(t, {}).setdefault(str(length), {})[
            f"{depth:g}"] = stats(rs)
    for (m, t), rs in sorted(by_method_task.items()):
        out["by_task"].setdefault(m, {})[t] = stats(rs)
    for m, rs in sorted(by_method.items()):
        out["overall"][m] = stats(rs)
    return out


def markdown_report(summary: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """One table per task: a row per method, a column per length, cells 'accuracy (n)'."""
    acc = summary["by_length"]
    methods = ordered(acc, DEFAULT_METHODS)
    task_names = ordered({t for m in acc.values() for t in m},
                        [T.task_label(t, T.DEFAULT_HAYSTACK[t]) for t in T.TASKS])
    lines = ["# Quality benchmark", ""]
    for k, v in (header or {}).items():
        lines.append(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}")
    lines += ["", "Accuracy = all expected values found in the first generated line "
              "(exact match); (n) = samples.", ""]
    if any(realqa.is_real_task(t) for t in task_names):
        lines += ["rstqa tasks: real questions about the reStructuredText specification; correct = any "
                  "accepted answer in the reply (normalized match); by depth: quarters of the text.", ""]

    def cell(s: dict[str, Any] | None) -> str:
        if s is None:
            return "-"
        text = f"{100 * s['accuracy']:.1f}% ({s['n']})"
        return text + (f", {s['errors']} err" if s["errors"] else "")

    for task in task_names:
        lengths = sorted({int(n) for m in methods for n in acc[m].get(task, {})})
        lines += [f"## {task}", "",
                  "| method | " + " | ".join(format_length(n) for n in lengths) + " | all |",
                  "|---|" + "---:|" * (len(lengths) + 1)]
        for m in methods:
            row = [cell(acc[m].get(task, {}).get(str(n))) for n in lengths]
            row.append(cell(summary["by_task"][m].get(task)))
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## all tasks", "", "| method | accuracy | recall | samples |", "|---|---:|---:|---:|"]
    for m in methods:
        s = summary["overall"][m]
        lines.append(f"| {m} | {100 * s['accuracy']:.1f}% | {100 * s['recall']:.1f}% | {s['n']} |")
    return "\n".join(lines) + "\n"


def write_reports(out_dir: str | Path, info: dict[str, Any] | None = None,
                  plots: bool = True) -> dict[str, Any]:
    """Rebuild ``summary.json``, ``results.md`` and the heat maps from ``results.jsonl``."""
    out_dir = Path(out_dir)
    records = list(ResultsLog(out_dir / RESULTS).load().values())
    summary = dict(info or {})
    summary["n_results"] = len(records)
    summary.update(summarize(records))
    if plots and records:
        from .plots import plot_heatmaps
        summary["plots"] = [p.name for p in plot_heatmaps(summary, out_dir)]
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    header = {k: summary[k] for k in ("model", "device", "dtype", "command") if k in summary}
    (out_dir / REPORT).write_text(markdown_report(summary, header))
    return summary


# ----------------------------------------------------------------------------- the run
def free_memory() -> None:
    """Return freed tensors' memory to the device (after an out-of-memory error or a big run)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def invoked_command() -> str:
    """The command line as a user would type it (``python -m actqkv_llm`` shows as ``actqkv``)."""
    prog = Path(sys.argv[0]).name
    return shlex.join(["actqkv" if prog == "__main__.py" else prog, *sys.argv[1:]])


def load_engine(model: str | None = None, *, gguf_file: str | None = None, device: str | None = None,
                dtype: Any = None, method: str = "actqkv", **options: Any):
    """The engine benchmarks run on: ``model`` (short name, path or id) or the packaged default.

    Method ``full`` may read past the native window here (``allow_past_window``): how plain
    attention fails there is one of the things the benchmarks measure.
    """
    from actqkv_llm import Engine
    kw = dict(device=device, dtype=parse_dtype(dtype), method=method, progress=False,
              cache=False, allow_past_window=True, **options)
    if model is None:
        return Engine.default(**kw)
    return Engine.from_pretrained(model, gguf_file=gguf_file, **kw)


def parse_dtype(dtype: Any):
    """'bf16' / 'float32' / torch.dtype / None -> torch.dtype or None (the engine's own rules)."""
    from ..models.loading import resolve_dtype
    return None if dtype is None else resolve_dtype(dtype, torch.device("cpu"))


def method_engines(base: Any, methods: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
    """One engine per method, sharing ``base``'s loaded model."""
    return {m: base.with_method(m, **options) for m in methods}


def library_versions() -> dict[str, str]:
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def run_quality(out_dir: str | Path = "bench-results/quality", *,
                model: str | None = None, gguf_file: str | None = None,
                device: str | None = None, dtype: Any = None,
                methods: Sequence[str] = DEFAULT_METHODS,
                tasks: Sequence[str] = DEFAULT_TASKS,
                lengths: Sequence[int] = DEFAULT_LENGTHS,
                depths: Sequence[float] = T.DEFAULT_DEPTHS,
                samples: int = 4, seed: int = 0, max_new_tokens: int | None = None,
                options: dict[str, Any] | None = None, resume: bool = True,
                progress: bool = True, plots: bool = True, command: str | None = None,
                engine: Any = None, count_tokens: Callable[[str], int] | None = None,
                ) -> dict[str, Any]:
    """Run every method on the same generated samples; return the summary.

    Args:
        out_dir: where ``results.jsonl``, ``summary.json``, ``results.md`` and heat maps go.
        model, gguf_file, device, dtype: what to load (``model=None``: the default model).
        methods: compared in the same run, on the same samples, with the same ``options``.
        tasks: task names, optionally ``task:haystack`` (e.g. ``niah_single:filler``).
        lengths: tokens of document + question, in the engine's tokenizer.
        depths: needle positions as fractions of the haystack.
        samples: samples per (task, length, depth).
        seed: the seed every sample is derived from.
        max_new_tokens: overrides each task's default answer length.
        options: retrieval options (``RetrievalConfig`` fields, e.g. ``budget``) for every method.
        resume: skip results already in ``out_dir`` (False: discard them first).
        progress: show a tqdm bar over (sample, method) pairs.
        plots: write the heat maps.
        command: the command line recorded in the summary (default: ``sys.argv``).
        engine: an already-built engine to use instead of loading one (tests, notebooks).
        count_tokens: token counter for sizing samples (default: the engine's tokenizer).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = dict(options or {})
    specs = [T.task_label(*T.parse_task(t)) for t in tasks]
    depths = [float(d) for d in depths]
    lengths = [int(n) for n in lengths]
    command = command if command is not None else invoked_command()
    fingerprint = {"model": model or (getattr(engine, "model_id", None) if engine else "default"),
                   "gguf_file": gguf_file, "dtype": str(parse_dtype(dtype)) if dtype else None,
                   "seed": seed, "max_new_tokens": max_new_tokens, "options": options}
    _check_run(out_dir, fingerprint, resume)

    log = ResultsLog(out_dir / RESULTS)
    done = log.load()
    base = engine if engine is not None else load_engine(
        model, gguf_file=gguf_file, device=device, dtype=dtype, method=methods[0], **options)
    _check_build(out_dir, getattr(base, "fingerprint", None))
    engines = method_engines(base, methods, options)
    count = count_tokens or T.hf_token_counter(base.tokenizer)

    info = {
        "model": getattr(base, "model_id", model),
        "device": str(getattr(base, "device", device)),
        "dtype": str(getattr(base, "dtype", dtype)),
        "fingerprint": getattr(base, "fingerprint", None),
        "native_window": getattr(base, "native_window", None),
        "methods": {m: e.config.to_dict() for m, e in engines.items()},
        "options": options, "tasks": specs, "lengths": lengths, "depths": depths,
        "samples": samples, "seed": seed, "max_new_tokens": max_new_tokens,
        "command": command, "versions": library_versions(), "platform": platform.platform(),
    }

    jobs = _jobs(specs, lengths, depths, samples)
    grid_keys = {(m, t, n, round(d, 6), i) for m in methods for t, n, d, i in jobs}
    total = len(grid_keys)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=len(grid_keys & done.keys()), desc="bench quality",
                   unit="answer", dynamic_ncols=True)
    tally: dict[str, list[int]] = {m: [0, 0] for m in methods}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        for spec, length, depth, index in jobs:
            task, haystack = T.parse_task(spec)
            todo = [m for m in methods if (m, spec, length, round(depth, 6), index) not in done]
            if not todo:
                continue
            if realqa.is_real_task(spec):
                sample = realqa.make_qa_sample(task, length, index, count)
            else:
                sample = T.make_sample(task, length, depth, count, haystack=haystack, seed=seed, index=index)
            for m in todo:
                record = _answer(engines[m], m, sample, max_new_tokens)
                log.append(record)
                done[result_key(record)] = record
                tally[m][0] += record["correct"]
                tally[m][1] += 1
                if bar is not None:
                    bar.set_postfix_str(" ".join(
                        f"{k} {100 * c / n:.0f}%" for k, (c, n) in tally.items() if n))
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    info["started"], info["finished"] = started, time.strftime("%Y-%m-%dT%H:%M:%S")
    return write_reports(out_dir, info, plots=plots)


def _jobs(specs: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
          samples: int) -> list[tuple[str, int, float, int]]:
    """Every (task label, length, depth, sample index) a run answers, in the order it answers them.

    Synthetic tasks: ``samples`` x lengths x depths. Real-document tasks (``rstqa``): each of their
    questions once per length, at the depth where its answer sits in the text.
    """
    jobs: list[tuple[str, int, float, int]] = []
    for index in range(samples):
        for spec in specs:
            if not realqa.is_real_task(spec):
                jobs += [(spec, n, d, index) for n in lengths for d in depths]
    for spec in specs:
        if realqa.is_real_task(spec):
            text = realqa.load_text()
            jobs += [(spec, n, realqa.depth(text, q), i) for n in lengths for i, q in enumerate(realqa.QUESTIONS)]
    return jobs


def _answer(eng: Any, method: str, sample: T.Sample, max_new_tokens: int | None) -> dict[str, Any]:
    """Prefill the sample's document with one method, generate, score; one results line."""
    record: dict[str, Any] = {"method": method, "task": sample.label, "length": sample.length,
                              "depth": sample.depth, "sample": sample.index, "seed": sample.seed,
                              "n_tokens": sample.n_tokens, "expected": sample.expected}
    output, error = "", None
    t0 = time.perf_counter()
    prefill_s = None
    try:
        chat = sample.task in realqa.CHAT_TASKS   # asked as `actqkv ask` does; the rest: raw completion
        doc = eng.prefill(sample.prompt_document, chat=chat, progress=False)
        prefill_s = time.perf_counter() - t0
        record["doc_tokens"] = getattr(doc, "n_tokens", None)
        ask = eng.ask if chat else eng.generate
        output = ask(doc, sample.continuation, max_new_tokens=max_new_tokens or sample.max_new_tokens,
                     temperature=0.0)
    except InputError as exc:           # e.g. the document is too long for this method
        error = f"{type(exc).__name__}: {exc}"
    except (torch.OutOfMemoryError, MemoryError):   # a result; anything else is a bug
        error = "OOM"
    if error == "OOM":  # outside the handler: its traceback no longer pins the tensors
        free_memory()
    elapsed = time.perf_counter() - t0
    record.update(realqa.score(output, sample.expected) if realqa.is_real_task(sample.task)
                  else T.score(output, sample.expected))
    record.update(output=output, error=error, prefill_s=prefill_s,
                  generate_s=None if prefill_s is None or error else elapsed - prefill_s)
    return record
