"""One cell of the current preset from several runs: per sample whether the answer is right, its
first words, the document's token count, prefill seconds and each phase's worst layer (recall /
oracle); then the cell's totals.

python per_sample.py RUN.jsonl:VARIANT [RUN.jsonl:VARIANT ...]

VARIANT is the variant's name in that run (the current preset ran as `actqkv+question_rerank=16`
in the seventeenth session, as `actqkv` since)."""
import json
import sys

from actqkv_llm.bench.recall import summarize


def worst(r, phase):
    return min(x["recall"] / x["oracle"] for x in r["layers"] if x["phase"] == phase and x["oracle"] > 0)


def load_cell(runs):
    """``(path, variant)`` pairs -> ``{sample: (path, record)}``, each record relabelled as one variant."""
    rows = {}
    for path, variant in runs:
        for line in open(path):
            r = json.loads(line)
            if r["variant"] == variant:
                rows[r["sample"]] = (path, {**r, "variant": "actqkv (current preset)"})
    return rows


if __name__ == "__main__":
    rows = load_cell(arg.rsplit(":", 1) for arg in sys.argv[1:])
    print("sample  right  n_tokens  prefill_s  worst_question  worst_decode  answer  (run)")
    for s, (path, r) in sorted(rows.items()):
        print(f"{s:>6}  {str(r['correct']):>5}  {r['n_tokens']:>8}  {r['prefill_s']:>9.0f}  {worst(r, 'question'):>14.3f}"
              f"  {worst(r, 'decode'):>12.3f}  {r['output'][:60]!r}  ({path})")
    print(f"{sum(r['correct'] for _, r in rows.values())}/{len(rows)} right")
    # the cell's figures as recall.md gives them (the benchmark's own summary), then the lowest one sample reached
    (cell,) = summarize([r for _, r in rows.values()]).values()
    for phase in ("question", "decode"):
        p = cell["phases"][phase]
        single = min(worst(r, phase) for _, r in rows.values())
        print(f"{phase}: recall / oracle {p['ratio']:.3f}; worst layer (pooled over the samples, as recall.md)"
              f" {p['min_layer_ratio']:.3f}; worst layer of any one sample {single:.3f}")
