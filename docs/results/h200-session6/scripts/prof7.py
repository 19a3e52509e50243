"""Session 6: where a prefill spends GPU time (8B shape), ops grouped by input shape."""
import sys, time, torch
from torch.profiler import profile, ProfilerActivity
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True)
gen = torch.Generator().manual_seed(0)
for n in map(int, sys.argv[1:]):
    reps = 2 if n <= 32768 else 1
    ids = torch.randint(0, 100000, (n,), generator=gen)
    for i in range(reps):
        torch.cuda.synchronize(); t = time.perf_counter(); doc = eng.prefill_ids(ids); torch.cuda.synchronize()
        print(f"prefill {n}: {time.perf_counter() - t:.3f} s"); del doc
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        doc = eng.prefill_ids(ids); torch.cuda.synchronize()
    del doc
    ka = prof.key_averages(group_by_input_shape=True)
    kern = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    print(f"PREFILL {n}: kernels {kern/1e6:.3f} s")
    print(ka.table(sort_by="self_cuda_time_total", row_limit=35, max_name_column_width=40, max_shapes_column_width=90))
