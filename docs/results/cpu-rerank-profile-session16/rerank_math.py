import torch, time
torch.manual_seed(0)
hkv, rows, m, b, d = 2, 7, 736, 32, 64   # Qwen2.5-0.5B: 14 heads / 2 KV heads, one decode token; 16x46 candidates
q = torch.randn(hkv, rows, d); k = torch.randn(hkv, m * b, d); ctx = torch.randn(hkv, rows, 1) + 3
def now():
    logits = torch.matmul(q, k.transpose(1, 2)) * 0.125
    lse = torch.logaddexp(torch.logsumexp(logits, -1, keepdim=True), ctx)
    return torch.exp(logits - lse).reshape(hkv, -1, m, b).sum((1, 3))
def one_pass():
    logits = torch.matmul(q, k.transpose(1, 2)) * 0.125
    mx = logits.amax(-1, keepdim=True)
    e = torch.exp(logits - mx)
    per_block = e.view(hkv, rows, m, b).sum(3)                       # [Hkv, rows, m]
    lse = torch.logaddexp(mx + per_block.sum(-1, keepdim=True).log(), ctx)
    return (per_block * torch.exp(mx - lse)).sum(1)
a, c = now(), one_pass()
print("max rel diff", float(((a - c).abs() / a.abs().clamp_min(1e-30)).max()))
for f in (now, one_pass, now, one_pass):
    t = time.perf_counter()
    for _ in range(200): f()
    print(f.__name__, round((time.perf_counter() - t) / 200 * 1e6), "us per layer-step")
def mm_only():
    return torch.matmul(q, k.transpose(1, 2)) * 0.125
L = mm_only()
def exp_only():
    return torch.exp(L - 1.0)
def lse_only():
    return torch.logsumexp(L, -1, keepdim=True)
for f in (mm_only, exp_only, lse_only, mm_only, exp_only, lse_only):
    t = time.perf_counter()
    for _ in range(200): f()
    print(f.__name__, round((time.perf_counter() - t) / 200 * 1e6), "us")
