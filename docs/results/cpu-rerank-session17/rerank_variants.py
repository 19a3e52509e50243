# Variants of the rerank's mass on random tensors of Qwen2.5-0.5B's and SmolLM2's shapes (2-core CPU, OMP_NUM_THREADS=2):
# now = the code before session 17, chunked/onepass = in place in chunks of rows (onepass: one exponential per logit).
import torch, time
torch.manual_seed(0)
def now(q, k, ctx, m, b, sc):
    hkv = q.shape[0]
    logits = torch.matmul(q, k.transpose(1, 2)) * sc
    lse = torch.logaddexp(torch.logsumexp(logits, -1, keepdim=True), ctx)
    return torch.exp(logits - lse).reshape(hkv, -1, m, b).sum((1, 3))
def chunked(q, k, ctx, m, b, sc, budget=1 << 20):
    hkv, R, d = q.shape
    qs = q * sc; kt = k.transpose(1, 2)
    rows = max(1, budget // (hkv * m * b))
    mass = None
    for a in range(0, R, rows):
        lg = torch.matmul(qs[:, a:a + rows], kt)
        lse = torch.logaddexp(torch.logsumexp(lg, -1, keepdim=True), ctx[:, a:a + rows])
        p = lg.sub_(lse).exp_().sum(1)
        mass = p if mass is None else mass.add_(p)
    return mass.view(hkv, m, b).sum(-1)
def onepass(q, k, ctx, m, b, sc, budget=1 << 20):
    hkv, R, d = q.shape
    qs = q * sc; kt = k.transpose(1, 2)
    rows = max(1, budget // (hkv * m * b))
    mass = None
    for a in range(0, R, rows):
        lg = torch.matmul(qs[:, a:a + rows], kt)
        mx = lg.amax(-1, keepdim=True)
        e = lg.sub_(mx).exp_()
        lse = torch.logaddexp(mx + e.sum(-1, keepdim=True).log(), ctx[:, a:a + rows])
        w = torch.exp(mx - lse).transpose(1, 2)            # [hkv, 1, r]
        p = torch.matmul(w, e)[:, 0]
        mass = p if mass is None else mass.add_(p)
    return mass.view(hkv, m, b).sum(-1)
if __name__ == "__main__":
    for hkv, R, m, b, d, reps in ((2, 7, 496, 32, 64, 200), (2, 224, 368, 32, 64, 10), (3, 96, 239, 32, 64, 20)):
        q = torch.randn(hkv, R, d); k = torch.randn(hkv, m * b, d); ctx = torch.randn(hkv, R, 1) + 3
        a = now(q, k, ctx, m, b, 0.125)
        for f in (chunked, onepass):
            c = f(q, k, ctx, m, b, 0.125)
            print(f.__name__, "rel diff", float(((a - c).abs() / a.abs()).max()), "same top-46", torch.equal(a.topk(46).indices.sort().values, c.topk(46).indices.sort().values))
        for f in (now, chunked, onepass, now, chunked, onepass):
            t = time.perf_counter()
            for _ in range(reps): f(q, k, ctx, m, b, 0.125)
            print(hkv, R, m, f.__name__, round((time.perf_counter() - t) / reps * 1e6), "us")
    print("budgets")
    for hkv, R, m, b, d, reps in ((2, 224, 368, 32, 64, 10), (2, 7, 496, 32, 64, 200)):
        q = torch.randn(hkv, R, d); k = torch.randn(hkv, m * b, d); ctx = torch.randn(hkv, R, 1) + 3
        for bud in (1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 22, 1 << 26, 1 << 18, 1 << 20, 1 << 20, 1 << 22, 1 << 20, 1 << 22, 1 << 21, 1 << 21):
            t = time.perf_counter()
            for _ in range(reps): onepass(q, k, ctx, m, b, 0.125, bud)
            print(R, bud, round((time.perf_counter() - t) / reps * 1e6), "us")
