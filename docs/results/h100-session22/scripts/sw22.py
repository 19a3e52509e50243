"""Session 22: a prefill chunk's block scoring alone (8B shape: 32 query heads, 8 KV heads, d 128,
16 execution blocks of 256 tokens, bf16), PyTorch ops against the Triton passes, memory of 64 to
8K blocks, each kernel warmed at that size first (no compile timed); CUDA events, median of 20."""
import torch
from actqkv_llm.retrieval.bound_mass import bound_mass_torch, bound_mass_triton

dev, dt = torch.device("cuda"), torch.bfloat16
h, hkv, n_e, size, d = 32, 8, 16, 256, 128
g = torch.Generator(device=dev).manual_seed(0)

def med(f, reps=20):
    f(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]

print("memory blocks | torch ms | triton ms | torch/triton")
for n in (64, 128, 256, 512, 1024, 2048, 4096, 8192):
    q = torch.randn((h, n_e, size, d), generator=g, device=dev, dtype=dt)
    k = torch.randn((n, hkv, 4, d), generator=g, device=dev, dtype=dt)
    lo, hi = k.amin(2), k.amax(2)
    w = torch.rand((n_e, size), generator=g, device=dev)
    avail = torch.arange(n - n_e + 1, n + 1, device=dev)
    ta = med(lambda: bound_mass_torch(q, w, [(lo, hi)], avail, hkv, d ** -0.5, dt))
    tb = med(lambda: bound_mass_triton(q, w, lo, hi, avail, d ** -0.5))
    print(f"{n} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f}", flush=True)
