# twopass = what candidate_mass does now (bit-identical to `now` in one chunk)
import torch, time
torch.manual_seed(0)
exec(open(__file__.replace("rerank_twopass.py", "rerank_variants.py")).read().split("if __name__")[0])
def twopass(q, k, ctx, m, b, sc, budget=1 << 22):
    hkv, R, d = q.shape
    kt = k.transpose(1, 2)
    rows = max(1, budget // (hkv * m * b))
    mass = None
    for a in range(0, R, rows):
        lg = torch.matmul(q[:, a:a + rows], kt).mul_(sc)
        lse = torch.logaddexp(torch.logsumexp(lg, -1, keepdim=True), ctx[:, a:a + rows])
        p = lg.sub_(lse).exp_().view(hkv, lg.shape[1], m, b).sum((1, 3))
        mass = p if mass is None else mass.add_(p)
    return mass
def twopass_b(q, k, ctx, m, b, sc, budget=1 << 22):
    hkv, R, d = q.shape
    kt = k.transpose(1, 2)
    rows = max(1, budget // (hkv * m * b))
    mass = None
    for a in range(0, R, rows):
        lg = torch.matmul(q[:, a:a + rows], kt).mul_(sc)
        mx = lg.amax(-1, keepdim=True)
        lse = torch.logaddexp(mx + (lg - mx).exp_().sum(-1, keepdim=True).log_(), ctx[:, a:a + rows])
        p = lg.sub_(lse).exp_().view(hkv, lg.shape[1], m, b).sum((1, 3))
        mass = p if mass is None else mass.add_(p)
    return mass
for hkv, R, m, b, d, reps in ((2, 7, 496, 32, 64, 200), (2, 224, 368, 32, 64, 10)):
    q = torch.randn(hkv, R, d); k = torch.randn(hkv, m * b, d); ctx = torch.randn(hkv, R, 1) + 3
    a = now(q, k, ctx, m, b, 0.125)
    print("twopass equal to now:", torch.equal(a, twopass(q, k, ctx, m, b, 0.125)), torch.equal(a, twopass_b(q, k, ctx, m, b, 0.125)))
    for f in (now, twopass, twopass_b, onepass, now, twopass, twopass_b, onepass):
        t = time.perf_counter()
        for _ in range(reps): f(q, k, ctx, m, b, 0.125)
        print(hkv, R, m, f.__name__, round((time.perf_counter() - t) / reps * 1e6), "us")
