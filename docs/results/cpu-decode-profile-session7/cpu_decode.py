import time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from torch.profiler import profile, ProfilerActivity
net = build_random_model("smollm2-135m", "cpu", torch.float32)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
t = time.perf_counter(); doc = eng.prefill_ids(torch.randint(0, 40000, (8192,), generator=g)); print("prefill", time.perf_counter() - t)
q = torch.randint(0, 40000, (24,), generator=g)
eng.generate_ids(doc, q, max_new_tokens=8)
t = time.perf_counter(); eng.generate_ids(doc, q, max_new_tokens=40); print("41 tokens incl question", time.perf_counter() - t)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    eng.generate_ids(doc, q, max_new_tokens=40)
ka = prof.key_averages()
print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
