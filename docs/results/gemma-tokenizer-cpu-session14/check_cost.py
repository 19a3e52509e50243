"""Time of the loader's tokenizer check (vocabulary_roundtrip, 200 word tokens) on each converted
model in the library's model cache (2-core CPU): python check_cost.py"""
import glob, time
from transformers import AutoTokenizer
from actqkv_llm.models.tokenizer_check import vocabulary_roundtrip
for d in sorted(glob.glob(__import__("os").path.expanduser("~/.cache/actqkv/models/*/"))):
    t = AutoTokenizer.from_pretrained(d)
    t0 = time.perf_counter()
    r = vocabulary_roundtrip(t)
    print(d.rstrip("/").rsplit("/", 1)[1][:12], type(t).__name__, "roundtrip", r, f"{(time.perf_counter() - t0) * 1000:.0f} ms")
