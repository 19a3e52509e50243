"""``actqkv bench ask``: the main command as a user runs it, timed from outside.

Each step runs ``actqkv ask`` as a new process on the real-document QA text (bench/realqa.py: the
reStructuredText specification, about 30K tokens, whole) and times *process start to first token*
(the first non-blank byte of the streamed answer on stdout) and the whole run:

1. ``first``: no server running: it starts the resident server, which loads the model and prefills
   the document (or finds it in the disk cache);
2. ``second``: the same command again: the server holds the model and the document;
3. ``restarted``: after ``actqkv server stop``: a new server loads the model, the document comes
   from the disk cache;
4. ``in-process``: ``--no-server``: this process imports torch, loads the model, reads the document
   from the disk cache (what every ask cost before the server).

Then every question of the QA set (or the first ``--questions``) is asked through ``actqkv ask`` on
that document (the server warm) and scored as ``bench candidates`` scores them. Writes ``ask.json``
and ``ask.md`` into ``--out``. One command::

    OMP_NUM_THREADS=2 actqkv bench ask --out bench-results/ask
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from . import realqa

RESULT = "ask.json"
REPORT = "ask.md"
STEPS = (("first", "no server: it starts, loads the model, prefills (or finds the document cached)"),
         ("second", "the same command again: the server holds the model and the document"),
         ("restarted", "after 'actqkv server stop': a new server loads the model, the document from disk"),
         ("in-process", "--no-server: imports torch, loads the model, the document from disk"))


def timed_ask(argv: Sequence[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one ``actqkv ask``; seconds from process start to the first non-blank byte on stdout, and in all."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    first, out = None, bytearray()
    while True:
        byte = proc.stdout.read(1)
        if not byte:
            break
        if first is None and not byte.isspace():
            first = time.perf_counter() - start
        out += byte
    proc.wait(timeout=timeout)
    reader.join(timeout=timeout)
    return {"returncode": proc.returncode, "first_token_s": None if first is None else round(first, 2),
            "total_s": round(time.perf_counter() - start, 2), "answer": out.decode("utf-8", "replace").strip(),
            "stderr": b"".join(errors).decode("utf-8", "replace").strip()}


def _doc_seconds(stderr: str) -> float | None:
    """The 'N tokens ready in X s' of a run's status lines."""
    for line in stderr.splitlines():
        if "tokens ready in" in line:
            try:
                return float(line.rsplit("ready in", 1)[1].split()[0])
            except (IndexError, ValueError):
                return None
    return None


def run_ask_bench(out_dir: str | Path, model: str | None = None, cache_dir: str | None = None,
                  questions: int | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """The four timed steps, then the QA set through ``actqkv ask``; writes ask.json / ask.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = out / "restructuredtext.txt"
    doc.write_text(realqa.load_text(), encoding="utf-8")
    base = [sys.executable, "-m", "actqkv_llm"]
    common = (["--model", model] if model else []) + (["--cache-dir", cache_dir] if cache_dir else [])
    env = {**os.environ, "ACTQKV_SERVER": "on"}
    qs = list(realqa.QUESTIONS[:questions] if questions else realqa.QUESTIONS)

    def ask(q: realqa.Question, *extra: str) -> dict[str, Any]:
        argv = [*base, "ask", str(doc), realqa.continuation(q, chat=True), *common,
                "--max-new-tokens", str(realqa.MAX_NEW_TOKENS), *extra]
        run = timed_ask(argv, env, timeout)
        if run["returncode"] != 0:
            raise RuntimeError(f"actqkv ask failed ({run['returncode']}): {run['stderr'][-2000:]}")
        return {**run, "document_s": _doc_seconds(run["stderr"]),
                "resident": "resident server" in run["stderr"]}

    def stop_server() -> None:
        subprocess.run([*base, "server", "stop", *(["--cache-dir", cache_dir] if cache_dir else [])],
                       env=env, check=True, capture_output=True, timeout=120)

    steps: dict[str, dict[str, Any]] = {}
    stop_server()
    steps["first"] = ask(qs[0])
    steps["second"] = ask(qs[1 % len(qs)])
    stop_server()
    steps["restarted"] = ask(qs[2 % len(qs)])
    steps["in-process"] = ask(qs[3 % len(qs)], "--no-server")

    records = []
    try:
        for i, q in enumerate(qs):
            run = ask(q)
            scored = realqa.score(run["answer"], q.answers)
            records.append({"index": i, "question": q.question, "expected": list(q.answers),
                            "output": run["answer"], "correct": scored["correct"],
                            "first_token_s": run["first_token_s"], "total_s": run["total_s"],
                            "resident": run["resident"]})
    finally:
        stop_server()  # leave nothing running
    info = {"model": model or "the default", "cache_dir": cache_dir, "questions": len(qs),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "text": realqa.TEXT_TITLE,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result = {"info": info, "steps": {k: {key: v for key, v in s.items() if key != "stderr"} for k, s in steps.items()},
              "qa_correct": sum(r["correct"] for r in records), "qa_n": len(records),
              "qa_first_token_median_s": statistics.median(r["first_token_s"] for r in records),
              "qa_total_median_s": statistics.median(r["total_s"] for r in records),
              "all_resident": all(r["resident"] for r in records), "answers": records}
    (out / RESULT).write_text(json.dumps(result, indent=1))
    (out / REPORT).write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    info = result["info"]
    lines = ["# actqkv ask, timed from outside", "",
             f"Model: {info['model']}; text: {info['text']}; {info['cpus']} CPUs, "
             f"OMP_NUM_THREADS={info['omp_num_threads']}; {info['platform']}; {info['finished']}.", "",
             "| step | what it pays | process start to first token | whole run | document ready in |",
             "|---|---|---:|---:|---:|"]
    for name, what in STEPS:
        s = result["steps"][name]
        doc_s = "-" if s.get("document_s") is None else f"{s['document_s']:.1f} s"
        lines.append(f"| {name} | {what} | {s['first_token_s']:.1f} s | {s['total_s']:.1f} s | {doc_s} |")
    lines += ["", f"QA through `actqkv ask` (server warm): {result['qa_correct']}/{result['qa_n']} correct; "
              f"per question, median {result['qa_first_token_median_s']:.1f} s to the first token, "
              f"{result['qa_total_median_s']:.1f} s in all"
              + ("" if result["all_resident"] else " (some answered in-process: the server was unavailable)") + "."]
    return "\n".join(lines) + "\n"
