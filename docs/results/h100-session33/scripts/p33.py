"""Session 33: where a question's read spends its host time (8B shape, random weights, 32K, 32-token questions):
torch calls per layer by the part of _exec_block they come from (a TorchFunctionMode, as on the CPU), then
cProfile of three reads (after two to warm up): our functions by own and cumulative time."""
import cProfile, collections, io, os, pstats, sys, time, torch
from torch.overrides import TorchFunctionMode
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.attention.step import QUESTION

from actqkv_llm.bench.speed import ARCHS
ARCHS["tiny"] = dict(ARCHS["llama-3.1-8b"], hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
net = build_random_model(os.environ.get("ARCH", "llama-3.1-8b"), DEV, torch.bfloat16)
V = min(100000, net.config.vocab_size)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, V, (int(os.environ.get("N", "32768")),), generator=g))
qs = [torch.randint(0, V, (32,), generator=g) for _ in range(8)]
sync = torch.cuda.synchronize if DEV == 'cuda' else (lambda: None)
def read(q):
    return eng._session_for(doc).forward(q, phase=QUESTION)
for q in qs[:2]:
    read(q)
sync()
for q in qs[2:5]:
    t0 = time.perf_counter(); read(q); t1 = time.perf_counter(); sync(); t2 = time.perf_counter()
    print(f"read: host {1000 * (t1 - t0):.1f} ms, until the device is done {1000 * (t2 - t0):.1f} ms", flush=True)
PH = {"observe", "select", "_read_selection", "attend", "make_room", "rotate", "append_local", "add_local_scores",
      "memory_query", "sinks_at_true_positions", "note_attention", "note_retrieval"}
class Count(TorchFunctionMode):
    def __init__(s):
        super().__init__(); s.c = collections.Counter(); s.sub = collections.Counter(); s.n = 0
    def __torch_function__(s, func, types, args=(), kwargs=None):
        s.n += 1
        f = sys._getframe(1); chain = []
        while f:
            if "actqkv_llm" in f.f_code.co_filename:
                chain.append(f.f_code.co_name)
            f = f.f_back
        key = "model layer (not attention)"
        if "_exec_block" in chain:
            inner = chain[:chain.index("_exec_block")]
            key = "exec_block itself"
            for name in reversed(inner):
                if name in PH:
                    key = name; break
            if key == "select":
                i = inner.index("select"); s.sub[inner[i - 1] if i else "select"] += 1
        elif "call_layer" not in chain:
            key = "outside the layers"
        s.c[key] += 1
        return func(*args, **(kwargs or {}))
with Count() as m:
    read(qs[5])
sync()
L = net.config.num_hidden_layers
print(f"torch calls in one read: {m.n} ({m.n / L:.0f} per layer); per layer by part:")
for k, v in m.c.most_common():
    print(f"  {v / L:7.1f}  {k}")
print("  inside select, by what select called:")
for k, v in m.sub.most_common(12):
    print(f"  {v / L:7.1f}    {k}")
pr = cProfile.Profile()
pr.enable()
for q in qs[5:8]:
    read(q)
sync()
pr.disable()
for key in ("tottime", "cumulative"):
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats(key).print_stats(45)
    print(f"== cProfile of three reads, by {key}")
    print("\n".join(l for l in out.getvalue().splitlines() if l.strip())[:12000])
