# aten calls of one layer's decode step in our attention, by the actqkv_llm function that issued them: python count_ops.py
import torch, sys, collections
from transformers import LlamaConfig, AutoModelForCausalLM
from torch.utils._python_dispatch import TorchDispatchMode
from actqkv_llm.engine import Engine
import actqkv_llm.attention.step as step
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=32, vocab_size=1000, max_position_embeddings=8192,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
eng = Engine(net, None, progress=False)
doc = eng.prefill_ids(torch.randint(0, 1000, (6000,)))
sess = doc.session(); sess.track_sources = True
sess.forward(torch.randint(0, 1000, (32,)), phase="question")
class Log(TorchDispatchMode):
    def __init__(s): super().__init__(); s.ops = []
    def __torch_dispatch__(s, func, types, args=(), kwargs=None):
        import traceback
        fr = [f for f in traceback.extract_stack() if "actqkv_llm" in f.filename]
        where = f"{fr[-1].filename.split('actqkv_llm/')[1]}:{fr[-1].name}" if fr else "?"
        s.ops.append(where); return func(*args, **(kwargs or {}))
orig = step.StepContext._exec_block
logs = {}
def wrapped(self, slot, layer, *a):
    if layer == 1 and self.phase == "decode":
        with Log() as L: out = orig(self, slot, layer, *a)
        logs.setdefault("x", L.ops); return out
    return orig(self, slot, layer, *a)
step.StepContext._exec_block = wrapped
sess.forward(torch.tensor([5]), phase="decode")
ops = logs["x"]; print(len(ops), "ops in one layer's decode step")
print(collections.Counter(ops).most_common(40))
with Log() as L: sess.forward(torch.tensor([6]), phase="decode")
print(len(L.ops), "ops in a whole decode forward of", cfg.num_hidden_layers, "layers")
