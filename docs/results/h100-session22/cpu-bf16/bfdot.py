import torch, triton, triton.language as tl
@triton.jit
def k(A, B, C, N: tl.constexpr):
    r = tl.arange(0, N)
    a = tl.load(A + r[:, None] * N + r[None, :])
    b = tl.load(B + r[:, None] * N + r[None, :])
    c = tl.dot(a, tl.trans(b))
    tl.store(C + r[:, None] * N + r[None, :], c)
    
for dt in (torch.float32, torch.bfloat16):
    a = torch.randn(16, 16).to(dt); b = torch.randn(16, 16).to(dt); c = torch.empty(16, 16)
    k[(1,)](a, b, c, N=16)
    ref = a.float() @ b.float().T
    print(dt, float((c - ref).norm() / ref.norm()))
