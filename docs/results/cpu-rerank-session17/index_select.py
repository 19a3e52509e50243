# The picked keys' gather: advanced indexing (idx) against one index_select (isel), and the rerank's product three ways; 2-core CPU, OMP_NUM_THREADS=2
import torch, time
torch.manual_seed(0)
for hkv, g, m, b, d in ((3, 3, 240, 32, 64), (2, 7, 736, 32, 64), (2, 7, 368, 32, 64)):
    q = torch.randn(hkv, g, d); k = torch.randn(hkv, m * b, d)
    def a(): return torch.matmul(q, k.transpose(1, 2))
    def c(): return torch.matmul(k, q.transpose(1, 2)).transpose(1, 2)
    def e(): return torch.einsum("hgd,hnd->hgn", q, k)
    kb = k.view(hkv, m, b, d); top = torch.randperm(m)[:46].sort().values
    def idx(): return kb[:, top].reshape(hkv, -1, d)
    def isel(): return kb.index_select(1, top).reshape(hkv, -1, d)
    print(hkv, g, m, "same", torch.allclose(a(), c(), atol=1e-4), torch.equal(idx(), isel()))
    for f in (a, c, e, a, c, e, idx, isel, idx, isel):
        t = time.perf_counter()
        for _ in range(300): f()
        print(" ", f.__name__, round((time.perf_counter() - t) / 300 * 1e6), "us")
