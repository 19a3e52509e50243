import torch
from actqkv_llm.retrieval.bound_mass import bound_mass_torch, bound_mass_triton
g = torch.Generator().manual_seed(0)
for d, h, hkv in [(16, 4, 2), (32, 4, 2)]:
    n_e, size, n = 3, 16, 50
    q = torch.randn((h, n_e, size, d), generator=g)
    k = torch.randn((n, hkv, 4, d), generator=g)
    lo, hi = k.amin(2), k.amax(2)
    w = torch.rand((n_e, size), generator=g)
    avail = torch.tensor([n, 30, 7])
    ref = bound_mass_torch(q, w, [(lo, hi)], avail, hkv, d ** -0.5, torch.float32).nan_to_num(0)
    t16 = bound_mass_torch(q, w, [(lo.bfloat16(), hi.bfloat16())], avail, hkv, d ** -0.5, torch.bfloat16).nan_to_num(0)
    k32 = bound_mass_triton(q, w, lo, hi, avail, d ** -0.5)
    k16 = bound_mass_triton(q, w, lo.bfloat16(), hi.bfloat16(), avail, d ** -0.5)
    r = lambda a: float((a - ref).norm() / ref.norm())
    print(d, "torch bf16 %.2e  triton f32 %.2e  triton bf16 %.2e" % (r(t16), r(k32), r(k16)))
