# per sample and variant: worst question / decode layer (recall / oracle) and layers under 0.9
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    out = {"sample": r["sample"], "variant": r["variant"], "correct": r["correct"]}
    for ph in ("question", "decode"):
        rows = [x for x in r["layers"] if x["phase"] == ph]
        ratio = {x["layer"]: x["recall"] / x["oracle"] for x in rows if x["oracle"] > 0}
        w = min(ratio, key=ratio.get)
        out[ph] = f"worst L{w} {ratio[w]:.3f}, under 0.9: {sum(v < 0.9 for v in ratio.values())}"
    out["answer_s"] = round(r["answer_s"], 1)
    print(json.dumps(out))
