"""Session 7: where do answers decoded together first differ from the same answers alone (8B shape,
32K, 8 questions)? Each path follows its own greedy tokens; per step the kind that ran it
(g: static step, r<N>: reference pass of N rows, q: the question read)."""
import torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
from actqkv_llm.session import forward_rows
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 100000, (32768,), generator=g))
qs = [torch.randint(0, 100000, (24,), generator=g) for _ in range(8)]
graph = eng.decode_graph
STEPS = 110
alone = []
for q in qs:
    s = eng._session_for(doc)
    l = s.forward(q, phase="question")
    rec = [(l.clone(), "q")]
    for t in range(STEPS):
        tok = int(l.argmax())
        out, kind = graph.step_rows([(s, tok)])[0], "g"
        if out is None:
            out, kind = s.forward(torch.tensor([tok]), phase="decode"), "r1"
        l = out
        rec.append((l.clone(), kind))
    alone.append(rec)
sess = [eng._session_for(doc) for _ in qs]
ls = [s.forward(q, phase="question") for s, q in zip(sess, qs)]
tog = [[(l.clone(), "q")] for l in ls]
for t in range(STEPS):
    toks = [int(l.argmax()) for l in ls]
    out = graph.step_rows(list(zip(sess, toks)))
    kinds = ["g"] * 8
    rest = [i for i, o in enumerate(out) if o is None]
    if rest:
        r = forward_rows([sess[i] for i in rest], torch.tensor([toks[i] for i in rest]), "decode")
        for j, i in enumerate(rest):
            out[i], kinds[i] = r[j], f"r{len(rest)}"
    ls = out
    for i in range(8):
        tog[i].append((ls[i].clone(), kinds[i]))
for i in range(8):
    ka = "".join(k[0] for _, k in alone[i][1:]); kb = "".join(k[0] for _, k in tog[i][1:])
    first = next((k for k, ((a, _), (b, _)) in enumerate(zip(alone[i], tog[i])) if not torch.equal(a, b)), None)
    if first is None:
        print(f"row {i}: identical over {STEPS} steps; kinds alone {ka}", flush=True)
        continue
    (a, x), (b, y) = alone[i][first], tog[i][first]
    print(f"row {i}: first differing logits at step {first} (alone {x}, together {y}), max |diff| {float((a - b).abs().max()):.3g}, "
          f"same argmax {int(a.argmax()) == int(b.argmax())}; kinds alone {ka} together {kb}", flush=True)
