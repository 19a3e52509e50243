"""Per-call cost of the query rotation's dispatch on the CPU (twenty-sixth session): rope.rotate
against Rotation("auto") (which on the CPU always runs rope.rotate), for one execution block's
queries of SmolLM2-135M (9 heads x 256 tokens x 64), 2,000 calls each after 50 untimed, twice.
usage: OMP_NUM_THREADS=2 python docs/results/cpu-session26/rotation_dispatch.py   (from the repository's root)"""
import sys
import time

import torch

sys.path.insert(0, "tests")
from tiny_models import rope_tables  # noqa: E402

from actqkv_llm.attention.rope import rotate  # noqa: E402
from actqkv_llm.attention.rotation import Rotation  # noqa: E402

cos, sin = rope_tables(9000, 64, "cpu")
x = torch.randn(9, 256, 64)
rot = Rotation("auto")
at = slice(4000, 4256)
for f, name in ((lambda: rotate(x, cos[at], sin[at]), "rope.rotate"),
                (lambda: rot(x, cos[at], sin[at]), "Rotation('auto') on the CPU")) * 2:
    for _ in range(50):
        f()
    t, n = time.perf_counter(), 2000
    for _ in range(n):
        f()
    print(f"{name}: {1e6 * (time.perf_counter() - t) / n:.1f} us per call")
