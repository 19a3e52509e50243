"""Session 21: the batched prefill's block evidence, PyTorch ops against the Triton passes.
1) the scoring alone at the 8B shape's sizes (32 query heads, 8 KV heads, d 128, 16 execution
   blocks of 256 tokens = one 4K chunk), memory of 4K / 16K / 32K blocks (128K / 512K / 1M tokens);
2) `prefill_ids` on the 8B shape (random weights) at 32K and 128K with prefill_kernel torch / triton,
   then 16 greedy tokens of one question: time and whether the tokens agree.
usage: python pk21.py cuda|smoke"""
import sys, time, torch
from actqkv_llm.retrieval.bound_mass import bound_mass_torch, bound_mass_triton

mode = sys.argv[1]
dev = torch.device("cuda" if mode == "cuda" else "cpu")
dt = torch.bfloat16 if mode == "cuda" else torch.float32
sync = torch.cuda.synchronize if mode == "cuda" else (lambda: None)

def timed(f, reps=3):
    best = None
    for _ in range(reps):
        sync(); t = time.perf_counter(); out = f(); sync(); s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    return out, best

shapes = [(4096,), (16384,), (32768,)] if mode == "cuda" else [(300,)]
h, hkv, n_e, size, d = (32, 8, 16, 256, 128) if mode == "cuda" else (4, 2, 3, 16, 32)
g = torch.Generator(device=dev).manual_seed(0)
if mode == "cuda":  # compile every block-tile variant a 128K prefill meets, so no timing below pays for it
    for i in range(0, 10):
        n = 64 << i
        qq = torch.randn((h, 1, size, d), device=dev, dtype=dt)
        kk_ = torch.randn((n, hkv, d), device=dev, dtype=dt)
        bound_mass_triton(qq, torch.ones((1, size), device=dev), kk_, kk_, torch.tensor([n], device=dev), 0.1)
    sync()
for (n,) in shapes:
    q = torch.randn((h, n_e, size, d), generator=g, device=dev, dtype=dt)
    k = torch.randn((n, hkv, 4, d), generator=g, device=dev, dtype=dt)
    lo, hi = k.amin(2), k.amax(2)
    w = torch.rand((n_e, size), generator=g, device=dev)
    avail = torch.arange(n - n_e + 1, n + 1, device=dev)
    a, ta = timed(lambda: bound_mass_torch(q, w, [(lo, hi)], avail, hkv, d ** -0.5, dt))
    b, tb = timed(lambda: bound_mass_triton(q, w, lo, hi, avail, d ** -0.5))
    err = float((a - b).norm() / a.norm())
    kk = 64 if n > 64 else 4
    same = float((a.topk(kk, -1).indices.sort(-1).values == b.topk(kk, -1).indices.sort(-1).values).float().mean())
    print(f"scoring, memory {n} blocks: torch {ta*1e3:.1f} ms, triton {tb*1e3:.1f} ms ({ta/tb:.1f}x); "
          f"relative difference {err:.2e}; top-{kk} positions equal {same:.3f}", flush=True)

from actqkv_llm import Engine
if mode == "cuda":
    from actqkv_llm.bench.speed import build_random_model
    net = build_random_model("llama-3.1-8b", dev, torch.bfloat16)
    lengths, vocab, extra = (32768, 131072), 128000, dict(decode_graph=False)
else:
    sys.path.insert(0, "tests")
    from tiny_models import tiny_model
    net = tiny_model("llama")
    lengths, vocab = (900,), 256
    extra = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96, batch_prefill=True)
base = Engine(net, None, progress=False, cache=False, allow_past_window=True, **extra)
question = torch.randint(0, vocab, (32,), generator=torch.Generator().manual_seed(2))
for L in lengths:
    ids = torch.randint(0, vocab, (L,), generator=torch.Generator().manual_seed(1))
    toks = {}
    for kern in ("torch", "triton"):
        eng = base.with_method("actqkv", prefill_kernel=kern)
        doc, t = timed(lambda: eng.prefill_ids(ids), reps=1)
        out = eng.generate_ids(doc, question, max_new_tokens=16)
        same = toks.setdefault(kern, out) == out
        print(f"{L} tokens, prefill_kernel={kern}: prefill {t:.2f} s ({L/t:,.0f} tok/s); tokens {out[:16]}; "
              f"same as this kernel's first run: {same}", flush=True)
        del doc
    print(f"{L}: torch and triton give the same 16 tokens: {toks['torch'] == toks['triton']}", flush=True)
