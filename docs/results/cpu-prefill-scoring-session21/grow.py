"""Per-chunk prefill time as the memory grows: a tiny random Llama on the CPU, offload int8, batched prefill."""
import sys, time, torch, cProfile, pstats
from transformers import AutoModelForCausalLM, LlamaConfig
from actqkv_llm import Engine
torch.manual_seed(0); torch.set_num_threads(2)
n = int(sys.argv[1]); opts = dict(a.split("=") for a in sys.argv[2:])
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=128, vocab_size=1000, max_position_embeddings=8192)
m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
conv = {"true": True, "false": False}
kw = {k: conv.get(v, int(v) if v.isdigit() else v) for k, v in opts.items()}
eng = Engine(m, None, progress=False, cache=False, allow_past_window=True, **kw)
times = []
class Bar:
    def __init__(self, total): self.t = time.perf_counter(); self.done = 0
    def update(self, k):
        now = time.perf_counter(); self.done += k; times.append((self.done, now - self.t)); self.t = now
    def close(self): pass
ids = torch.randint(0, 1000, (n,))
prof = cProfile.Profile(); prof.enable()
t = time.perf_counter(); doc = eng.prefill_ids(ids, progress=lambda total: Bar(total)); t = time.perf_counter() - t
prof.disable()
print(f"prefill {n} tokens: {t:.1f} s")
step = max(1, len(times) // 8)
for d, s in times[::step]: print(f"  at {d:>8} tokens: chunk {s*1000:.0f} ms")
pstats.Stats(prof).sort_stats("cumulative").print_stats(28)
