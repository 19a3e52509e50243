"""Session 8: the ask run of call B was killed at its time limit after 31 of its 32 samples (30K
sample 15 missing) before it wrote its tables; this rebuilds recall.md, recall.json and recall.png
from its recall.jsonl with the library's own summarize / markdown / plot_recall (2-core CPU)."""
import json, sys
from pathlib import Path
from actqkv_llm.bench.plots import plot_recall
from actqkv_llm.bench.recall import markdown, summarize

out = Path(sys.argv[1])
records = [json.loads(line) for line in open(out / "recall.jsonl", encoding="utf-8")]
summary = summarize(records)
info = {"model": "/root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "device": "cuda:0", "task": "niah_single",
        "layout": "ask", "lengths": [16384, 30720], "samples": "16 (30K: 15, the run was killed before the 16th)",
        "seed": 0, "command": "actqkv bench recall --model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf "
        "--device cuda --dtype bf16 --no-progress --variants actqkv,actqkv+rerank=8 --lengths 16K,30K --samples 16 "
        "--layout ask --max-new-tokens 40 --out $OUT/b/ask"}
(out / "recall.json").write_text(json.dumps({"info": info, "summary": summary}, indent=1))
(out / "recall.md").write_text(markdown(summary, info) + "\nRebuilt from recall.jsonl by scripts/summarize_partial.py "
                               "(the run was killed at its time limit after 31 of 32 samples).\n")
plot_recall(summary, out / "recall.png")
