"""Session 34: where answer_many's tokens part from one by one's (8B shape, random weights, bf16, 32K):
the padded reads' logits, windows and held candidates; then the first decode steps, alone and as rows."""
import os, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model, ARCHS
ARCHS["tiny"] = dict(ARCHS["llama-3.1-8b"], hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
from actqkv_llm.generation import Sampling
torch.manual_seed(0)
net = build_random_model(os.environ.get("ARCH", "llama-3.1-8b"), DEV, torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=True, question_batch=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 1000, (int(os.environ.get('N', '32768')),), generator=g))
qs = [torch.randint(0, 1000, (32,), generator=g) for _ in range(8)]
plan = Sampling.make(max_new_tokens=8)
alone = [eng._start(doc, q, plan, ids_only=True) for q in qs]
rows = eng._start_together(doc, qs, plan, ids_only=True)
la = torch.stack([l for _, l in alone]); lr = torch.stack([l for _, l in rows])
print("reads: logits bitwise equal per row", [bool(torch.equal(a, b)) for a, b in zip(la, lr)],
      "max diff", (la - lr).abs().max().item(), flush=True)
sa, sr = alone[3][0].session, rows[3][0].session
print("row 3 windows equal per layer:", sum(torch.equal(x.local_k, y.local_k) for x, y in zip(sa.memory, sr.memory)), "of", len(sa.memory))
print("row 3 held candidates equal:", sum(torch.equal(x.candidates.cand, y.candidates.cand) for x, y in zip(sa.retrieval, sr.retrieval) if x.candidates is not None and y.candidates is not None))
print("row 3 own blocks", [m.blocks.own.n_blocks for m in sa.memory[:2]], [m.blocks.own.n_blocks for m in sr.memory[:2]])
# first decode steps: each alone (graph, 1 row), and all as rows of one step
toks = la.argmax(-1).tolist()
graph = eng.decode_graph
one = []
for (run, _), t in zip(alone, toks):
    one.append(eng._decode_step(run.session, t))
feed = [(run.session, t) for (run, _), t in zip(rows, toks)]
many = graph.step_rows(feed)
print("step 1: logits bitwise equal per row", [bool(torch.equal(a, b)) if b is not None else None for a, b in zip(one, many)],
      "max diff", max((a - b).abs().max().item() for a, b in zip(one, many) if b is not None), flush=True)
print("step 1 argmax equal", [a.argmax().item() == b.argmax().item() for a, b in zip(one, many) if b is not None])
