"""Session 35: where answer_many's tokens (question_batch) part from one by one's: every tensor of a
session's state after its read, alone (twice) and as a row; then decode steps, alone and as rows."""
import os, sys, torch, dataclasses
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model, ARCHS
from actqkv_llm.generation import Sampling
ARCHS["tiny"] = dict(ARCHS["llama-3.1-8b"], hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
net = build_random_model(os.environ.get("ARCH", "llama-3.1-8b"), DEV, torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=True, question_batch=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 1000, (int(os.environ.get('N', '32768')),), generator=g))
qs = [torch.randint(0, 1000, (32,), generator=g) for _ in range(8)]
plan = Sampling.make(max_new_tokens=8)

def tensors(obj, path="s", seen=None, depth=0, out=None):
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return out
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out[path] = obj
        return out
    if isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            tensors(x, f"{path}[{i}]", seen, depth + 1, out)
        return out
    if isinstance(obj, dict):
        for k, x in obj.items():
            tensors(x, f"{path}[{k!r}]", seen, depth + 1, out)
        return out
    kind = type(obj).__name__
    if kind == "GrowableBlocks":
        out[path + ".keys"], out[path + ".values"] = obj.keys, obj.values
        return out
    if kind == "SummaryKeys":
        out[path + ".own"] = obj._own[: obj.n_own]
        return out
    if kind == "LayeredBlocks":
        return out
    if type(obj).__module__.startswith("actqkv_llm"):
        names = list(getattr(obj, "__dict__", {}).keys())
        for cls in type(obj).__mro__:
            names += [n for n in getattr(cls, "__slots__", ()) if n not in names]
        for n in names:
            if n in ("engine", "adapter", "model", "doc", "document", "config", "method"):
                continue
            try:
                x = getattr(obj, n)
            except Exception:
                continue
            tensors(x, f"{path}.{n}", seen, depth + 1, out)
    return out

def diff(a, b, label, show=12):
    ta, tb = tensors(a), tensors(b)
    bad = []
    for k in sorted(set(ta) | set(tb)):
        x, y = ta.get(k), tb.get(k)
        if x is None or y is None:
            bad.append(f"{k}: only in {'b' if x is None else 'a'}")
        elif x.shape != y.shape:
            bad.append(f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        elif not torch.equal(x, y):
            d = (x.float() - y.float()).abs().max().item() if x.is_floating_point() else int((x != y).sum())
            bad.append(f"{k}: {tuple(x.shape)} {x.dtype} differ ({d})")
    print(f"{label}: {len(ta)} tensors, {len(bad)} differ", flush=True)
    for line in bad[:show]:
        print("   ", line)
    return bad

alone = [eng._start(doc, q, plan, ids_only=True) for q in qs]
again = [eng._start(doc, q, plan, ids_only=True) for q in qs[:2]]
rows = eng._start_together(doc, qs, plan, ids_only=True)
la = torch.stack([l for _, l in alone]); lr = torch.stack([l for _, l in rows])
print("reads: logits bitwise equal per row", [bool(torch.equal(a, b)) for a, b in zip(la, lr)],
      "max diff", (la - lr).abs().max().item(), flush=True)
print("read twice alone: logits equal", [bool(torch.equal(a[1], b[1])) for a, b in zip(alone, again)])
diff(alone[0][0].session, again[0][0].session, "row 0 alone vs alone again")
for r in (0, 3, 7):
    diff(alone[r][0].session, rows[r][0].session, f"row {r} alone vs as a row")
toks = la.argmax(-1).tolist()
graph = eng.decode_graph
for step in range(6):
    one = [eng._decode_step(run.session, t) for (run, _), t in zip(alone, toks)]
    many = graph.step_rows([(run.session, t) for (run, _), t in zip(rows, toks)])
    print(f"step {step + 1}: logits equal per row", [bool(torch.equal(a, b)) if b is not None else None for a, b in zip(one, many)],
          "argmax equal", [a.argmax().item() == b.argmax().item() for a, b in zip(one, many) if b is not None], flush=True)
    toks = [a.argmax().item() for a in one]

# where a batched read's time goes: wall time of one read and of 8 together, then a profile of 8
import time
def wall(fn, n=3):
    best = 1e9
    for _ in range(n):
        if DEV == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter(); fn()
        if DEV == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best
print(f"one read {wall(lambda: eng._start(doc, qs[0], plan, ids_only=True)) * 1e3:.1f} ms, "
      f"8 together {wall(lambda: eng._start_together(doc, qs, plan, ids_only=True)) * 1e3:.1f} ms", flush=True)
from torch.profiler import profile, ProfilerActivity
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
with profile(activities=acts) as prof:
    eng._start_together(doc, qs, plan, ids_only=True)
    if DEV == "cuda":
        torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
if DEV == "cuda":
    print(ka.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
print("calls in all:", sum(e.count for e in ka))
