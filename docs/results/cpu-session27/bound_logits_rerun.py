import time, torch, sys
sys.path.insert(0, "docs/results/cpu-session27")
from actqkv_llm.retrieval.score import bound_logits_parts as new_parts
exec(open("docs/results/cpu-session27/changed_functions.py").read().split("def timed")[0].split("from actqkv_llm.memory.blocks import GrowableBlocks")[1])
def timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps): fn()
    return (time.perf_counter() - t0) / reps * 1e6
torch.manual_seed(0)
parts = [(torch.randn(250, 3, 64), torch.randn(250, 3, 64)), (torch.randn(6, 3, 64), torch.randn(6, 3, 64))]
one = [parts[0]]
q = torch.randn(9, 512, 64)
for p, label in ((parts, "two parts"), (one, "one part")):
    for _ in range(3):
        a = timed(lambda: new_parts(q, p), 50); b = timed(lambda: old_parts(q, p), 50)
        print(label, f"new {a:.0f} old {b:.0f}")
