"""Decode steps on the Llama-3.1-8B shape: CUDA-graph steps vs reference steps, step by step."""
import statistics as st, sys, time, torch
from torch.profiler import profile, ProfilerActivity
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
print("weights GiB", sum(p.numel() * p.element_size() for p in net.parameters()) / 2**30)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (n,), generator=g))
q = torch.randint(0, 100000, (24,), generator=g)
torch.cuda.synchronize(); t = time.perf_counter()
first = eng.generate_ids(doc, q, max_new_tokens=40); torch.cuda.synchronize()
print(f"first call (captures the graph): {time.perf_counter() - t:.3f} s, replays {eng.decode_graph.replays}")

def per_step(e, steps=97):
    times, kinds = [], []
    orig = e._decode_step
    def timed(sess, tok):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        r0 = e.decode_graph.replays if e.decode_graph is not None else 0
        out = orig(sess, tok); torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
        kinds.append(e.decode_graph is not None and e.decode_graph.replays > r0)
        return out
    e._decode_step = timed
    toks = e.generate_ids(doc, q, max_new_tokens=steps)
    del e._decode_step
    g_ = [t for t, k in zip(times, kinds) if k]; r_ = [t for t, k in zip(times, kinds) if not k]
    print(f"  steps {len(times)}: graph {len(g_)} (median {st.median(g_) if g_ else 0:.2f} ms), "
          f"reference {len(r_)} (median {st.median(r_) if r_ else 0:.2f} ms); mean {st.mean(times):.2f} ms/token")
    return toks

print("default (decode_graph auto):")
a = per_step(eng)
ref = eng.with_method("actqkv", decode_graph=False)
print("decode_graph=False:")
b = per_step(ref)
same = sum(x == y for x, y in zip(a, b))
print(f"tokens equal to the reference path: {same}/{len(a)}; first difference at {next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)}")
print("peak GiB", torch.cuda.max_memory_allocated() / 2**30)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    eng.generate_ids(doc, q, max_new_tokens=17); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
