"""Session 7: the static step with 1 and 8 rows (8B shape, 32K): per-step medians, and how many row
steps ran on the graph vs the reference, one process."""
import statistics as st, sys, time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (n,), generator=g))
qs = [torch.randint(0, 100000, (24,), generator=g) for _ in range(8)]
graph = eng.decode_graph
for rows in (1, 8, 1, 8):
    sess = [eng._session_for(doc) for _ in range(rows)]
    logits = [s.forward(q, phase="question") for s, q in zip(sess, qs)]
    times, ref = [], []
    for step in range(64):
        toks = [int(x.argmax()) for x in logits]
        torch.cuda.synchronize(); t0 = time.perf_counter()
        out = graph.step_rows(list(zip(sess, toks)))
        torch.cuda.synchronize(); t1 = time.perf_counter()
        rest = [i for i, o in enumerate(out) if o is None]
        if rest:
            from actqkv_llm.session import forward_rows
            r = forward_rows([sess[i] for i in rest], torch.tensor([toks[i] for i in rest]), "decode")
            for j, i in enumerate(rest): out[i] = r[j]
            torch.cuda.synchronize(); ref.append(1000 * (time.perf_counter() - t1))
        else:
            times.append(1000 * (t1 - t0))
        logits = out
    print(f"rows {rows}: graph steps {len(times)} median {st.median(times):.2f} ms ({st.median(times) / rows:.2f} ms per row-token); "
          f"reference passes {len(ref)}: {', '.join(f'{x:.0f}' for x in ref)} ms; "
          f"mean per row-token {(sum(times) + sum(ref)) / 64 / rows:.2f} ms", flush=True)
    del sess, logits
print("device memory peak GiB", torch.cuda.max_memory_allocated() / 2**30)
