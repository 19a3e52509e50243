"""``actqkv bench candidates``: the table that picks the default model.

For each registry model that is installed (``actqkv models``), in its own process (so its peak RAM is
its own), on the real-document QA text (bench/realqa.py, about 30K tokens):

1. load the model (its one-time GGUF conversion, if any, is done first and timed apart);
2. prefill a window of ``--length`` tokens of the text (the whole text when it fits), as ``actqkv
   ask`` does: chat layout, the chosen method;
3. ask the first question and time its first token: *time to first answer* = prefill + question +
   first token (model load excluded, reported apart);
4. ask every question of the QA set on that one prefilled document (the main job: prefill once, ask
   many) and score them (normalized match);
5. save the document's KV to disk once and measure it; report the model's disk (GGUF + converted
   weights) and the process's peak RSS.

Writes ``candidates.json`` and ``candidates.md`` into ``--out``. One command::

    OMP_NUM_THREADS=<cores> actqkv bench candidates --device cpu --length 30K --out bench-results/candidates
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import realqa

RESULT = "candidates.json"
REPORT = "candidates.md"
DEFAULT_LENGTH = 30_000


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_one(eng: Any, text: str, length: int, questions: Sequence[realqa.Question] | None = None,
                max_new_tokens: int = realqa.MAX_NEW_TOKENS, save_dir: str | Path | None = None) -> dict[str, Any]:
    """Time to first answer, QA accuracy and document disk size for one loaded engine."""
    import torch

    from .tasks import hf_token_counter

    questions = list(realqa.QUESTIONS if questions is None else questions)
    count = hf_token_counter(eng.tokenizer)
    doc_text = realqa.window(text, len(text) // 2, length, count)

    # a model without a chat template (Gemma 3 270M base) is asked by plain completion
    chat = bool(getattr(eng.tokenizer, "chat_template", None))

    def ask(q, stream=False):
        prompt = realqa.continuation(q, chat=chat)
        if chat:
            return eng.stream(doc, prompt, max_new_tokens=max_new_tokens) if stream else \
                eng.ask(doc, prompt, max_new_tokens=max_new_tokens)
        out = eng.complete(doc, prompt, stream=stream, max_new_tokens=max_new_tokens, temperature=0.0)
        return out if stream else out.text

    t0 = time.perf_counter()
    doc = eng.prefill(doc_text, chat=chat, cache=False)
    prefill_s = time.perf_counter() - t0
    first = questions[0]
    t1 = time.perf_counter()
    stream = ask(first, stream=True)
    pieces = iter(stream)
    first_piece = next(pieces, "")
    first_token_s = time.perf_counter() - t1
    rest = "".join(pieces)
    answer_s = time.perf_counter() - t1
    n_answer = stream.answer.usage.completion_tokens if stream.answer else 0

    records = []
    t2 = time.perf_counter()
    for i, q in enumerate(questions):
        if i == 0:
            output = first_piece + rest
        else:
            output = ask(q)
        scored = realqa.score(output, q.answers)
        records.append({"index": i, "question": q.question, "expected": list(q.answers),
                        "output": output, "correct": scored["correct"],
                        "in_document": realqa.evidence_offset(doc_text, q) >= 0})
    qa_s = time.perf_counter() - t2

    doc_bytes = None
    if save_dir is not None:
        target = Path(tempfile.mkdtemp(prefix="doc-", dir=save_dir)) / "doc"
        try:
            doc.save(target)
            doc_bytes = _dir_bytes(target)
        finally:
            shutil.rmtree(target.parent, ignore_errors=True)
    asked = [r for r in records if r["in_document"]]
    return {
        "doc_tokens": doc.n_tokens, "method": eng.config.method, "native_window": eng.native_window,
        "layout": "chat" if chat else "completion",
        "prefill_s": round(prefill_s, 2), "first_token_s": round(first_token_s, 3),
        "time_to_first_answer_s": round(prefill_s + first_token_s, 2),
        "prefill_tok_per_s": round(doc.n_tokens / prefill_s, 1) if prefill_s else None,
        "decode_tok_per_s": round(max(n_answer - 1, 0) / (answer_s - first_token_s), 1)
        if n_answer > 1 and answer_s > first_token_s else None,
        "qa_correct": sum(r["correct"] for r in asked), "qa_n": len(asked),
        "qa_accuracy": round(sum(r["correct"] for r in asked) / len(asked), 4) if asked else None,
        "qa_seconds": round(qa_s, 1), "doc_kv_bytes": doc_bytes, "threads": torch.get_num_threads(),
        "answers": records,
    }


def _convert(name: str, out: Path) -> int:
    """Runs in its own process: assemble and convert one registry model once (timed, RAM not counted)."""
    from ..models import loading, registry

    t0 = time.perf_counter()
    _, _, info = loading.load_model(registry.gguf_path(name), device="cpu", progress=False)
    out.write_text(json.dumps({"converted_now": not info.from_cache,
                               "first_load_s": round(time.perf_counter() - t0, 1)}))
    return 0


def _child(name: str, length: int, method: str, device: str | None, out: Path, threads: int | None,
           questions: int | None) -> int:
    """Runs in its own process: load one registry model (already converted), measure, write ``out``."""
    import torch

    from ..engine import Engine
    from ..models import loading, registry

    if threads:
        torch.set_num_threads(threads)
    spec = registry.get(name)
    t1 = time.perf_counter()
    model, tokenizer, info = loading.load_model(registry.gguf_path(spec), device=device, progress=False)
    eng = Engine(model, tokenizer, method=method, progress=False, model_id=info.model_id,
                 fingerprint=info.fingerprint, cache=False)
    load_s = time.perf_counter() - t1
    text = realqa.load_text()
    qs = realqa.QUESTIONS[:questions] if questions else None
    result = measure_one(eng, text, length, qs, save_dir=out.parent)
    converted = loading.model_cache_root() / "models" / info.fingerprint["weights_sha256"]
    result.update({
        "model": name, "title": spec.title, "gguf_bytes": spec.size,
        "converted_bytes": _dir_bytes(converted) if converted.exists() else None,
        "load_s": round(load_s, 1),
        "device": str(eng.device), "dtype": str(eng.dtype), "length": length,
    })
    out.write_text(json.dumps(result, indent=1))
    return 0


def _run_child(argv: list[str]) -> tuple[int, int]:
    """Run a child process; returns (exit status, its peak RSS in bytes)."""
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_candidates(out_dir: str | Path, models: Sequence[str] | None = None, length: int = DEFAULT_LENGTH,
                   method: str = "actqkv", device: str | None = "cpu", threads: int | None = None,
                   questions: int | None = None,
                   run_child: Callable[[list[str]], tuple[int, int]] = _run_child) -> list[dict[str, Any]]:
    """Measure every installed (or each named) registry model; write candidates.json / .md."""
    from ..models import registry

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    realqa.load_text()  # fail now, with the pip command, if the text is missing
    names = list(models) if models else [s.name for s in registry.MODELS.values() if registry.installed(s)]
    rows: list[dict[str, Any]] = []
    for name in names:
        spec = registry.get(name)
        if not registry.installed(spec):
            rows.append({"model": name, "title": spec.title, "error": f"not installed: {spec.pip_command}"})
            continue
        part = out / f"{name}.json"
        argv = [sys.executable, "-m", "actqkv_llm.bench.candidates", "--one", name, "--length", str(length),
                "--method", method, "--result", str(part)]
        argv += ["--device", device] if device else []
        argv += ["--threads", str(threads)] if threads else []
        argv += ["--questions", str(questions)] if questions else []
        print(f"actqkv bench candidates: {name}: converting once (if needed) ...", file=sys.stderr, flush=True)
        conv = out / f"{name}.convert.json"
        code, _ = run_child([sys.executable, "-m", "actqkv_llm.bench.candidates", "--one", name,
                             "--convert-only", "--result", str(conv)])
        if code != 0 or not conv.exists():
            rows.append({"model": name, "title": spec.title, "error": f"conversion failed (exit status {code})"})
            continue
        print(f"actqkv bench candidates: {name}: measuring ...", file=sys.stderr, flush=True)
        code, rss = run_child(argv)
        if code != 0 or not part.exists():
            rows.append({"model": name, "title": spec.title, "error": f"exit status {code}"})
            continue
        row = json.loads(part.read_text())
        row["peak_rss_bytes"] = rss
        row.update(json.loads(conv.read_text()))
        rows.append(row)
    info = {"length": length, "method": method, "device": device, "threads": threads,
            "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "text": realqa.TEXT_TITLE, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / RESULT).write_text(json.dumps({"info": info, "models": rows}, indent=1))
    (out / REPORT).write_text(markdown(rows, info))
    return rows


def _mb(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def markdown(rows: Sequence[dict[str, Any]], info: dict[str, Any]) -> str:
    """The candidate table (one row per model), then how it was measured."""
    lines = ["# Default-model candidates", "",
             f"Text: {info.get('text')}; document window {info.get('length'):,} tokens (or the whole text); "
             f"method {info.get('method')}; device {info.get('device')}; threads {info.get('threads') or 'default'}; "
             f"{info.get('cpus')} CPUs; {info.get('platform')}.", "",
             "| model | QA accuracy | time to first answer | prefill | decode | load | disk: model (GGUF + converted) "
             "| disk: document KV | peak RAM |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['error']} | | | | | | | |")
            continue
        acc = "-" if r.get("qa_accuracy") is None else f"{100 * r['qa_accuracy']:.0f}% ({r['qa_correct']}/{r['qa_n']})"
        model_disk = (r.get("gguf_bytes") or 0) + (r.get("converted_bytes") or 0)
        lines.append(
            f"| {r['model']} | {acc} | {r['time_to_first_answer_s']:.1f} s at {r['doc_tokens']:,} tok "
            f"| {r['prefill_tok_per_s']} tok/s | {r['decode_tok_per_s'] or '-'} tok/s | {r['load_s']} s "
            f"| {_mb(model_disk)} | {_mb(r.get('doc_kv_bytes'))} | {_mb(r.get('peak_rss_bytes'))} |")
    lines += ["", "Time to first answer = prefill of the document + the question + the first answer token "
              "(model load apart). QA: every question asked on the one prefilled document, scored by "
              "normalized match; only questions whose answer lies in the window count."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actqkv_llm.bench.candidates")
    p.add_argument("--one", required=True)
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH)
    p.add_argument("--method", default="actqkv")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--questions", type=int, default=None)
    p.add_argument("--result", required=True)
    p.add_argument("--convert-only", action="store_true")
    a = p.parse_args(argv)
    if a.convert_only:
        return _convert(a.one, Path(a.result))
    return _child(a.one, a.length, a.method, a.device, Path(a.result), a.threads, a.questions)


if __name__ == "__main__":
    sys.exit(main())
