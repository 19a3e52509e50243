"""Session 6 profile: where a static decode step and a 32K prefill spend GPU time (8B shape)."""
import cProfile, io, pstats, sys, time, torch
from torch.profiler import profile, ProfilerActivity
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
gen = torch.Generator().manual_seed(0)
ids = torch.randint(0, 100000, (n,), generator=gen)
q = torch.randint(0, 100000, (24,), generator=gen)
def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); r = fn(); torch.cuda.synchronize(); return r, time.perf_counter() - t
doc, t0 = timed(lambda: eng.prefill_ids(ids)); print(f"prefill {n}: {t0:.3f} s (first)")
doc, t1 = timed(lambda: eng.prefill_ids(ids)); print(f"prefill {n}: {t1:.3f} s")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    eng.prefill_ids(ids); torch.cuda.synchronize()
ka = prof.key_averages()
tot = sum(e.self_device_time_total for e in ka)
print(f"PREFILL kernels total {tot/1e3:.1f} ms (wall ~{t1*1e3:.0f} ms unprofiled)")
print(ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=90))
pr = cProfile.Profile(); pr.enable(); eng.prefill_ids(ids); torch.cuda.synchronize(); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(40); print(s.getvalue())
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue())

# ---- decode: graph replay alone, attention alone, eager kernel table
eng.generate_ids(doc, q, max_new_tokens=40)
g = eng.decode_graph
print("graph keys", list(g.graphs), "mode", g.mode, "loaded", g.loaded is not None, "m_cap", g.m_cap, "width", g.keys.shape)
saved = g.cursor.clone()
graph, out = g.graphs[(g.mode, g.track)]
def replay():
    for _ in range(50):
        g.cursor.copy_(saved); graph.replay()
replay(); _, tr = timed(replay); print(f"DECODE graph replay: {tr/50*1e3:.2f} ms per step")
a = net.config
H, Hkv, d = a.num_attention_heads, a.num_key_value_heads, a.hidden_size // a.num_attention_heads
qq = torch.randn(H, 1, d, device="cuda", dtype=torch.bfloat16); kk = torch.randn(Hkv, 1, d, device="cuda", dtype=torch.bfloat16)
def attn_all():
    g.cursor.copy_(saved)
    for layer in range(a.num_hidden_layers):
        g.attend(layer, qq, kk, kk, d ** -0.5, None)
attn_all(); torch.cuda.synchronize()
side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    attn_all()
torch.cuda.current_stream().wait_stream(side)
ag = torch.cuda.CUDAGraph()
with torch.cuda.graph(ag):
    attn_all()
def ar():
    for _ in range(50): ag.replay()
ar(); _, ta = timed(ar); print(f"DECODE attention only (32 layers, graph): {ta/50*1e3:.2f} ms per step")
def eager():
    g.cursor.copy_(saved); g._forward()
eager(); torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5): eager()
    torch.cuda.synchronize()
ka = prof.key_averages()
tot = sum(e.self_device_time_total for e in ka)
nk = sum(e.count for e in ka if e.device_type.name == "CUDA")
print(f"STATIC STEP eager: kernels {tot/5e3:.2f} ms per step, {nk/5:.0f} kernels per step")
print(ka.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90))
print("peak GiB", torch.cuda.max_memory_allocated() / 2**30)
