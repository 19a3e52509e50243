# Decode ms/token of a tiny random 32-layer Llama on the CPU (2 cores): python decode_time.py 16384, options as JSON in OPTS
import time, torch, sys
from transformers import LlamaConfig, AutoModelForCausalLM
from actqkv_llm.engine import Engine
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=32, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=32, vocab_size=1000, max_position_embeddings=8192,
                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
import os, json; eng = Engine(net, None, **json.loads(os.environ.get("OPTS", "{}")))
n = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
ids = torch.randint(0, 1000, (n,))
t = time.time(); doc = eng.prefill_ids(ids, progress=False); print("prefill", time.time() - t)
q = torch.randint(0, 1000, (32,))
eng.generate_ids(doc, q, max_new_tokens=2)
t = time.time(); eng.generate_ids(doc, q, max_new_tokens=1); ttft = time.time() - t
t = time.time(); out = eng.generate_ids(doc, q, max_new_tokens=17); tot = time.time() - t
print("ttft", ttft, "decode ms/tok", 1000 * (tot - ttft) / 16)
