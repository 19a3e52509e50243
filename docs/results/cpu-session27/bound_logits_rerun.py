"""bound_logits_parts before (c1f4363, changed_functions.old_parts) and now on a prefill chunk's
queries (512 tokens, SmolLM2's shapes), two bound parts and one, 3 rounds of 50 calls each: the
new version timed first in each pair, or the old with ``old-first`` (bound_logits_rerun.txt,
bound_logits_old_first.txt)."""
import sys
import time

import torch

from changed_functions import old_parts
from actqkv_llm.retrieval.score import bound_logits_parts as new_parts


def timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


torch.manual_seed(0)
parts = [(torch.randn(250, 3, 64), torch.randn(250, 3, 64)), (torch.randn(6, 3, 64), torch.randn(6, 3, 64))]
q = torch.randn(9, 512, 64)
old_first = "old-first" in sys.argv[1:]
for p, label in ((parts, "two parts"), (parts[:1], "one part")):
    for _ in range(3):
        if old_first:
            b = timed(lambda: old_parts(q, p), 50); a = timed(lambda: new_parts(q, p), 50)
        else:
            a = timed(lambda: new_parts(q, p), 50); b = timed(lambda: old_parts(q, p), 50)
        print(label, f"new {a:.0f} old {b:.0f}")
