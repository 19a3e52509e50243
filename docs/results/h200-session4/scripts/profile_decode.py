"""Profile decode steps of the default on the Llama-3.1-8B shape: top ops by CUDA and CPU time."""
import sys, time, torch
from torch.profiler import profile, ProfilerActivity
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (n,), generator=g))
q = torch.randint(0, 100000, (24,), generator=g)
eng.generate_ids(doc, q, max_new_tokens=8)
torch.cuda.synchronize()
t = time.perf_counter(); eng.generate_ids(doc, q, max_new_tokens=33); torch.cuda.synchronize()
print(f"33 tokens incl. question: {time.perf_counter()-t:.3f} s")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    eng.generate_ids(doc, q, max_new_tokens=17)
    torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
print(ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
# Python-level: which of our functions take the wall time (cProfile over 16 decode steps)
import cProfile, pstats, io
pr = cProfile.Profile(); pr.enable()
eng.generate_ids(doc, q, max_new_tokens=17); torch.cuda.synchronize()
pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45); print(s.getvalue())
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30); print(s.getvalue())
