"""Read hints on a reloaded document (2-core CPU, 2026-12-03): BlocksFile.read_units of 368 random
blocks per KV head out of ~1,000 (8 KV heads of 128, bf16 on disk: 8 KiB units), 32 layer reads,
with the library's WILLNEED hints off and on, alternating. A random 2-layer model with
Llama-3.1-8B's attention shape, a 32K-token document.

    python willneed.py 32768          # page cache dropped before each layer read
    python willneed.py 32768 --warm   # page cache warm
"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import actqkv_llm.persist.reader as reader
from actqkv_llm import Engine
from actqkv_llm.persist.bench import drop_page_cache

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
warm = "--warm" in sys.argv
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=1024, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=128, vocab_size=1000, max_position_embeddings=32768)
net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
eng = Engine(net, None, cache=False, progress=False)
loaded = eng.load(eng.prefill_ids(torch.randint(0, 900, (n,))).save("/tmp/willneed-doc"))
mem = next(m for m in loaded.state.memory if m.blocks.n_blocks)
bf, nb = mem.blocks.file, mem.blocks.n_blocks
print("blocks per layer", nb, "reader threads", bf._threads)
g = torch.Generator().manual_seed(1)
for hint in (False, True, False, True):
    reader._WILLNEED = hint
    read, seconds = 0, 0.0
    for _ in range(16):   # 16 x 2 layers = 32 layer reads
        for layer in (i for i, k in enumerate(bf.n_blocks) if k):
            blocks = torch.stack([torch.randperm(nb, generator=g)[:368] for _ in range(8)]).sort(-1).values
            heads = torch.arange(8)[:, None].expand(8, 368)
            if not warm:
                drop_page_cache(bf.path)
            b0, t = bf.bytes_read, time.perf_counter()
            bf.read_units(layer, blocks.reshape(-1), heads.reshape(-1), True, False)
            seconds += time.perf_counter() - t
            read += bf.bytes_read - b0
    print(f"hints {'on' if hint else 'off'}: {read / 2**20:.0f} MiB in {seconds:.2f} s = {read / 2**20 / seconds:.0f} MiB/s")
