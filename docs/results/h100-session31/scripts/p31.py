"""Session 31 (p28.py with the static scoring's labels): where a decode step's time goes (8B shape, random weights): per-step times by kind
(graph replay / a step that scores again), kernels of graph replays and of one eager static step
by name (torch.profiler), and a step that scores again with its Python parts labelled (CPU time and
calls by label and by aten op). ARCH, LENGTHS (comma list) from the environment."""
import os, statistics as st, sys, time, torch
from torch.profiler import profile, ProfilerActivity, record_function
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.attention import static_decode as sd
from actqkv_llm.retrieval import methods as rm

cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"
arch = os.environ.get("ARCH", "llama-3.1-8b")
lengths = [int(x) for x in os.environ.get("LENGTHS", "32768").split(",")]
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
net = build_random_model(arch, dev, torch.bfloat16 if cuda else torch.float32)
VOCAB = min(100000, net.config.vocab_size)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=True)


def sync():
    if cuda:
        torch.cuda.synchronize()


def labelled(obj, name, label):
    fn = getattr(obj, name)

    def wrap(*a, **k):
        with record_function(label):
            return fn(*a, **k)
    setattr(obj, name, wrap)


def kernel_table(prof, title, n=25):
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"== {title}: {len(ev)} GPU kernels, kernel time {sum(e.device_time for e in ev) / 1000:.2f} ms", flush=True)
    byname = {}
    for e in ev:
        c, t = byname.get(e.name, (0, 0.0))
        byname[e.name] = (c + 1, t + e.device_time)
    for name, (c, t) in sorted(byname.items(), key=lambda x: -x[1][1])[:n]:
        print(f"  {t / 1000:8.3f} ms  {c:5d} x  {name[:110]}")


for n in lengths:
    g = torch.Generator().manual_seed(0)
    doc = eng.prefill_ids(torch.randint(0, VOCAB, (n,), generator=g))
    sess = eng._session_for(doc)
    graph = eng.decode_graph
    logits = sess.forward(torch.randint(0, VOCAB, (32,), generator=g), phase="question")
    kinds = {"graph": [], "rescore": []}
    for step in range(80):
        tok = int(logits.argmax())
        before = graph.rescore_steps
        sync(); t0 = time.perf_counter()
        out = graph.step_rows([(sess, tok)])[0]
        sync(); ms = 1000 * (time.perf_counter() - t0)
        assert out is not None, "reference step"
        if step >= 3:
            kinds["rescore" if graph.rescore_steps > before else "graph"].append(ms)
        logits = out
    print(f"### {arch} {n} tokens: " + "; ".join(f"{k} {len(v)} x median {st.median(v):.2f} ms (min {min(v):.2f}, max {max(v):.2f})"
                                                  for k, v in kinds.items() if v), flush=True)
    # graph replays under the profiler (kernels inside a graph are traced as kernels where CUPTI can)
    with profile(activities=acts) as prof:
        for _ in range(3):
            tok = int(logits.argmax())
            before = graph.rescore_steps
            logits = graph.step_rows([(sess, tok)])[0]
            assert graph.rescore_steps == before
        sync()
    kernel_table(prof, f"{n}: 3 graph-replay steps")
    if os.environ.get("ONLY_GRAPH"):
        continue
    # one step that scores again, its parts labelled
    from actqkv_llm.attention import static_scoring as ss
    for obj, name, label in [(graph, "_rescore", "L:_rescore"), (graph, "_evict", "L:_evict"),
                             (graph, "_replay_segments", "L:_replay_segments"), (graph, "_static_setup", "L:_static_setup"),
                             (graph, "_hold_scored", "L:_hold_scored"), (graph, "plan", "L:plan"),
                             (graph, "_bound_left_blocks", "L:_bound_left_blocks"), (graph, "_shift_window", "L:_shift_window"),
                             (graph.own, "append", "L:own.append"), (graph.own, "sync", "L:own.sync"),
                             (ss.DocumentScoring, "key_for", "L:key_for"), (sd.StepContext, "memory_query", "L:memory_query"),
                             (sess.method, "hold_scored", "L:hold_scored"), (rm.HeldCandidates, "__init__", "L:HeldCandidates"),
                             (type(sess.retrieval[0]), "take_candidates", "L:take_candidates"),
                             (type(sess.retrieval[0]), "observe_entropy", "L:observe_entropy")]:
        labelled(obj, name, label)
    for step in range(40):
        tok = int(logits.argmax())
        p = graph.plan(sess)
        if p is not None and p[2]:
            with profile(activities=acts) as prof:
                sync(); t0 = time.perf_counter()
                logits = graph.step_rows([(sess, tok)])[0]
                sync(); ms = 1000 * (time.perf_counter() - t0)
            print(f"== {n}: a step that scores again ({len(p[2])} layers, evict {p[3]}): {ms:.1f} ms wall under the profiler", flush=True)
            ka = prof.key_averages()
            rows = sorted(ka, key=lambda e: -e.cpu_time_total)
            print("  labels (CPU total ms, calls):")
            for e in rows:
                if e.key.startswith("L:"):
                    print(f"    {e.key:28s} {e.cpu_time_total / 1000:8.2f} ms {e.count:6d}")
            aten = [e for e in ka if e.key.startswith("aten::")]
            print(f"  aten ops: {sum(e.count for e in aten)} calls; top by self CPU:")
            for e in sorted(aten, key=lambda e: -e.self_cpu_time_total)[:30]:
                print(f"    {e.key:40s} self {e.self_cpu_time_total / 1000:7.2f} ms {e.count:6d} calls")
            waits = {}
            for e in ka:
                if any(w in e.key for w in ("local_scalar", "aten::item", "Synchronize", "nonzero", "cudaMemcpy")):
                    waits[e.key] = (e.count, round(e.cpu_time_total / 1000, 2))
            print(f"  host waits and copies (calls, CPU ms): {waits}")
            if cuda:
                kernel_table(prof, f"{n}: the step that scores again", 20)
            break
        logits = graph.step_rows([(sess, tok)])[0]
    continue
    # one eager static step (the graph's kernels one by one)
    graph.release()
    with torch.inference_mode():
        graph.cursor.zero_()
        for _ in range(2):
            graph._forward(1)
        sync()
        with profile(activities=acts) as prof:
            graph._forward(1); sync()
    if cuda:
        kernel_table(prof, f"{n}: one static step run eagerly", 30)
    del sess, doc, logits
    if cuda:
        torch.cuda.empty_cache()
