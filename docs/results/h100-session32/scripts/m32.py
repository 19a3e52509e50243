"""Session 32: where answer_many's time goes (8B shape, random weights, 32K, 8 questions of 32 tokens,
65-token answers): each question's read (Engine._start) timed, each batched step (DecodeGraph.step_rows)
timed with its kind (graph replay / scored again statically / eagerly), the reference passes
(forward_rows), then the same for one question alone; one question read under the profiler (host calls,
syncs, kernels)."""
import os, statistics as st, time, torch
from torch.profiler import profile, ProfilerActivity
from actqkv_llm import Engine, engine as engine_mod
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.attention.static_decode import DecodeGraph

DEV = "cuda" if torch.cuda.is_available() else "cpu"
net = build_random_model(os.environ.get("ARCH", "llama-3.1-8b"), DEV, torch.bfloat16 if DEV == "cuda" else torch.float32)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True,
             decode_static_scoring=os.environ.get("STATIC", "auto") != "0")
N = int(os.environ.get("N", "32768"))
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (N,), generator=g))
qs = [torch.randint(0, 100000, (32,), generator=g) for _ in range(8)]
sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)
log = {"start": [], "steps": [], "ref": []}
orig_start, orig_rows, orig_fr = Engine._start, DecodeGraph.step_rows, engine_mod.forward_rows
def start(self, *a, **k):
    sync(); t0 = time.perf_counter(); out = orig_start(self, *a, **k); sync()
    log["start"].append(1000 * (time.perf_counter() - t0)); return out
def rows(self, feed):
    c = (self.rescore_steps, self.static_scored, self.segment_steps)
    sync(); t0 = time.perf_counter(); out = orig_rows(self, feed); sync()
    ms = 1000 * (time.perf_counter() - t0)
    d = (self.rescore_steps - c[0], self.static_scored - c[1], self.segment_steps - c[2])
    log["steps"].append((ms, d, sum(f is not None for f in feed), sum(o is None for o in out)))
    return out
def fr(*a, **k):
    sync(); t0 = time.perf_counter(); out = orig_fr(*a, **k); sync()
    log["ref"].append(1000 * (time.perf_counter() - t0)); return out
Engine._start, DecodeGraph.step_rows, engine_mod.forward_rows = start, rows, fr

def report(title, total):
    s = log["steps"]
    kinds = {}
    for ms, (resc, stat, seg), n, none in s:
        k = "graph" if not resc else (f"scored again: {resc} rows, {stat} statically" )
        kinds.setdefault(k, []).append(ms)
    print(f"## {title}: total {total:.0f} ms; question reads {len(log['start'])} x, sum {sum(log['start']):.0f} ms "
          f"({', '.join(f'{x:.0f}' for x in log['start'])}); steps {len(s)}, sum {sum(x[0] for x in s):.0f} ms; "
          f"reference passes {len(log['ref'])}, sum {sum(log['ref']):.0f} ms", flush=True)
    for k, v in kinds.items():
        print(f"   {k}: {len(v)} x median {st.median(v):.1f} ms, sum {sum(v):.0f} ms (min {min(v):.1f}, max {max(v):.1f})", flush=True)
    for key in log: log[key] = []

CASES = (("equal", [32] * 8), ("unequal", [20, 24, 28, 32, 36, 40, 44, 48]))
for name, lens in CASES[int(os.environ.get("FIRST_CASE", "0")):]:
    qs = [torch.randint(0, 100000, (n,), generator=g) for n in lens]
    for rep in range(2):
        sync(); t0 = time.perf_counter()
        out = eng.generate_ids_many(doc, [q.tolist() for q in qs], max_new_tokens=65)
        sync(); report(f"{name} lengths: answer_many 8, pass {rep}", 1000 * (time.perf_counter() - t0))
    sync(); t0 = time.perf_counter()
    one = [eng.generate_ids(doc, q.tolist(), max_new_tokens=65) for q in qs]
    sync(); report(f"{name} lengths: one by one 8", 1000 * (time.perf_counter() - t0))
    print("same tokens:", one == out, flush=True)
Engine._start = orig_start
if os.environ.get("NO_PROFILE"):
    raise SystemExit
sess = eng._session_for(doc)
with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])) as prof:
    sync(); t0 = time.perf_counter()
    sess.forward(qs[0], phase="question"); sync()
print(f"== one question read under the profiler: {1000 * (time.perf_counter() - t0):.0f} ms", flush=True)
ka = prof.key_averages()
aten = [e for e in ka if e.key.startswith("aten::")]
print(f"  aten ops: {sum(e.count for e in aten)} calls; top by count:")
for e in sorted(aten, key=lambda e: -e.count)[:25]:
    print(f"    {e.key:40s} {e.count:6d} calls, self CPU {e.self_cpu_time_total / 1000:7.2f} ms")
waits = {e.key: (e.count, round(e.cpu_time_total / 1000, 2)) for e in ka
         if any(w in e.key for w in ("local_scalar", "aten::item", "Synchronize", "nonzero", "cudaMemcpy", "cudaStreamSync"))}
print(f"  host waits and copies (calls, CPU ms): {waits}")
ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
print(f"  GPU kernels {len(ev)}, kernel time {sum(e.device_time for e in ev) / 1000:.1f} ms")
byname = {}
for e in ev:
    c, t = byname.get(e.name, (0, 0.0)); byname[e.name] = (c + 1, t + e.device_time)
for name, (c, t) in sorted(byname.items(), key=lambda x: -x[1][1])[:15]:
    print(f"  {t / 1000:8.3f} ms  {c:5d} x  {name[:100]}")
