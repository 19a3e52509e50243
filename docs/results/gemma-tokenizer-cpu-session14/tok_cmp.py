import sys, json
from actqkv_llm.bench.quality import load_engine
from actqkv_llm.bench import tasks as T
import transformers
from actqkv_llm.models.loading import load_model
import torch
# tokenizer only: build the engine's tokenizer the way the engine does
eng = load_engine("/work/gem", gguf_file="gemma-3-270m-q4_k_m.gguf", device="cpu", dtype="fp32")
tok = eng.tokenizer
count = T.hf_token_counter(tok)
s = T.make_sample("passkey", 131072, 0.0, count, haystack="filler", seed=0, index=0)
print(transformers.__version__, "n_tokens", s.n_tokens, "doc", len(tok(s.prompt_document)["input_ids"]))
for text in ["The pass key is 73360. Remember it. 73360 is the pass key.", s.continuation, " 73360."]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    print(repr(text), ids, [tok.decode([i]) for i in ids])
print(type(tok).__name__)
