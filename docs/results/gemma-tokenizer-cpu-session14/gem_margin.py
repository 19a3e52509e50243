"""Gemma 3 270M, passkey 128K depth 0 (the sample the H200 misses): prefill once on the CPU (fp32),
save, then greedy decode with the logit margin of each step (chosen token vs the runner-up)."""
import json, sys, time, os
import torch
from actqkv_llm.bench.quality import load_engine
from actqkv_llm.bench import tasks as T

mode = sys.argv[1]            # "prefill" or "decode"
out = os.environ.get("DOC", "/work/scratch/gem128k_d0")
eng = load_engine("/work/gem", gguf_file="gemma-3-270m-q4_k_m.gguf", device="cpu", dtype="fp32",
                  **json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}"))
count = T.hf_token_counter(eng.tokenizer)
s = T.make_sample("passkey", 131072, 0.0, count, haystack="filler", seed=0, index=0)
print("expected", s.expected, "n_tokens", s.n_tokens, flush=True)
if mode == "prefill":
    t0 = time.perf_counter()
    doc = eng.prefill(s.prompt_document, chat=False, progress=False)
    print("prefill s", time.perf_counter() - t0, flush=True)
    eng.save(doc, out, kv_dtype="compute")
elif mode == "resave":
    doc = eng.load(out)
    eng.save(doc, out + "_bf16")
    doc = eng.load(out + "_bf16")
else:
    doc = eng.load(out)
sess = eng._session_for(doc)
suffix = eng._completion_suffix(doc, s.continuation)
logits = sess.forward(suffix, phase="question")
toks = []
for i in range(8):
    top = logits.float().topk(4)
    tok = int(top.indices[0])
    toks.append(tok)
    print(i, repr(eng.tokenizer.decode([tok])), "margin %.3f" % float(top.values[0] - top.values[1]),
          [(eng.tokenizer.decode([int(j)]), round(float(v), 2)) for v, j in zip(top.values, top.indices)], flush=True)
    logits = eng._decode_step(sess, tok)
print("output", repr(eng.tokenizer.decode(toks)))
