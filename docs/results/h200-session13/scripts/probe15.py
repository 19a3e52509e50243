"""Session 13: the static decode step with the default decode_compile ("auto" on CUDA), 8B shape,
random weights, 32K: per-step times by path (graph replayed / a block left the window and every
layer scored again: eager before, segments + eager scoring after), rows 1 and 8, 96 steps, twice.
Run once with the tree of 8404627 on PYTHONPATH (before) and once with this tree; writes row 0's
greedy tokens to argv[2] (compared across the two trees)."""
import statistics as st, sys, time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.session import forward_rows
n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
engines = {c: Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_compile=c)
           for c in ("auto",)}
g = torch.Generator().manual_seed(0)
doc = engines["auto"].prefill_ids(torch.randint(0, 100000, (n,), generator=g))
qs = [torch.randint(0, 100000, (32,), generator=g) for _ in range(8)]
tokens = {}
for rep in range(2):
    for c, eng in engines.items():
        graph = eng.decode_graph
        for rows in (1, 8):
            sess = [eng._session_for(doc) for _ in range(rows)]
            logits = [s.forward(q, phase="question") for s, q in zip(sess, qs)]
            kinds = {"graph": [], "eager": [], "segments": [], "reference": []}
            trace, first, toks0 = [], None, []
            for step in range(96):
                toks = [int(x.argmax()) for x in logits]
                toks0.append(toks[0])
                before, seg0 = graph.rescores, getattr(graph, "segment_steps", 0)
                torch.cuda.synchronize(); t0 = time.perf_counter()
                fresh = (rows, graph.track) not in graph.graphs
                out = graph.step_rows(list(zip(sess, toks)))
                rest = [i for i, o in enumerate(out) if o is None]
                if rest:
                    r = forward_rows([sess[i] for i in rest], torch.tensor([toks[i] for i in rest]), "decode")
                    for j, i in enumerate(rest): out[i] = r[j]
                torch.cuda.synchronize(); ms = 1000 * (time.perf_counter() - t0)
                if fresh:
                    first = ms
                    continue
                kind = "reference" if rest else ("eager" if graph.rescores > before else "graph")
                if kind == "eager" and getattr(graph, "segment_steps", 0) > seg0:
                    kind = "segments"
                kinds[kind].append(ms)
                trace.append(f"{step}:{kind[0]}{ms:.0f}" if kind != "graph" else None)
                logits = out
            tokens[(rep, c, rows)] = toks0
            med = {k: (f"{len(v)} x median {st.median(v):.2f} ms (min {min(v):.2f})" if v else "0") for k, v in kinds.items()}
            total = sum(sum(v) for v in kinds.values()); steps = sum(len(v) for v in kinds.values())
            print(f"rep {rep} compile={c} rows {rows}: first step (capture{' + compile' if c else ''}) "
                  f"{first if first is None else round(first)} ms; {med}; mean per row-token {total / steps / rows:.2f} ms; "
                  f"off the graph: {' '.join(t for t in trace if t)}; compile_layers now {graph.compile_layers}", flush=True)
            del sess, logits
for rows in (1, 8):
    print(f"rows {rows}, row 0's greedy tokens rep0 vs rep1 same: {tokens[(0, 'auto', rows)] == tokens[(1, 'auto', rows)]}")
print("device memory peak GiB", torch.cuda.max_memory_allocated() / 2**30)
import json
json.dump({f"{k[0]}-{k[2]}": v for k, v in tokens.items()}, open(sys.argv[2], "w"))
