"""Session 32: what a slow step of answer_many is made of (8B shape, random weights, 32K, 8 questions of 32 tokens):
the decode graph's parts timed with a device sync around each (step_rows, _graph, _evict, _load, _static_setup,
_replay_segments, _capture_scoring, _hold_scored, _release_row, DocumentScoring.make, RowOwnBlocks.sync), printed
for every step over 40 ms; three batches, then two answers one by one."""
import os, time, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.attention.static_decode import DecodeGraph
from actqkv_llm.attention import static_scoring as ss

net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
qs = [torch.randint(0, 100000, (32,), generator=g).tolist() for _ in range(8)]
sync = torch.cuda.synchronize
parts = []
def timed(cls, name):
    fn = getattr(cls, name)
    def wrap(*a, **k):
        sync(); t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sync(); parts.append((name, 1000 * (time.perf_counter() - t0)))
    setattr(cls, name, wrap)
for n in ("_graph", "_evict", "_load", "_static_setup", "_replay_segments", "_capture_scoring", "_hold_scored",
          "_release_row", "_grow", "_warm_up"):
    timed(DecodeGraph, n)
timed(ss.RowOwnBlocks, "sync"); timed(ss.DocumentScoring, "make")
orig = DecodeGraph.step_rows
state = {"step": 0}
def rows(self, feed):
    parts.clear()
    c = (self.rescore_steps, self.static_scored, self.scoring_replays)
    sync(); t0 = time.perf_counter(); out = orig(self, feed); sync()
    ms = 1000 * (time.perf_counter() - t0)
    if ms > 40:
        agg = {}
        for n, t in parts:
            k = agg.get(n, (0, 0.0)); agg[n] = (k[0] + 1, k[1] + t)
        print(f"  step {state['step']} ({len(feed)} rows, {sum(f is not None for f in feed)} fed): {ms:.1f} ms; scored again "
              f"{self.rescore_steps - c[0]}, statically {self.static_scored - c[1]}, scorings replayed {self.scoring_replays - c[2]}; "
              + ", ".join(f"{n} {cnt}x {t:.1f}" for n, (cnt, t) in agg.items()), flush=True)
    state["step"] += 1
    return out
DecodeGraph.step_rows = rows
PHASES = (("A: scorings of up to 8 rows captured (the tree before)", 8), ("B: one row's only (this tree)", 1))
if os.environ.get("FINAL"):   # the final tree: no capture_scoring_rows (reverted), one phase
    PHASES = (("final tree", None),)
for phase, rows_cap in PHASES:
    if rows_cap is not None:
        eng.decode_graph.capture_scoring_rows = rows_cap
    doc = eng.prefill_ids(torch.randint(0, 100000, (32768,), generator=g))
    print(f"### phase {phase}", flush=True)
    for rep in range(2):
        state["step"] = 0
        sync(); t0 = time.perf_counter()
        eng.generate_ids_many(doc, qs, max_new_tokens=65)
        sync(); print(f"## batch {rep}: {1000 * (time.perf_counter() - t0):.0f} ms, graphs {sorted(eng.decode_graph.graphs)}, "
                      f"scoring keys {[sorted(sc.graphs) for sc in eng.decode_graph.scorings.values()]}", flush=True)
for rep in range(2):
    state["step"] = 0
    sync(); t0 = time.perf_counter()
    eng.generate_ids(doc, qs[rep], max_new_tokens=65)
    sync(); print(f"## one answer {rep}: {1000 * (time.perf_counter() - t0):.0f} ms", flush=True)
