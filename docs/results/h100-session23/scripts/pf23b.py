"""Session 23 (b: after the block gather kernel, prefill_chunk auto): where the 8B shape's prefill time goes (random weights, bf16, one H100 or H200).

1. bench's order (a 2K warm-up prefill + 3 tokens), then 32K twice, every call of the Triton passes
   timed with a synchronize on each side (next-gap.py of session 22: places the bench runs' 32K gap);
2. HF SDPA's 32K prefill twice in the same process (bench's call: one forward, logits_to_keep=1);
3. a third 32K prefill under torch.profiler with the engine's stages labelled (record_function):
   device and host time per stage, the top kernels;
4. prefill_chunk 4096 / 8192 / 16384 at 32K and 4096 / 16384 at 128K.
usage (GPU machine, repository root): PYTHONPATH=$PWD python pf23.py"""
import functools, time, torch
from torch.profiler import ProfilerActivity, profile, record_function
import actqkv_llm.retrieval.bound_mass as bm
import actqkv_llm.attention.chunk as ch
import actqkv_llm.attention.step as st
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.bench.hf import plain_attention, cache_argument
from actqkv_llm.memory.blocks import GrowableBlocks
from actqkv_llm.memory.layer_memory import LayerMemory
from actqkv_llm.retrieval.methods import BlockRetrieval, TokenProbe
from actqkv_llm.retrieval.budget import DynamicCutoff
import actqkv_llm.attention.block_gather as bg

import os
DRY = os.environ.get("DRY") == "1"  # a CPU check of the script itself: tiny shape, lengths / 16
DEV = torch.device("cpu" if DRY else "cuda")
sync = (lambda: None) if DRY else torch.cuda.synchronize
L = (lambda n: n // 16) if DRY else (lambda n: n)
calls = []
inner = bm.bound_mass_triton
def timed(*a, **k):
    sync(); t = time.perf_counter(); out = inner(*a, **k); sync()
    calls.append(time.perf_counter() - t); return out

net = build_random_model("smollm2-135m" if DRY else "llama-3.1-8b", DEV, torch.float32 if DRY else torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
if DRY:
    eng = eng.with_method("actqkv", batch_prefill=True, prefill_kernel="torch")
gen = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(0, 40000 if DRY else 115000, (n,), generator=gen)

def prefill(e, n):
    x = ids(n); sync(); t = time.perf_counter(); doc = e.prefill_ids(x); sync(); s = time.perf_counter() - t
    del doc; return s

print("== 1. bench order, the passes timed", flush=True)
bm.bound_mass_triton = timed
t = time.perf_counter(); doc = eng.prefill_ids(ids(L(2048))); eng.generate_ids(doc, ids(32), max_new_tokens=3); sync(); del doc
print(f"warm-up 2K + 3 tokens: {time.perf_counter() - t:.2f} s; {len(calls)} calls of the passes, {sum(calls):.3f} s", flush=True)
for run in (1, 2):
    calls.clear(); total = prefill(eng, L(32768))
    c = sorted(calls) or [0.0]
    print(f"32K run {run}: {total:.2f} s; passes {len(c)} calls {sum(c):.3f} s (median {c[len(c)//2]*1e3:.2f} ms, "
          f"slowest {[round(s * 1e3, 1) for s in c[-5:]]} ms)", flush=True)
bm.bound_mass_triton = inner

print("== 3. profile of a third 32K prefill", flush=True)
def label(owner, name, tag):
    f = getattr(owner, name)
    @functools.wraps(f)
    def w(*a, **k):
        with record_function(tag):
            return f(*a, **k)
    setattr(owner, name, w)
import transformers.models.llama.modeling_llama as ml
for owner, name, tag in ((ml.LlamaDecoderLayer, "forward", "L.layer"), (ml.LlamaMLP, "forward", "L.mlp"),
                         (ml.LlamaAttention, "forward", "L.attn_module"), (st.StepContext, "attend_layer", "A.layer"),
                         (st, "attend_chunk", "A.chunk"), (st.StepContext, "_exec_block", "A.exec_block_loop"),
                         (ch, "_attend_fused", "A.sdpa"), (ch, "_attend", "A.hand_softmax"), (ch, "_pick", "S.pick"),
                         (ch, "normalized_entropy", "S.entropy"), (ch, "rotate", "R.rotate"),
                         (ch, "sinks_at_true_positions", "R.sinks"), (st, "blocks_at_true_positions", "R.blocks"),
                         (BlockRetrieval, "chunk_evidence", "S.evidence"), (TokenProbe, "chunk_weights", "S.probe"),
                         (DynamicCutoff, "blocks_for", "S.budget"), (st.StepContext, "memory_query", "S.mq"),
                         (LayerMemory, "store_blocks", "M.store"), (LayerMemory, "settle_chunk", "M.settle"),
                         (GrowableBlocks, "gather", "M.gather"), (bm, "bound_mass_triton", "S.triton_passes"), (bg, "gather_triton", "M.gather_triton"),
                         (bg, "gather_reference", "M.gather_reference"), (bg.BlockGather, "__call__", "M.block_gather")):
    label(owner, name, tag)
x = ids(L(32768)); sync()
with profile(activities=[ProfilerActivity.CPU] + ([] if DRY else [ProfilerActivity.CUDA])) as prof:
    t = time.perf_counter(); doc = eng.prefill_ids(x); sync(); wall = time.perf_counter() - t
del doc
ka = prof.key_averages()
print(f"profiled 32K: wall {wall:.2f} s", flush=True)
rows = [e for e in ka if e.key.split(".")[0] in ("L", "A", "S", "R", "M")]
print(f"{'stage':22s} {'calls':>6s} {'host total s':>12s} {'device total s':>14s}")
for e in sorted(rows, key=lambda e: e.key):
    print(f"{e.key:22s} {e.count:6d} {e.cpu_time_total/1e6:12.3f} {e.device_time_total/1e6:14.3f}")
kern = [e for e in ka if e.self_device_time_total > 0 and e.key.split(".")[0] not in ("L", "A", "S", "R", "M")]
tot = sum(e.self_device_time_total for e in kern)
print(f"kernels and copies: {sum(e.count for e in kern)} launches, {tot/1e6:.3f} s of device time")
for e in sorted(kern, key=lambda e: -e.self_device_time_total)[:30]:
    print(f"  {e.self_device_time_total/1e6:7.3f} s {e.count:7d}x  {e.key[:110]}")
print(ka.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60), flush=True)

print("== 4. 128K at the default", flush=True)
print(f"131072 tokens: {prefill(eng, L(131072)):.2f} s", flush=True)
