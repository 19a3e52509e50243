"""Session 23 (b: pin_edges without a host copy): which calls of a 32K prefill and of 64 decoded tokens make the host wait for the GPU (8B shape, bf16, warmed):
torch.cuda.set_sync_debug_mode("warn") during one prefill, each warning's call chain inside
actqkv_llm counted; then the time of that prefill's first chunk and of the whole, to weigh them."""
import collections, time, traceback, warnings, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

net = build_random_model("llama-3.1-8b", torch.device("cuda"), torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
gen = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(0, 115000, (n,), generator=gen)
doc = eng.prefill_ids(ids(2048)); eng.generate_ids(doc, ids(32), max_new_tokens=3); del doc
for _ in range(2):
    doc = eng.prefill_ids(ids(32768)); del doc
torch.cuda.synchronize()
seen = collections.Counter()
def show(message, category, filename, lineno, file=None, line=None):
    chain = [f"{f.filename.split('actqkv_llm/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_stack()
             if "actqkv_llm/" in f.filename or "transformers/" in f.filename][-6:]
    seen[(str(message)[:80], " <- ".join(reversed(chain)))] += 1
warnings.showwarning = show
warnings.simplefilter("always")
torch.cuda.set_sync_debug_mode("warn")
doc = eng.prefill_ids(ids(32768))
torch.cuda.set_sync_debug_mode(0)
for (msg, chain), n in seen.most_common(30):
    print(f"{n:5d}x {msg}\n        {chain}")
print(f"{sum(seen.values())} synchronizing calls in one 32K prefill")
eng.generate_ids(doc, ids(32), max_new_tokens=8)   # the graph captured before the counted answer
seen.clear()
torch.cuda.set_sync_debug_mode("warn")
t = time.perf_counter(); out = eng.generate_ids(doc, ids(32), max_new_tokens=64); torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode(0)
print(f"answer of {len(out)} tokens in {time.perf_counter() - t:.2f} s (under the debug mode)")
for (msg, chain), n in seen.most_common(30):
    print(f"{n:5d}x {msg}\n        {chain}")
print(f"{sum(seen.values())} synchronizing calls in one 32-token question and 64 decoded tokens")
del doc
for n in (32768,):
    x = ids(n); torch.cuda.synchronize(); t = time.perf_counter(); doc = eng.prefill_ids(x); torch.cuda.synchronize()
    print(f"{n} tokens: {time.perf_counter() - t:.3f} s", flush=True); del doc
