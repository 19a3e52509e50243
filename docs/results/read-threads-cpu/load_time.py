"""Engine.load of a saved document (2-core CPU, 2026-12-03): a random 32-layer model with
Llama-3.1-8B's attention shape (8 KV heads of 128), a 16K-token document (state file 77 MiB: the
key bounds and digests of every block; 1/8 of the 8B shape's at 128K). Five loads with the page
cache dropped first, five warm.

    python load_time.py 16384
"""
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from actqkv_llm import Engine
from actqkv_llm.persist.bench import drop_page_cache

n = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=1024, intermediate_size=256, num_hidden_layers=32, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=128, vocab_size=1000, max_position_embeddings=32768)
net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
eng = Engine(net, None, cache=False, progress=False)
d = Path(f"/tmp/load-time-doc-{n}")
if not d.exists():
    eng.prefill_ids(torch.randint(0, 900, (n,))).save(d)
for cold in (True, False):
    times = []
    for _ in range(5):
        if cold:
            for f in d.iterdir():
                drop_page_cache(f)
        t = time.perf_counter()
        eng.load(d)
        times.append(time.perf_counter() - t)
    print("cold" if cold else "warm", " ".join(f"{x:.3f}" for x in times), f"best {min(times):.3f}")
