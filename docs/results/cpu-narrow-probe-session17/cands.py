"""Decode recall per layer under answer-only options, on one prefill per sample (Qwen2.5-Coder-0.5B,
2-core CPU, fp32; a probe). usage: python cands.py LENGTH INDEX [INDEX...]  (V=name,... to choose)"""
import json, os, sys, time
import torch
from actqkv_llm import Engine
from actqkv_llm.document import Document
from actqkv_llm.bench import tasks as T
from actqkv_llm.bench.meter import RecallMeter

torch.set_num_threads(int(os.environ.get("T", "2")))
length = int(sys.argv[1]); idx = [int(x) for x in sys.argv[2:]]
eng = Engine.from_pretrained(os.environ.get("QWEN", "/root/qwen"), gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                             device="cpu", dtype="fp32", progress=False)
count = T.hf_token_counter(eng.tokenizer)
VARIANTS = {"default": {}, "rerank=24": {"rerank": 24}, "rescore_every=8": {"rescore_every": 8},
            "question_rerank=16": {"question_rerank": 16}, "rescore_every=1": {"rescore_every": 1}}
only = os.environ.get("V"); VARIANTS = {k: v for k, v in VARIANTS.items() if not only or k in only.split(",")}
for i in idx:
    depth = T.DEFAULT_DEPTHS[i % len(T.DEFAULT_DEPTHS)]
    s = T.make_sample("niah_single", length, depth, count, seed=0, index=i)
    t0 = time.time()
    doc = eng.prefill(s.prompt_document, chat=True, progress=False, cache=False)
    print(f"# sample {i} depth {depth} tokens {doc.n_tokens} prefill {time.time()-t0:.1f}s", flush=True)
    for name, opts in VARIANTS.items():
        e2 = eng.with_method("actqkv", **opts)
        st = doc.state.fork(); st.method, st.config = e2.method, e2.config
        d2 = Document(e2, st, doc.token_ids, doc.text, doc.layout, doc.last_logits)
        e2.meter = RecallMeter(document_every=10**9)
        t1 = time.time()
        out = e2.ask(d2, s.question, temperature=0.0, max_new_tokens=40)
        rows = e2.meter.table()
        r = {ph: {x["layer"]: x["recall"] / x["oracle"] for x in rows if x["phase"] == ph} for ph in ("question", "decode")}
        dm = sum(x["recall"] for x in rows if x["phase"] == "decode") / sum(x["oracle"] for x in rows if x["phase"] == "decode")
        worst = sorted(r["decode"].items(), key=lambda kv: kv[1])[:3]
        qworst = sorted(r["question"].items(), key=lambda kv: kv[1])[:2]
        print(json.dumps({"sample": i, "variant": name, "decode_ratio": round(dm, 3), "L9": round(r["decode"][9], 3),
                          "worst": [(l, round(v, 3)) for l, v in worst], "q_worst": [(l, round(v, 3)) for l, v in qworst],
                          "under_0.9": sum(v < 0.9 for v in r["decode"].values()),
                          "output": out.strip()[:60], "correct": T.score(out, s.expected)["correct"], "s": round(time.time()-t1, 1)}), flush=True)
