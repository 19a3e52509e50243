"""Session 10: where a decode step's time goes (8B shape, random weights, 32K): each step timed and
classed: the graph replayed, the static step run eagerly because a layer scored every block again
(``rescores`` grew), or the reference step (the static step returned None). Rows 1 and 8, 96 steps."""
import statistics as st, sys, time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.session import forward_rows
n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (n,), generator=g))
qs = [torch.randint(0, 100000, (32,), generator=g) for _ in range(8)]
graph = eng.decode_graph
for rows in (1, 8, 1, 8):
    sess = [eng._session_for(doc) for _ in range(rows)]
    logits = [s.forward(q, phase="question") for s, q in zip(sess, qs)]
    kinds = {"graph": [], "eager": [], "reference": []}
    trace = []
    for step in range(96):
        toks = [int(x.argmax()) for x in logits]
        before = getattr(graph, "rescores", 0)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        out = graph.step_rows(list(zip(sess, toks)))
        rest = [i for i, o in enumerate(out) if o is None]
        if rest:
            r = forward_rows([sess[i] for i in rest], torch.tensor([toks[i] for i in rest]), "decode")
            for j, i in enumerate(rest): out[i] = r[j]
        torch.cuda.synchronize(); ms = 1000 * (time.perf_counter() - t0)
        kind = "reference" if rest else ("eager" if getattr(graph, "rescores", 0) > before else "graph")
        kinds[kind].append(ms)
        trace.append(f"{step}:{kind[0]}{ms:.0f}" if kind != "graph" else None)
        logits = out
    med = {k: (f"{len(v)} x median {st.median(v):.1f} ms" if v else "0") for k, v in kinds.items()}
    total = sum(sum(v) for v in kinds.values())
    print(f"rows {rows}: {med}; mean per row-token {total / 96 / rows:.2f} ms; steps off the graph: "
          f"{' '.join(t for t in trace if t)}", flush=True)
    del sess, logits
print("device memory peak GiB", torch.cuda.max_memory_allocated() / 2**30)
