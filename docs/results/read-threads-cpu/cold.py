"""Reader threads on a reloaded document: read_units of 368 random blocks per KV head (8 heads, 8 KiB units) x 32 layer reads, at each thread count."""
import time, torch, sys
from transformers import LlamaConfig, AutoModelForCausalLM
from actqkv_llm import Engine
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=1024, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=128, vocab_size=1000, max_position_embeddings=32768)
net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
eng = Engine(net, None, cache=False, progress=False)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
t = time.perf_counter(); doc = eng.prefill_ids(torch.randint(0, 900, (n,))); print("prefill", time.perf_counter() - t)
path = doc.save("/tmp/read-threads-doc")   # KV on disk in the default kv_dtype (bf16: 8 KiB per KV head of a block)
loaded = eng.load(path)
mem = [m for m in loaded.state.memory if m.blocks.n_blocks][0]
bf = mem.blocks.file
nb = mem.blocks.n_blocks
print("blocks per layer", nb, "unit bytes", bf.unit_bytes, "threads", bf._threads)
g = torch.Generator().manual_seed(1)
from concurrent.futures import ThreadPoolExecutor
from actqkv_llm.persist.bench import drop_page_cache
for threads in (2, 16, 2, 16):
    bf._threads = threads; bf._pool = ThreadPoolExecutor(max_workers=threads)
    tot_b, tot_t = 0, 0.0
    for rep in range(16):   # 16 x 2 layers = 32 layer reads
        for layer in range(len(bf.n_blocks)):
            if not bf.n_blocks[layer]: continue
            blocks = torch.stack([torch.randperm(nb, generator=g)[:368] for _ in range(8)]).sort(-1).values
            heads = torch.arange(8)[:, None].expand(8, 368)
            drop_page_cache(bf.path); b0 = bf.bytes_read; t = time.perf_counter()
            bf.read_units(layer, blocks.reshape(-1), heads.reshape(-1), True, False)
            tot_t += time.perf_counter() - t; tot_b += bf.bytes_read - b0
    print(f"threads {threads}: {tot_b/2**20:.0f} MiB in {tot_t:.2f} s = {tot_b/2**20/tot_t:.0f} MiB/s (cold: page cache dropped before each layer read)")

