# CPU profile of the reference decode step: python p.py N_TOKENS [METHOD ...] (random SmolLM2-135M shape, fp32)
import time, torch, sys
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from torch.profiler import profile, ProfilerActivity
torch.manual_seed(0)
net = build_random_model("smollm2-135m", "cpu", torch.float32, max_position_embeddings=8192)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
n = int(sys.argv[1])
ids = torch.randint(0, 40000, (n,), generator=g)
q = torch.randint(0, 40000, (32,), generator=g)
for m in sys.argv[2:] or ("actqkv",):
    e = eng if m == "actqkv" else eng.with_method(m)
    # each method prefills its own document (actqkv-paper stores summary keys the default does not)
    t = time.perf_counter(); doc = e.prefill_ids(ids); print(m, "prefill", round(time.perf_counter() - t, 1), flush=True)
    e.generate_ids(doc, q, max_new_tokens=4)
    t = time.perf_counter(); e.generate_ids(doc, q, max_new_tokens=1); t1 = time.perf_counter() - t
    t = time.perf_counter(); e.generate_ids(doc, q, max_new_tokens=33); t33 = time.perf_counter() - t
    print(m, "question+1", round(t1, 3), "per decode token ms", round((t33 - t1) / 32 * 1e3, 1), flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        e.generate_ids(doc, q, max_new_tokens=33)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))
