"""NOT RUN (written in session 22 for the next lease): where the 32K prefill's extra time in a
`bench speed` run goes (2.86-4.18 s there against 2.03 s in a process that had run a 32K prefill
before, h100-session22 d/f/e). Bench's order (a 2K warm-up prefill + question, then 32K), then the
same 32K again; every call of the Triton passes timed with a synchronize on each side, so the first
and second 32K split into the passes' calls (first-use loads would show as a few slow calls) and
the rest. usage (GPU machine, repository root): PYTHONPATH=$PWD python next-gap.py"""
import time, torch
import actqkv_llm.retrieval.bound_mass as bm
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

calls = []
inner = bm.bound_mass_triton
def timed(*a, **k):
    torch.cuda.synchronize(); t = time.perf_counter(); out = inner(*a, **k); torch.cuda.synchronize()
    calls.append(time.perf_counter() - t); return out
bm.bound_mass_triton = timed

net = build_random_model("llama-3.1-8b", torch.device("cuda"), torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
gen = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(0, 115000, (n,), generator=gen)
doc = eng.prefill_ids(ids(2048)); eng.generate_ids(doc, ids(32), max_new_tokens=3); del doc
print(f"warm-up: {len(calls)} calls of the passes, {sum(calls):.3f} s")
for run in (1, 2):
    calls.clear(); torch.cuda.synchronize(); t = time.perf_counter()
    doc = eng.prefill_ids(ids(32768)); torch.cuda.synchronize(); total = time.perf_counter() - t; del doc
    slow = sorted(calls)[-5:]
    print(f"32K run {run}: {total:.2f} s; passes {len(calls)} calls {sum(calls):.3f} s "
          f"(median {sorted(calls)[len(calls) // 2] * 1e3:.2f} ms, slowest {[round(s * 1e3, 1) for s in slow]} ms)")
