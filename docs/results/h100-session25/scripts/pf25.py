"""Session 24, call A: (0) the probe bias kernels against PyTorch ops in one process; (1) where a 128K prefill's device and host time goes at the tree's default
(first chunk batched whole), stages labelled, after a 32K warm-up; (2) what is live on the device at
the peak of answering one question about a 128K document with offload=true (memory history replayed
to the peak, allocations grouped by the first frame in actqkv_llm).
usage: PYTHONPATH=$PWD python .gpu/pf24.py   (DRY=1: CPU check, tiny shape, lengths / 16)"""
import collections, functools, os, time, torch
from torch.profiler import ProfilerActivity, profile, record_function
import actqkv_llm.retrieval.bound_mass as bm
import actqkv_llm.attention.chunk as ch
import actqkv_llm.attention.step as st
import actqkv_llm.attention.block_gather as bg
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.memory.layer_memory import LayerMemory
from actqkv_llm.retrieval.methods import BlockRetrieval, TokenProbe
from actqkv_llm.retrieval.budget import DynamicCutoff

DRY = os.environ.get("DRY") == "1"
PARTS = os.environ.get("PARTS", "0,1,2").split(",")
PROFILE = [int(n) for n in os.environ.get("PROFILE", "32768,131072").split(",")]
DEV = torch.device("cpu" if DRY else "cuda")
sync = (lambda: None) if DRY else torch.cuda.synchronize
L = (lambda n: n // 16) if DRY else (lambda n: n)
net = build_random_model("smollm2-135m" if DRY else "llama-3.1-8b", DEV, torch.float32 if DRY else torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
if DRY:
    eng = eng.with_method("actqkv", batch_prefill=True, prefill_kernel="torch")
gen = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(0, 40000 if DRY else 115000, (n,), generator=gen)

def prefill(e, n):
    x = ids(n); sync(); t = time.perf_counter(); doc = e.prefill_ids(x); sync(); return doc, time.perf_counter() - t

for n in ((2048, 32768) if os.environ.get("SHORT") else (2048, 32768, 32768)):
    doc, s = prefill(eng, L(n)); del doc
    print(f"warm-up {n}: {s:.2f} s", flush=True)

print("== 0. the probe's bias and the aligned causal mask, each against the tree before, alternated (one process, warmed)", flush=True)
bias = eng.method.probe.bias
flash_real = ch._flash_takes
flash_seen = []
def flash_on(*a):
    r = flash_real(*a); flash_seen.append(r); return r
settings = (("before: bias torch, mask built", "torch", lambda *a: False),
            ("bias kernels, mask built", "auto", lambda *a: False),
            ("bias kernels, aligned mask (flash)", "auto", flash_on))
for n, reps in (((32768, int(os.environ.get("REPS32", "2"))), (131072, 1)) if "0" in PARTS else ()):
    for rep in range(reps):
        for name, choice, flash in settings:
            bias.choice, ch._flash_takes = choice, flash
            flash_seen.clear()
            doc, s = prefill(eng, L(n)); del doc
            print(f"{n} tokens, {name}: {s:.3f} s (bias verdicts {list(bias._verdicts.values())}; flash taken {sum(flash_seen)} of {len(flash_seen)})", flush=True)
bias.choice, ch._flash_takes = "auto", flash_real

def label(owner, name, tag):
    f = getattr(owner, name)
    @functools.wraps(f)
    def w(*a, **k):
        with record_function(tag):
            return f(*a, **k)
    setattr(owner, name, w)
import transformers.models.llama.modeling_llama as ml
for owner, name, tag in ((ml.LlamaMLP, "forward", "L.mlp"), (ml.LlamaAttention, "forward", "L.attn_module"),
                         (st.StepContext, "attend_layer", "A.layer"), (st, "attend_chunk", "A.chunk"),
                         (st.StepContext, "_exec_block", "A.exec_block_loop"), (ch, "_attend_fused", "A.sdpa"),
                         (ch, "_pick", "S.pick"), (ch, "normalized_entropy", "S.entropy"),
                         (BlockRetrieval, "chunk_evidence", "S.evidence"), (TokenProbe, "chunk_weights", "S.probe"),
                         (DynamicCutoff, "blocks_for", "S.budget"), (st.StepContext, "memory_query", "S.mq"),
                         (LayerMemory, "store_blocks", "M.store"), (LayerMemory, "settle_chunk", "M.settle"),
                         (bm, "bound_mass_triton", "S.triton_passes"), (bg.BlockGather, "__call__", "M.block_gather")):
    if hasattr(owner, name):
        label(owner, name, tag)
    else:
        print("no", owner, name)

for n in (PROFILE if "1" in PARTS else ()):
    x = ids(L(n)); sync()
    with profile(activities=[ProfilerActivity.CPU] + ([] if DRY else [ProfilerActivity.CUDA])) as prof:
        t = time.perf_counter(); doc = eng.prefill_ids(x); sync(); wall = time.perf_counter() - t
    del doc
    ka = prof.key_averages()
    print(f"== profiled {n}: wall {wall:.2f} s", flush=True)
    rows = [e for e in ka if e.key.split(".")[0] in ("L", "A", "S", "R", "M")]
    print(f"{'stage':22s} {'calls':>6s} {'host total s':>12s} {'device total s':>14s}")
    for e in sorted(rows, key=lambda e: e.key):
        print(f"{e.key:22s} {e.count:6d} {e.cpu_time_total/1e6:12.3f} {e.device_time_total/1e6:14.3f}")
    kern = [e for e in ka if e.self_device_time_total > 0 and e.key.split(".")[0] not in ("L", "A", "S", "R", "M")]
    print(f"kernels and copies: {sum(e.count for e in kern)} launches, {sum(e.self_device_time_total for e in kern)/1e6:.3f} s of device time")
    for e in sorted(kern, key=lambda e: -e.self_device_time_total)[:25]:
        print(f"  {e.self_device_time_total/1e6:7.3f} s {e.count:7d}x  {e.key[:110]}")
    print(ka.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60), flush=True)
    del prof, ka

if "2" not in PARTS:
    raise SystemExit(0)
print("== 2. answering at 128K with offload=true: the live set at the peak", flush=True)
off = eng.with_method("actqkv", offload=True, device_cache_blocks=int(os.environ.get("CACHE", "512")))
if not DRY:  # record from before the prefill, so every block live at the peak carries its frames
    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
doc, s = prefill(off, L(131072))
print(f"prefill 128K offload: {s:.2f} s", flush=True)
q = ids(32)
off.generate_ids(doc, q, max_new_tokens=65)  # warm: graph capture, compile
sync()
if DRY:
    raise SystemExit(0)
torch.cuda.reset_peak_memory_stats()
base = torch.cuda.memory_allocated()
t0 = time.perf_counter(); off.generate_ids(doc, q, max_new_tokens=65)
sync(); print(f"answer of 65 tokens: {time.perf_counter() - t0:.2f} s", flush=True)
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._record_memory_history(enabled=None)
weights = sum(p.numel() * p.element_size() for p in net.parameters())
G = 2 ** 30
print(f"weights {weights/G:.2f} GiB; allocated before answering {base/G:.2f} GiB (weights + {(base-weights)/G:.2f}); "
      f"peak {torch.cuda.max_memory_allocated()/G:.2f} GiB (weights + {(torch.cuda.max_memory_allocated()-weights)/G:.2f})", flush=True)

def where(frames):
    for f in frames:
        fn = f.get("filename", "")
        if "actqkv_llm" in fn:
            return f"{fn.split('actqkv_llm/')[-1]}:{f.get('line')} {f.get('name')}"
    f = frames[0] if frames else {}
    return f"{f.get('filename','?').split('/')[-1]}:{f.get('line')} {f.get('name')}"

# live blocks at the start of recording: the segments' active blocks not allocated during it
live = {}
for seg in snap["segments"]:
    addr = seg["address"]
    for b in seg["blocks"]:
        if b["state"] == "active_allocated":
            live[addr] = (b["size"], where(b.get("frames", [])))
        addr += b["size"]
trace = snap["device_traces"][0] if snap["device_traces"] else []
# undo the trace to get the live set at the start, then replay to the peak
for ev in reversed(trace):
    if ev["action"] == "alloc":
        live.pop(ev["addr"], None)
    elif ev["action"] == "free_completed":
        live[ev["addr"]] = (ev["size"], where(ev.get("frames", [])))
start = dict(live)
cur = sum(s for s, _ in live.values()); peak, peak_set = cur, dict(live)
for ev in trace:
    if ev["action"] == "alloc":
        live[ev["addr"]] = (ev["size"], where(ev.get("frames", []))); cur += ev["size"]
        if cur > peak:
            peak, peak_set = cur, dict(live)
    elif ev["action"] == "free_completed":
        if ev["addr"] in live:
            cur -= live.pop(ev["addr"])[0]
print(f"replayed: at start {sum(s for s,_ in start.values())/G:.2f} GiB, peak {peak/G:.2f} GiB, {len(trace)} events")
for title, d in (("live at the peak", peak_set), ("allocated during answering, live at the peak", {a: v for a, v in peak_set.items() if a not in start})):
    by = collections.Counter()
    for s, w in d.values():
        by[w] += s
    print(f"-- {title}: {sum(by.values())/G:.3f} GiB")
    for w, s in by.most_common(18):
        print(f"  {s/G:8.3f} GiB  {w}")
