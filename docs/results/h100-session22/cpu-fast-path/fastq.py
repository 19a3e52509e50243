"""The new GPU test's body on the CPU: batched prefill with the interpreted Triton passes and the
static decode step (eager on the CPU) against the reference path, float32, the quality bench's samples."""
import sys, time, torch
sys.path.insert(0, '/work/main/tests')
from tiny_models import tiny_model, byte_tokenizer
from actqkv_llm import Engine
from actqkv_llm.bench import tasks as T
from actqkv_llm.bench.quality import _answer
dev = sys.argv[1]
tok = byte_tokenizer()
small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
for arch in ("llama", "qwen2"):
    model = tiny_model(arch).to(dev)
    ref = Engine(model, tok, progress=False, cache=False, allow_past_window=True, batch_prefill=False,
                 prefill_kernel="torch", decode_graph=False, **small)
    fast_opts = dict(batch_prefill=True, prefill_kernel="triton", decode_graph=True) if dev == "cpu" else {}
    fast = Engine(model, tok, progress=False, cache=False, allow_past_window=True, **fast_opts, **small)
    print(arch, "graph", fast.decode_graph is not None, "kernel", fast.method.scorer.mass_kernel.choice)
    for task in ("passkey", "niah_single", "niah_multikey"):
        for depth in (0.5,):
            s = T.make_sample(task, 1500, depth, T.byte_counter, seed=3)
            t = time.time()
            a, b = (_answer(e, "actqkv", s, 12) for e in (ref, fast))
            print(arch, task, depth, s.n_tokens, repr(a["output"][:30]), a["output"] == b["output"], a["error"], b["error"], f"{time.time()-t:.1f}s", flush=True)
    print("replays/steps", getattr(fast.decode_graph, "replays", None), getattr(fast.decode_graph, "rescore_steps", None))
