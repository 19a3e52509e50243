"""Would answer tokens keep the default's recall if most steps reranked only the best of the held
candidates? (Qwen2.5-Coder-0.5B, 2-core CPU, fp32; a probe, not library code.)

One prefill per sample, then the same `ask` under decode policies that differ only after the
document (sharing the prefill is exact). A policy `narrow:F:S` reranks all held candidates on
every S-th decode step of a layer (and whenever the candidates are new), and on the other steps
only the F x n candidates with the most mass at their latest rerank (n: the step's picks), its
softmax normalised over those and the window (what a cheaper step would compute). The recall
meter measures each policy's real selection against the oracle.
usage: python narrow.py LENGTH INDEX [INDEX...]   (V=default,narrow:3:4,... to choose policies)"""
import json, os, sys, time
import torch
from actqkv_llm import Engine
from actqkv_llm.document import Document
from actqkv_llm.bench import tasks as T
from actqkv_llm.bench.meter import RecallMeter
from actqkv_llm.retrieval import methods as M

torch.set_num_threads(int(os.environ.get("T", "2")))
length = int(sys.argv[1]); idx = [int(x) for x in sys.argv[2:]]
eng = Engine.from_pretrained(os.environ.get("QWEN", "/root/qwen"), gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                             device="cpu", dtype="fp32", progress=False)
count = T.hf_token_counter(eng.tokenizer)
_rerank = M.BlockRetrieval._rerank_among
POLICY = {"f": None, "s": None}
KEYS_READ = {"all": 0, "read": 0}
PREV = {}   # id(layer memory) -> (held candidates, their last masses [rows, m], steps since the full rerank)


def narrowed(self, q, mem, mq, cand, k, n):
    f, s = POLICY["f"], POLICY["s"]
    if mq.phase != "decode" or f is None:
        return _rerank(self, q, mem, mq, cand, k, n)
    h, t, d = q.shape
    hkv, b = mem.kv_heads, mem.block_size
    m = cand.shape[-1]
    key = id(mem)
    prev = PREV.get(key)
    prev = prev[1:] if prev is not None and prev[0] is cand else None
    qr = mq.at_memory(q).float().reshape(hkv, (h // hkv) * t, d)
    ctx = mq.context_lse() if mq.context_lse is not None else None
    KEYS_READ["all"] += m
    if prev is None or prev[1] + 1 >= s or f * n >= m:
        mass = M.candidate_mass(qr, k, mq.scaling, ctx, b)
        if cand.shape[0] == 1:
            mass = mass.sum(0, keepdim=True)
        PREV[key] = (cand, mass.clone(), 0)
        KEYS_READ["read"] += m
    else:
        old, age = prev
        sub = old.topk(f * n, -1).indices.sort(-1).values                    # [rows, K] candidate positions
        ks = M._keys_at(k, sub, hkv, b)
        part = M.candidate_mass(qr, ks, mq.scaling, ctx, b)                  # [Hkv, K]
        if cand.shape[0] == 1:
            part = part.sum(0, keepdim=True)
        mass = torch.full_like(old, float("-inf")).scatter(1, sub.expand(part.shape[0], -1), part)
        PREV[key] = (cand, old.scatter(1, sub.expand(part.shape[0], -1), part), age + 1)
        KEYS_READ["read"] += f * n
    if self.keep_edges:
        edge = (cand == 0) | (cand == mem.n_blocks - 1)
        mass = mass.masked_fill(edge.expand_as(mass), float("inf"))
    top = mass.sort(dim=-1, descending=True, stable=True).indices[:, :n].sort(-1).values
    picked = cand.expand(mass.shape[0], -1).gather(1, top)
    return picked, M._keys_at(k, top, hkv, b)


M.BlockRetrieval._rerank_among = narrowed
VARIANTS = ["default", "narrow:3:4", "narrow:2:4", "narrow:4:8", "narrow:2:8"]
only = os.environ.get("V"); VARIANTS = [v for v in VARIANTS if not only or v in only.split(",")]
for i in idx:
    depth = T.DEFAULT_DEPTHS[i % len(T.DEFAULT_DEPTHS)]
    s = T.make_sample("niah_single", length, depth, count, seed=0, index=i)
    t0 = time.time()
    doc = eng.prefill(s.prompt_document, chat=True, progress=False, cache=False)
    print(f"# sample {i} depth {depth} tokens {doc.n_tokens} prefill {time.time()-t0:.1f}s", flush=True)
    for name in VARIANTS:
        POLICY["f"], POLICY["s"] = (None, None) if name == "default" else map(int, name.split(":")[1:])
        PREV.clear(); KEYS_READ.update(all=0, read=0)
        st = doc.state.fork()
        d2 = Document(eng, st, doc.token_ids, doc.text, doc.layout, doc.last_logits)
        eng.meter = RecallMeter(document_every=10**9)
        t1 = time.time()
        out = eng.ask(d2, s.question, temperature=0.0, max_new_tokens=40)
        rows = eng.meter.table()
        eng.meter = None
        r = {ph: {x["layer"]: x["recall"] / x["oracle"] for x in rows if x["phase"] == ph} for ph in ("question", "decode")}
        dm = sum(x["recall"] for x in rows if x["phase"] == "decode") / sum(x["oracle"] for x in rows if x["phase"] == "decode")
        worst = sorted(r["decode"].items(), key=lambda kv: kv[1])[:3]
        print(json.dumps({"sample": i, "variant": name, "decode_ratio": round(dm, 3),
                          "L9": round(r["decode"][9], 3), "L11": round(r["decode"][11], 3),
                          "worst": [(l, round(v, 3)) for l, v in worst], "under_0.9": sum(v < 0.9 for v in r["decode"].values()),
                          "keys_read_share": round(KEYS_READ["read"] / max(1, KEYS_READ["all"]), 3),
                          "output": out.strip()[:40], "correct": T.score(out, s.expected)["correct"], "s": round(time.time()-t1, 1)}), flush=True)
