"""The bound logits before this session (two products and a sum) and after (one product added inside baddbmm),
one process, the CPU reference path's float32 (SmolLM2-135M's heads: 9 query, 3 KV, d 64): the largest difference and
the time of each, alternating. python docs/results/cpu-session28/bound_logits_old_new.py"""
import time, torch
from actqkv_llm.retrieval.score import _signed_parts
def old(q, parts, dtype):
    h, t, _ = q.shape
    pos, neg = _signed_parts(q, parts[0][0].shape[1], dtype)
    u = [torch.matmul(pos, hi.to(dtype).permute(1, 2, 0)) + torch.matmul(neg, lo.to(dtype).permute(1, 2, 0)) for lo, hi in parts]
    return (u[0] if len(u) == 1 else torch.cat(u, -1)).float().reshape(h, t, -1)
from actqkv_llm.retrieval.score import bound_logits_parts as new
torch.manual_seed(0)
for (h, hkv, d, t, n) in [(9, 3, 64, 2048, 256), (9, 3, 64, 256, 250), (9, 3, 64, 1, 256), (9, 3, 64, 4096, 200)]:
    q = torch.randn(h, t, d)
    lo = torch.randn(n, hkv, d).bfloat16(); hi = (lo.float() + 1).bfloat16()
    parts = [(lo, hi)]
    a, b = old(q, parts, torch.float32), new(q, parts, torch.float32)
    print("max diff", float((a - b).abs().max()))
    for name, fn in [("old", old), ("new", new), ("old", old), ("new", new)]:
        reps = max(3, int(2e7 / (h * t * n * d)))
        t0 = time.perf_counter()
        for _ in range(reps): fn(q, parts, torch.float32)
        print(f"  {name} h={h} t={t} n={n}: {1e3 * (time.perf_counter() - t0) / reps:.3f} ms")
