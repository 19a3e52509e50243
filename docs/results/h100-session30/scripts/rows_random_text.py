import os, sys, torch
sys.path.insert(0, "tests")
from tiny_models import byte_tokenizer, tiny_model, separated
from actqkv_llm import Engine
tokenizer = byte_tokenizer()
small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
model = separated(tiny_model("llama"))
ref = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_graph=False, **small)
fast = Engine(model, tokenizer, progress=False, cache=False, allow_past_window=True, decode_graph=True, decode_kernel=os.environ.get("K", "torch"), **small)
import string
AL = string.ascii_letters + string.digits + " .,"
doc = ref.prefill("".join(AL[i] for i in torch.randint(0, len(AL), (1400,), generator=torch.Generator().manual_seed(1)).tolist()))
questions = ([5, 6, 7, 8], [9, 8], [11, 12, 13])
ref_s = [ref._session_for(doc) for _ in questions]
fast_s = [fast._session_for(doc) for _ in questions]
ref_l = [s.forward(torch.tensor(q), phase="question") for s, q in zip(ref_s, questions)]
for s, q in zip(fast_s, questions):
    s.forward(torch.tensor(q), phase="question")
graph = fast.decode_graph
want, got = [], []
for _ in range(40):
    toks = [int(x.argmax()) for x in ref_l]
    ref_l = [ref._decode_step(s, t) for s, t in zip(ref_s, toks)]
    out = graph.step_rows(list(zip(fast_s, toks)))
    out = [s.forward(torch.tensor([t]), phase="decode") if o is None else o for o, s, t in zip(out, fast_s, toks)]
    want.append(torch.stack(ref_l)); got.append(torch.stack(out))
want, got = torch.stack(want), torch.stack(got)
print("replays", graph.replays, "segment/rescore steps", graph.rescore_steps, "max diff", float((got - want).abs().max()))
torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
a = fast.generate_ids_many(doc, list(questions), max_new_tokens=24); b = [ref.generate_ids(doc, q, max_new_tokens=24) for q in questions]
assert a == b, (a, b)
print("ok", a[0][:8])
