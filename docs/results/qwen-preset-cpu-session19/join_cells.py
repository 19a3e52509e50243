"""Join a cell's runs into one recall.md / recall.json / recall.png with the library's own summary
and plot (actqkv_llm.bench.recall.summarize / markdown, bench.plots.plot_recall), as if one run had
made all sixteen samples. Run from this directory: python join_cells.py"""
import json
from pathlib import Path

from actqkv_llm.bench.plots import plot_recall
from actqkv_llm.bench.recall import markdown, summarize
from per_sample import load_cell

CELLS = {  # cell -> (run's recall.jsonl, the current preset's variant name in that run)
    "ask-16K": [("../int8-host-qwen-cpu-session18/recall.jsonl", "actqkv"), ("ask-16K/recall.jsonl", "actqkv")],
    "comp-16K": [("comp-16K/recall.jsonl", "actqkv")],
    "ask-30K": [("../recall-qwen-cpu-session17/recall.jsonl", "actqkv+question_rerank=16"),
                ("ask-30K/recall.jsonl", "actqkv"), ("ask-30K-15/recall.jsonl", "actqkv")],
    "comp-30K": [("comp-30K/recall.jsonl", "actqkv"), ("comp-30K-5/recall.jsonl", "actqkv")],
}
LAYOUT = {"ask-16K": ("ask", 16384), "comp-16K": ("completion", 16384), "ask-30K": ("ask", 30720),
          "comp-30K": ("completion", 30720)}

for cell, runs in CELLS.items():
    rows = [r for _, (_, r) in sorted(load_cell(runs).items())]
    assert [r["sample"] for r in rows] == list(range(16)), cell
    summary = summarize(rows)
    layout, length = LAYOUT[cell]
    runs_text = ", ".join(f"{p} ({v})" for p, v in runs)
    info = {"task": "niah_single", "layout": layout, "lengths": [length], "samples": len(rows), "seed": 0,
            "model": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (fp32)", "device": "cpu (2 cores)",
            "command": f"joined by join_cells.py from {runs_text}; each run's command is in its recall.md"}
    out = Path("joined") / cell
    out.mkdir(parents=True, exist_ok=True)
    (out / "recall.json").write_text(json.dumps(summary, indent=2))
    (out / "recall.md").write_text(markdown(summary, info))
    plot_recall(summary, out / "recall.png")
    print(cell, len(rows), "->", out)
