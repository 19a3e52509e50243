"""Session 9: the 128K run of call C was killed at its 225 s limit after 13 of its 16 samples, before
it wrote its tables; this rebuilds recall.md and recall.json from its recall.jsonl with the
library's own summarize / markdown (2-core CPU). No plot: the run had no meter (--no-meter)."""
import json, sys
from pathlib import Path
from actqkv_llm.bench.recall import markdown, summarize

out = Path(sys.argv[1])
records = [json.loads(line) for line in open(out / "recall.jsonl", encoding="utf-8")]
summary = summarize(records)
info = {"model": "/root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "device": "cuda:0", "task": "niah_single",
        "layout": "completion", "lengths": [131072], "samples": "16 (13: the run was killed before the 14th)",
        "seed": 0, "command": "actqkv bench recall --model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf "
        "--device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24 --variants actqkv --samples 16 "
        "--lengths 128K --out /root/out/c/128K"}
(out / "recall.json").write_text(json.dumps({"info": info, "summary": summary}, indent=1))
(out / "recall.md").write_text(markdown(summary, info) + "\nRebuilt from recall.jsonl by scripts/summarize_partial.py "
                               "(the run was killed at its time limit after 13 of 16 samples).\n")
