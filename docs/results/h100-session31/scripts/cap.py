"""Session 31: what a document's first step that scores again costs with the static scoring (it scores
eagerly, then captures every layer's scoring) against the later ones (replayed), 8B shape, 32K, two
documents in one process (the second pays its own capture)."""
import time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model

net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
for d in range(2):
    g = torch.Generator().manual_seed(d)
    doc = eng.prefill_ids(torch.randint(0, 100000, (32768,), generator=g))
    sess = eng._session_for(doc)
    logits = sess.forward(torch.randint(0, 100000, (32,), generator=g), phase="question")
    graph = eng.decode_graph
    for step in range(100):
        before = (graph.rescore_steps, graph.static_scored, graph.scoring_replays, graph.replays)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        logits = eng._decode_step(sess, int(logits.argmax()))
        torch.cuda.synchronize(); ms = 1000 * (time.perf_counter() - t0)
        after = (graph.rescore_steps, graph.static_scored, graph.scoring_replays, graph.replays)
        if after[0] > before[0] or step < 2:
            print(f"document {d} step {step}: {ms:.1f} ms; scored again {after[0] - before[0]}, statically "
                  f"{after[1] - before[1]}, scorings replayed {after[2] - before[2]}, static step {after[3] - before[3]}", flush=True)
    print(f"document {d}: documents with captured scorings {len(graph.scorings)}", flush=True)
    del sess, doc
