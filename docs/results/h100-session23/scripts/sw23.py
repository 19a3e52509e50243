"""Session 23: a prefill chunk's block scoring alone (8B shape: 32 query heads, 8 KV heads, d 128,
16 and 64 execution blocks of 256 tokens, bf16): the Triton passes before (row pass bounded by a
power-of-two constant, a001de3, .gpu/oldk/) and after (a while loop over the visible blocks) and
PyTorch ops; memory of 64 to 16K blocks, each warmed at that size first; CUDA events, median of 20."""
import sys, time, torch
sys.path.insert(0, ".gpu/oldk")
import old_bound_mass as old
from actqkv_llm.retrieval.bound_mass import bound_mass_torch, bound_mass_triton

dev, dt = torch.device("cuda"), torch.bfloat16
h, hkv, size, d = 32, 8, 256, 128
g = torch.Generator(device=dev).manual_seed(0)

def med(f, reps=20):
    f(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]

print("exec blocks | memory blocks | torch ms | triton before ms | triton now ms | now/before | max |now-before|")
for n_e in (16, 64):
    for n in (64, 256, 1024, 4096, 16384):
        q = torch.randn((h, n_e, size, d), generator=g, device=dev, dtype=dt)
        k = torch.randn((n, hkv, 4, d), generator=g, device=dev, dtype=dt)
        lo, hi = k.amin(2), k.amax(2)
        w = torch.rand((n_e, size), generator=g, device=dev)
        avail = torch.arange(n - n_e + 1, n + 1, device=dev).clamp(min=1)
        ta = med(lambda: bound_mass_torch(q, w, [(lo, hi)], avail, hkv, d ** -0.5, dt)) if n * n_e <= 16384 * 16 else float("nan")
        tb = med(lambda: old.bound_mass_triton(q, w, lo, hi, avail, d ** -0.5))
        tc = med(lambda: bound_mass_triton(q, w, lo, hi, avail, d ** -0.5))
        diff = (old.bound_mass_triton(q, w, lo, hi, avail, d ** -0.5) - bound_mass_triton(q, w, lo, hi, avail, d ** -0.5)).abs().max()
        print(f"{n_e} | {n} | {ta:.3f} | {tb:.3f} | {tc:.3f} | {tc / tb:.3f} | {float(diff):.2e}", flush=True)
