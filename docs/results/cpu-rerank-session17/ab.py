# A/B of the reference rerank (HEAD c62e8f7 vs working tree) on one prefill: python ab.py N ROUNDS
import time, torch, sys
from actqkv_llm import Engine
from actqkv_llm.retrieval import methods
from actqkv_llm.memory import blocks
from actqkv_llm.memory.blocks import flatten_blocks

def old_rerank(self, q, mem, mq, cand, k, n):
    m = cand.shape[-1]
    h, t, d = q.shape
    hkv, b = mem.kv_heads, mem.block_size
    qr = mq.at_memory(q).float().reshape(hkv, (h // hkv) * t, d)
    logits = torch.matmul(qr, k.float().transpose(1, 2)) * mq.scaling
    lse = torch.logsumexp(logits, -1, keepdim=True)
    if mq.context_lse is not None:
        lse = torch.logaddexp(lse, mq.context_lse())
    p = torch.exp(logits - lse)
    mass = p.reshape(hkv, -1, m, b).sum((1, 3))
    if cand.shape[0] == 1:
        mass = mass.sum(0, keepdim=True)
    if self.keep_edges:
        edge = (cand == 0) | (cand == mem.n_blocks - 1)
        mass = mass.masked_fill(edge.expand_as(mass), float("inf"))
    top = mass.sort(dim=-1, descending=True, stable=True).indices[:, :n].sort(-1).values
    picked = cand.expand(mass.shape[0], -1).gather(1, top)
    return picked, old_keys_at(k, top, hkv, b)

def old_keys_at(keys, top, hkv, b):
    d = keys.shape[-1]
    kb = keys.view(hkv, -1, b, d)
    kb = kb[:, top[0]] if top.shape[0] == 1 else kb[torch.arange(hkv, device=keys.device)[:, None], top]
    return kb.reshape(hkv, top.shape[-1] * b, d)

def old_gather(self, idx, device, keys=True, values=True):
    idx = idx.to(self.device)
    if idx.dim() == 2:
        heads = torch.arange(idx.shape[0], device=self.device)[:, None]
        def take(store):
            return store[: self.n_blocks][idx, heads].flatten(1, 2).to(device, non_blocking=True)
    else:
        def take(store):
            return flatten_blocks(store.index_select(0, idx)).to(device, non_blocking=True)
    return (take(self._k) if keys else None), (take(self._v) if values else None)

new = (methods.BlockRetrieval._rerank_among, blocks.GrowableBlocks.gather)
old = (old_rerank, old_gather)
TIMES = {}
def timed(name, f):
    def w(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); TIMES[name] = TIMES.get(name, 0.0) + time.perf_counter() - t
        return r
    return w
import actqkv_llm.attention.step as step_mod
step_mod.StepContext._exec_block = timed("exec_block", step_mod.StepContext._exec_block)
new = tuple(timed(f"{i}", f) for i, f in enumerate(new))
old = tuple(timed(f"{i}", f) for i, f in enumerate(old))
def use(which):
    methods.BlockRetrieval._rerank_among, blocks.GrowableBlocks.gather = which

eng = Engine.from_pretrained("/root/qwen", gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", device="cpu", dtype="fp32", progress=False)
g = torch.Generator().manual_seed(0)
n = int(sys.argv[1])
ids = torch.randint(100, 30000, (n,), generator=g)
q = torch.randint(100, 30000, (32,), generator=g)
t = time.perf_counter(); doc = eng.prefill_ids(ids); print("prefill", round(time.perf_counter() - t, 1), flush=True)
outs = {}
for name, which in (("old", old), ("new", new)):
    use(which); outs[name] = eng.generate_ids(doc, q, max_new_tokens=24)
print("same tokens:", torch.equal(torch.as_tensor(outs["old"]), torch.as_tensor(outs["new"])), flush=True)
res = {"old": [], "new": []}
for r in range(int(sys.argv[2])):
    for name, which in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
        use(which)
        t = time.perf_counter(); eng.generate_ids(doc, q, max_new_tokens=1); t1 = time.perf_counter() - t
        print("   q", {k: round(v, 3) for k, v in TIMES.items()}); TIMES.clear()
        t = time.perf_counter(); eng.generate_ids(doc, q, max_new_tokens=17); t17 = time.perf_counter() - t
        res[name].append((t1, (t17 - t1) / 16))
        print("   ", {k: round(v, 3) for k, v in TIMES.items()}); TIMES.clear()
        print(name, "question+1 s", round(t1, 3), "decode ms/token", round((t17 - t1) / 16 * 1e3, 1), flush=True)
for name, v in res.items():
    a = sorted(x[0] for x in v); b = sorted(x[1] for x in v)
    print(name, "median question+1 s", round(a[len(a) // 2], 3), "median decode ms/token", round(b[len(b) // 2] * 1e3, 1))
