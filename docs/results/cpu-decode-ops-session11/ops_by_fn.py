"""aten calls of one eviction step of the static step (eager, CPU), attributed to the innermost
actqkv_llm function on the stack. Tiny random 32-layer Llama (hidden 256, 2 KV heads), 16K tokens."""
import sys, time, traceback
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from actqkv_llm import Engine
from torch.utils._python_dispatch import TorchDispatchMode
from collections import Counter
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=32, num_attention_heads=8, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=131072)
torch.manual_seed(0)
net = LlamaForCausalLM(cfg).eval()
compile_ = len(sys.argv) > 1 and sys.argv[1] == "compile"
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=True, decode_compile=compile_)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 1000, (16384,), generator=g))
graph = eng.decode_graph
sess = eng._session_for(doc)
logits = sess.forward(torch.randint(0, 1000, (32,), generator=g), phase="question")
class Count(TorchDispatchMode):
    def __init__(s): super().__init__(); s.c = Counter(); s.f = Counter()
    def __torch_dispatch__(s, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        s.c[name] += 1
        where = "?"
        for fr in reversed(traceback.extract_stack(limit=40)):
            if "actqkv_llm" in fr.filename:
                where = fr.filename.split("actqkv_llm/")[1] + ":" + fr.name
                break
        s.f[where] += 1
        return func(*args, **(kwargs or {}))
for step in range(40):
    tok = int(logits.argmax())
    p = graph.plan(sess)
    kind = "evict" if p and p[3] else ("rescore" if p and p[2] else "graph")
    if kind != "graph" or step == 5:
        with Count() as c:
            t0 = time.perf_counter(); logits = eng._decode_step(sess, tok); dt = time.perf_counter() - t0
        print(step, kind, f"{dt*1000:.0f} ms", sum(c.c.values()), "ops", c.c.most_common(10))
        print("   by function (per layer):", [(k, round(v / 32, 1)) for k, v in c.f.most_common(25)])
    else:
        logits = eng._decode_step(sess, tok)
