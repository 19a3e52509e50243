"""Session 10: PyTorch (aten) calls per decode step of the static step on the CPU (eager, decode_graph=True):
a step where a block leaves the window (every layer scores again) against a plain one. Tiny random
32-layer Llama (hidden 256, 2 KV heads), 16K tokens, the default method and config; 2-core CPU."""
import time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from actqkv_llm import Engine
from torch.utils._python_dispatch import TorchDispatchMode
from collections import Counter
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=32, num_attention_heads=8, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=131072)
torch.manual_seed(0)
net = LlamaForCausalLM(cfg).eval()
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=True)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 1000, (16384,), generator=g))
graph = eng.decode_graph
sess = eng._session_for(doc)
logits = sess.forward(torch.randint(0, 1000, (32,), generator=g), phase="question")
class Count(TorchDispatchMode):
    def __init__(s): super().__init__(); s.c = Counter()
    def __torch_dispatch__(s, func, types, args=(), kwargs=None):
        s.c[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))
for step in range(40):
    tok = int(logits.argmax())
    p = graph.plan(sess)
    kind = "evict" if p and p[3] else ("rescore" if p and p[2] else "graph")
    if kind != "graph" or step in (5,):
        with Count() as c:
            t0 = time.perf_counter(); logits = eng._decode_step(sess, tok); dt = time.perf_counter() - t0
        print(step, kind, f"{dt*1000:.0f} ms", sum(c.c.values()), "ops", c.c.most_common(12))
    else:
        logits = eng._decode_step(sess, tok)
