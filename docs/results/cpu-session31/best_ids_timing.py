"""Thirty-first session: the candidates' choice on the CPU's reference path, topk (before) against
best_ids (a stable sort, after), on the shapes a decode scoring and a question's execution block
give: rows x blocks, the rerank's candidates (16 x avg_blocks). Median of 200 calls, one thread."""
import statistics as st
import time

import torch

from actqkv_llm.retrieval.methods import best_ids

torch.set_num_threads(1)
for rows, n, m in [(3, 256, 112), (3, 1000, 112), (2, 1000, 256), (8, 1000, 736), (8, 4096, 736)]:
    ev = torch.rand((rows, n), generator=torch.Generator().manual_seed(0))
    for name, fn in [("topk", lambda: ev.topk(m, -1).indices.sort(-1).values), ("best_ids", lambda: best_ids(ev, m))]:
        for _ in range(10):
            fn()
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            fn()
            times.append(1e6 * (time.perf_counter() - t0))
        print(f"rows {rows} blocks {n} candidates {m}: {name:8s} {st.median(times):7.1f} us", flush=True)
