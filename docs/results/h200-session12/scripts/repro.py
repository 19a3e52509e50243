import sys, traceback, torch
sys.path.insert(0, "tests")
from tiny_models import tiny_model
from actqkv_llm import Engine
SMALL = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
model = tiny_model("llama").to("cuda", torch.bfloat16)
eng = Engine(model, None, progress=False, cache=False, allow_past_window=True, decode_graph=True, decode_compile=True, **SMALL)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 200, (600,), generator=g))
s = eng._session_for(doc)
logits = s.forward(torch.arange(5, 11), phase="question")
try:
    for i in range(40):
        logits = eng._decode_step(s, int(logits.argmax()))
    print("ok; rescores", eng.decode_graph.rescores)
except Exception:
    traceback.print_exc()
