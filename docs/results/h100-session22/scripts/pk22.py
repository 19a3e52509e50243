"""Session 22: the 8B shape's prefill (random weights, bf16) in one process, prefill_kernel torch / auto
alternated twice at 32K and once at 64K and 128K after an 8K warm-up of each (memory scoring
compiled and loaded), so the second 32K pair has no first-use costs; the first auto prefill of the
process is timed too (its agreement check and its first Triton loads)."""
import time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

dev = torch.device("cuda")
net = build_random_model("llama-3.1-8b", dev, torch.bfloat16)
base = Engine(net, None, progress=False, cache=False, allow_past_window=True)
engines = {k: base.with_method("actqkv", prefill_kernel=k) for k in ("torch", "auto")}

def prefill(kern, n, seed=1):
    ids = torch.randint(0, 115000, (n,), generator=torch.Generator().manual_seed(seed))
    torch.cuda.synchronize(); t = time.perf_counter()
    doc = engines[kern].prefill_ids(ids)
    torch.cuda.synchronize(); s = time.perf_counter() - t
    del doc
    return s

print(f"first prefill of the process, auto, 8K: {prefill('auto', 8192):.2f} s", flush=True)
print(f"then torch 8K: {prefill('torch', 8192):.2f} s; auto 8K again: {prefill('auto', 8192):.2f} s", flush=True)
for n, reps in ((32768, 2), (65536, 1), (131072, 1)):
    for r in range(reps):
        for kern in ("torch", "auto"):
            print(f"{n} tokens, {kern}, run {r + 1}: {prefill(kern, n):.2f} s", flush=True)
