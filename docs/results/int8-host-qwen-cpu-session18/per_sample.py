"""Per sample: both variants' correctness, whether their 40-token answers are the same, prefill seconds and
each phase's worst layer (recall / oracle). python per_sample.py recall.jsonl"""
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "recall.jsonl")]
by = {}
for r in rows:
    by.setdefault(r["sample"], {})[r["variant"]] = r
def worst(r, phase):
    return min(x["recall"] / x["oracle"] for x in r["layers"] if x["phase"] == phase and x["oracle"] > 0)
print("sample  correct(base, int8)  same answer  prefill s (base, int8)  worst question layer  worst decode layer")
for s, d in sorted(by.items()):
    a, b = d["actqkv"], d["actqkv+offload=true+host_kv_dtype=int8"]
    print(s, a["correct"], b["correct"], a["output"] == b["output"], round(a["prefill_s"]), round(b["prefill_s"]),
          round(worst(a, "question"), 3), round(worst(b, "question"), 3), round(worst(a, "decode"), 3), round(worst(b, "decode"), 3))
