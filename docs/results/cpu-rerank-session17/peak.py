# peak host memory of one rerank over a long question: python peak.py old|new ROWS
import sys, resource, torch, time
exec(open(__file__.replace("peak.py", "rerank_variants.py")).read().split("if __name__")[0])   # now()
from actqkv_llm.retrieval.methods import candidate_mass
hkv, m, b, d = 2, 368, 32, 64
R = int(sys.argv[2])
q = torch.randn(hkv, R, d); k = torch.randn(hkv, m * b, d); ctx = torch.randn(hkv, R, 1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
mass = now(q, k, ctx, m, b, 0.125) if sys.argv[1] == "old" else candidate_mass(q, k, 0.125, ctx, b)
dt = time.perf_counter() - t
print(sys.argv[1], R, "rows: peak rise MiB", round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024), "time s", round(dt, 3))
