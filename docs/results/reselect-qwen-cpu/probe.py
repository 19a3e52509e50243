"""Recall of full attention's memory mass against the oracle, per layer, for one ask on Qwen2.5-Coder-0.5B
on the CPU: prefill once, then answer with the recall meter on (documents are not metered).

usage: OPTS=JSON python probe.py LENGTH DEPTH   (OPTS: retrieval options, e.g. {"reselect_every": 32}; model: /work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf)
Run at commit 409e687 (rerank: the candidates' own softmax, activation-weighted tokens) and at
e695193 (rerank normalised with the sinks and window, unweighted tokens) for output.txt.
"""
import sys

from actqkv_llm import Engine
from actqkv_llm.bench import tasks as T
from actqkv_llm.bench.meter import RecallMeter

length, depth = int(sys.argv[1]), float(sys.argv[2])
import json, os
opts = json.loads(os.environ.get("OPTS", "{}"))
eng = Engine.from_pretrained("/work/models", gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", **opts,
                             device="cpu", dtype="fp32", progress=False)
sample = T.make_sample("niah_single", length, depth, lambda s: len(eng.tokenizer(s)["input_ids"]), seed=0, index=0)
doc = eng.prefill(sample.prompt_document, chat=True, progress=False, cache=False)
eng.meter = RecallMeter(document_every=10**9)
out = eng.ask(doc, sample.question, temperature=0.0, max_new_tokens=30)
rows = eng.meter.table()
for ph in ("question", "decode"):
    r = [x["recall"] / x["oracle"] for x in rows if x["phase"] == ph]
    print(ph, "mean", round(sum(r) / len(r), 3), "min", round(min(r), 2), "layers 0-5", " ".join(f"{x:.2f}" for x in r[:6]))
print(repr(out[-40:]), sample.expected)
