"""Session 6: graph-step medians with the Triton tile kernel vs PyTorch ops (8B shape), one process."""
import statistics as st, sys, time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (n,), generator=g))
q = torch.randint(0, 100000, (24,), generator=g)
def per_step(e, label, steps=97):
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
    print(f"{label}: kernel {getattr(e.decode_graph, 'kernel', None)} steps {len(times)}: graph {len(g_)} (median {st.median(g_) if g_ else 0:.2f} ms), "
          f"reference {len(r_)} (median {st.median(r_) if r_ else 0:.2f} ms); mean {st.mean(times):.2f} ms/token", flush=True)
    return toks
eng.generate_ids(doc, q, max_new_tokens=40)
tor = eng.with_method("actqkv", decode_kernel="torch"); tor.generate_ids(doc, q, max_new_tokens=40)
a = per_step(eng, "auto"); b = per_step(tor, "torch")
print("same tokens:", sum(x == y for x, y in zip(a, b)), "of", len(a))
from torch.profiler import profile, ProfilerActivity
a = net.config
H, Hkv, d = a.num_attention_heads, a.num_key_value_heads, a.hidden_size // a.num_attention_heads
for e, label in ((tor, "torch"), (eng, "auto")):
    gr = e.decode_graph
    with torch.inference_mode():
        saved = gr.cursor.clone()
        qq = torch.randn(H, 1, d, device="cuda", dtype=torch.bfloat16); kk = torch.randn(Hkv, 1, d, device="cuda", dtype=torch.bfloat16)
        def attn_all():
            gr.cursor.copy_(saved)
            for layer in range(a.num_hidden_layers):
                gr.attend(layer, qq, kk, kk, d ** -0.5, None)
        attn_all(); torch.cuda.synchronize()
        side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            attn_all()
        torch.cuda.current_stream().wait_stream(side)
        ag = torch.cuda.CUDAGraph()
        with torch.cuda.graph(ag):
            attn_all()
        for _ in range(5): ag.replay()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(50): ag.replay()
        torch.cuda.synchronize(); print(f"{label}: attention only, 32 layers as a graph: {(time.perf_counter() - t) / 50 * 1e3:.2f} ms per step", flush=True)
        if label == "torch":
            continue
        def eager():
            gr.cursor.copy_(saved); gr._forward()
        eager(); torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5): eager()
            torch.cuda.synchronize()
        ka = prof.key_averages()
        tot = sum(x.self_device_time_total for x in ka if x.device_type.name == "CUDA")
        nk = sum(x.count for x in ka if x.device_type.name == "CUDA")
        print(f"{label}: STATIC STEP eager: kernels {tot / 5e3:.2f} ms per step, {nk / 5:.0f} kernels per step", flush=True)
        print(ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=80), flush=True)
