"""Session 11: CUDA kernels of one static decode step run eagerly, with and without decode_compile
(8B shape, random weights, 4K document: the step's shapes do not depend on the length), rows 1 and 8:
kernel count and the kernels' time by name (torch.profiler)."""
import torch
from torch.profiler import profile, ProfilerActivity
from torch._dynamo.utils import counters
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
engines = {c: Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_compile=c)
           for c in (False, "auto")}
g = torch.Generator().manual_seed(0)
doc = engines[False].prefill_ids(torch.randint(0, 100000, (4096,), generator=g))
q = torch.randint(0, 100000, (32,), generator=g)
for rows in (1, 8):
    for c, eng in engines.items():
        graph = eng.decode_graph
        with torch.inference_mode():
            sess = [eng._session_for(doc) for _ in range(rows)]
            logits = [s.forward(q, phase="question") for s in sess]
            for _ in range(3):   # capture (and compile) for this number of rows
                logits = graph.step_rows([(s, int(x.argmax())) for s, x in zip(sess, logits)])
            graph.release(); graph.cursor.zero_()
            for _ in range(2):
                graph._forward(rows)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                graph._forward(rows); torch.cuda.synchronize()
        ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(f"== rows {rows} compile={c}: one static step run eagerly: {len(ev)} GPU kernels, "
              f"kernel time {sum(e.device_time for e in ev) / 1000:.2f} ms; compile_layers {graph.compile_layers}", flush=True)
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=90), flush=True)
        del sess, logits
print("dynamo", dict(counters["stats"]), {k: sum(v.values()) for k, v in counters.items() if k in ("graph_break", "recompiles")})
