import cProfile, io, pstats, sys, tempfile, time, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from actqkv_llm import Engine
from actqkv_llm.persist import load_document, state as state_mod
from actqkv_llm.persist.bench import bytes_read_from_disk, drop_page_cache
n = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=32, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=128, vocab_size=1000, max_position_embeddings=131072)
net = LlamaForCausalLM(cfg).eval()
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
g = torch.Generator().manual_seed(0)
t = time.perf_counter(); doc = eng.prefill_ids(torch.randint(0, 1000, (n,), generator=g)); print("prefill", time.perf_counter() - t)
q = torch.randint(0, 1000, (32,), generator=g)
real = state_mod.bounds_to_keep
state_mod.bounds_to_keep = lambda d: (("exact" if d.n_tokens + 1 <= d.engine.native_window else "fixed"))
root = Path(tempfile.mkdtemp())
p = doc.save(root / "v4"); state_mod.bounds_to_keep = real
for f in p.iterdir(): drop_page_cache(f)
loaded = load_document(eng, p)
pr = cProfile.Profile(); pr.enable(); t = time.perf_counter()
out = eng.generate_ids(loaded, q, max_new_tokens=1)
dt = time.perf_counter() - t; pr.disable()
print(f"first token {out} {dt:.2f} s read {bytes_read_from_disk(loaded)/2**20:.1f} MiB")
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue())
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(30); print(s.getvalue())
