"""The 4 passkey samples `actqkv bench quality --tasks passkey --lengths 6K --depths 0.2,0.4,0.6,0.8
--samples 1` answers (seed 0), written as JSON for every code version to read."""
import json, sys
from actqkv_llm import Engine
from actqkv_llm.bench import tasks as T

eng = Engine.default(progress=False, cache=False, cache_dir=sys.argv[1])
count = T.hf_token_counter(eng.tokenizer)
out = []
for depth in (0.2, 0.4, 0.6, 0.8):
    s = T.make_sample("passkey", 6 << 10, depth, count, seed=0, index=0)
    out.append({"depth": depth, "document": s.prompt_document, "continuation": s.continuation,
                "expected": s.expected, "max_new_tokens": s.max_new_tokens})
json.dump(out, open(sys.argv[2], "w"))
