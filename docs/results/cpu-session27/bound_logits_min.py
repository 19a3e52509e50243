"""bound_logits_parts before (c1f4363) and now on a prefill chunk's queries (512 tokens, SmolLM2's
shapes), 40 rounds alternating which goes first, 10 calls a round: the minimum and the median per
call (the minimum is the least disturbed by the machine's neighbours)."""
import statistics, time, torch
from changed_functions import old_parts
from actqkv_llm.retrieval.score import bound_logits_parts as new_parts


torch.manual_seed(0)
two = [(torch.randn(250, 3, 64), torch.randn(250, 3, 64)), (torch.randn(6, 3, 64), torch.randn(6, 3, 64))]
q = torch.randn(9, 512, 64)
for label, p in (("two parts", two), ("one part", two[:1])):
    got = {"old": [], "new": []}
    for r in range(40):
        order = (("old", old_parts), ("new", new_parts)) if r % 2 else (("new", new_parts), ("old", old_parts))
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(10):
                fn(q, p)
            got[name].append((time.perf_counter() - t0) / 10 * 1e6)
    print(label, {k: f"min {min(v):.0f} us, median {statistics.median(v):.0f} us" for k, v in got.items()})
