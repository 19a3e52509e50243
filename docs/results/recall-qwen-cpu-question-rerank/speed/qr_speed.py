"""Time to first token and decode ms/token of rerank variants on ONE prefill of a 30K random-token
document (bench speed's document and question: seed 0, ids below 0.9 x vocab, 32-token question),
Qwen2.5-Coder-0.5B fp32 on the CPU; each variant asks through Engine.with_method on the same
document; two rounds, variants alternating, the faster of the two kept (as bench speed does)."""
import sys, time, torch
from actqkv_llm import Engine

model_dir, gguf = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 30720
eng = Engine.from_pretrained(model_dir, gguf_file=gguf, device="cpu", dtype="fp32", progress=False, cache=False)
vocab = eng.model.config.vocab_size
gen = torch.Generator().manual_seed(0)
rand = lambda k: torch.randint(0, int(vocab * 0.9), (k,), generator=gen)
question = rand(32)
ids = rand(n)
t0 = time.perf_counter(); doc = eng.prefill_ids(ids); print(f"prefill {n} tokens: {time.perf_counter() - t0:.1f} s", flush=True)
variants = {"default (rerank 16)": {}, "question_rerank=8": {"question_rerank": 8}, "rerank=8": {"rerank": 8}}
engines = {k: eng.with_method("actqkv", **o) if o else eng for k, o in variants.items()}
res = {k: {"ttft": [], "decode": []} for k in variants}
for rnd in range(2):
    order = list(variants) if rnd == 0 else list(reversed(variants))
    for k in order:
        e = engines[k]
        t0 = time.perf_counter(); e.generate_ids(doc, question, max_new_tokens=1); res[k]["ttft"].append(time.perf_counter() - t0)
        first = []
        out = e.generate_ids(doc, question, max_new_tokens=33, on_token=lambda i: first.append(time.perf_counter()) if i == 0 else None)
        res[k]["decode"].append(1000 * (time.perf_counter() - first[0]) / max(1, len(out) - 1))
        print(f"round {rnd} {k}: ttft {res[k]['ttft'][-1]:.2f} s, decode {res[k]['decode'][-1]:.0f} ms/token ({len(out)} tokens) {out[:6]}", flush=True)
print("\n| variant | TTFT s (best of 2) | decode ms/token (best of 2) |\n|---|---:|---:|")
for k in variants:
    print(f"| {k} | {min(res[k]['ttft']):.2f} | {min(res[k]['decode']):.0f} |")
