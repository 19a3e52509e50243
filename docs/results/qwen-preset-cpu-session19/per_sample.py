"""One cell of the current preset from several runs: per sample whether the answer is right, its
first words, the document's token count, prefill seconds and each phase's worst layer (recall /
oracle); then the cell's totals.

python per_sample.py RUN.jsonl:VARIANT [RUN.jsonl:VARIANT ...]

VARIANT is the variant's name in that run (the current preset ran as `actqkv+question_rerank=16`
in the seventeenth session, as `actqkv` since)."""
import json
import sys


def worst(r, phase):
    return min(x["recall"] / x["oracle"] for x in r["layers"] if x["phase"] == phase and x["oracle"] > 0)


rows = {}
for arg in sys.argv[1:]:
    path, variant = arg.rsplit(":", 1)
    for line in open(path):
        r = json.loads(line)
        if r["variant"] == variant:
            rows[r["sample"]] = (path, r)
print("sample  right  n_tokens  prefill_s  worst_question  worst_decode  answer  (run)")
for s, (path, r) in sorted(rows.items()):
    print(f"{s:>6}  {str(r['correct']):>5}  {r['n_tokens']:>8}  {r['prefill_s']:>9.0f}  {worst(r, 'question'):>14.3f}"
          f"  {worst(r, 'decode'):>12.3f}  {r['output'][:60]!r}  ({path})")
right = sum(r["correct"] for _, r in rows.values())
print(f"{right}/{len(rows)} right")
for phase in ("question", "decode"):
    # as recall.md computes it: per layer the mean over the samples, recall / oracle; then the
    # phase's mean over layers and its worst layer
    layers = {}
    for _, r in rows.values():
        for x in r["layers"]:
            if x["phase"] == phase:
                layers.setdefault(x["layer"], []).append(x)
    rec = {k: sum(x["recall"] for x in v) / len(v) for k, v in layers.items()}
    orc = {k: sum(x["oracle"] for x in v) / len(v) for k, v in layers.items()}
    mean = sum(rec.values()) / sum(orc.values())
    pooled = min(rec[k] / orc[k] for k in layers if orc[k])
    single = min(worst(r, phase) for _, r in rows.values())
    print(f"{phase}: recall / oracle {mean:.3f}; worst layer (pooled over the samples, as recall.md) {pooled:.3f};"
          f" worst layer of any one sample {single:.3f}")
