"""Time to first token and decode, question_rerank 8 (the preset) vs 16, on one prefill (Qwen2.5-Coder-0.5B,
2-core CPU, fp32; random tokens). usage: python ab_question.py N ROUNDS"""
import os, sys, time
import torch
from actqkv_llm import Engine
from actqkv_llm.document import Document

torch.set_num_threads(int(os.environ.get("T", "2")))
eng = Engine.from_pretrained(os.environ.get("QWEN", "/root/qwen"), gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                             device="cpu", dtype="fp32", progress=False)
g = torch.Generator().manual_seed(0)
n = int(sys.argv[1])
ids = torch.randint(100, 30000, (n,), generator=g)
q = torch.randint(100, 30000, (32,), generator=g)
t = time.perf_counter(); doc = eng.prefill_ids(ids); print("prefill", round(time.perf_counter() - t, 1), flush=True)
variants = {"question_rerank=8": eng, "question_rerank=16": eng.with_method("actqkv", question_rerank=16)}


def on(e):
    st = doc.state.fork(); st.method, st.config = e.method, e.config
    return Document(e, st, doc.token_ids, doc.text, doc.layout, doc.last_logits)


res = {k: [] for k in variants}
for r in range(int(sys.argv[2])):
    for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
        e = variants[name]
        t = time.perf_counter(); e.generate_ids(on(e), q, max_new_tokens=1); t1 = time.perf_counter() - t
        t = time.perf_counter(); e.generate_ids(on(e), q, max_new_tokens=17); t17 = time.perf_counter() - t
        res[name].append((t1, (t17 - t1) / 16))
        print(name, "question+1 s", round(t1, 3), "decode ms/token", round((t17 - t1) / 16 * 1e3, 1), flush=True)
for name, v in res.items():
    a = sorted(x[0] for x in v); b = sorted(x[1] for x in v)
    print(name, "median question+1 s", round(a[len(a) // 2], 3), "median decode ms/token", round(b[len(b) // 2] * 1e3, 1))
