"""The CPU reference path's functions this session changed, old and new in one process, alternating
(the machine's drift cancels): the bound logits over two parts (a decode step's query, one token;
a prefill chunk's queries, 512 tokens) and a block leaving the window into a store. SmolLM2-135M's
shapes (9 query / 3 KV heads, d 64), 8K tokens in 32-token blocks. Prints microseconds per call."""
import time
import torch
from actqkv_llm.retrieval.score import bound_logits_parts as new_parts
from actqkv_llm.memory.blocks import GrowableBlocks


def old_bound_logits(q, lo, hi, dtype=torch.float32):          # c1f4363
    h, t, d = q.shape
    hkv = lo.shape[1]
    qg = q.to(dtype).reshape(hkv, (h // hkv) * t, d)
    pos, neg = qg.clamp(min=0), qg.clamp(max=0)
    u = torch.matmul(pos, hi.to(dtype).permute(1, 2, 0)) + torch.matmul(neg, lo.to(dtype).permute(1, 2, 0))
    return u.float().reshape(h, t, -1)


def old_parts(q, parts, dtype=torch.float32):                   # c1f4363
    u = [old_bound_logits(q, lo, hi, dtype) for lo, hi in parts]
    return u[0] if len(u) == 1 else torch.cat(u, -1)


def timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def main():
    torch.manual_seed(0)
    parts = [(torch.randn(250, 3, 64), torch.randn(250, 3, 64)), (torch.randn(6, 3, 64), torch.randn(6, 3, 64))]
    for t, reps in ((1, 3000), (512, 100)):
        q = torch.randn(9, t, 64)
        assert torch.equal(old_parts(q, parts), new_parts(q, parts))
        res = {"old": [], "new": []}
        for _ in range(5):
            res["old"].append(timed(lambda: old_parts(q, parts), reps))
            res["new"].append(timed(lambda: new_parts(q, parts), reps))
        print(f"bound logits, {t} query tokens: old {sorted(res['old'])} us, new {sorted(res['new'])} us")

    local = torch.randn(3, 512, 64)
    res = {"old": [], "new": []}
    for _ in range(5):
        for name in ("old", "new"):
            store = GrowableBlocks(3, 32, 64, torch.float32, "cpu")
            store.reserve(2000)

            def leave():
                k = local[:, :32].reshape(3, 1, 32, 64).transpose(0, 1)
                v = local[:, :32].reshape(3, 1, 32, 64).transpose(0, 1)
                if name == "old":
                    store.append(k.contiguous(), v.contiguous())
                else:
                    store.append(k, v)
            res[name].append(timed(leave, 1000))
    print(f"a block into the store: old {sorted(res['old'])} us, new {sorted(res['new'])} us")


if __name__ == "__main__":
    main()
