"""Diagnose test_rows_decoded_together_in_one_graph_match_the_reference[auto-fp32]: per step, per row max |diff|.
env: PAD (decode_pad_rows), KERNEL (auto/torch), EAGER=1 (static step without graphs), NR (rows)"""
import os, sys, torch
sys.path.insert(0, os.environ["TESTS"])
from tiny_models import byte_tokenizer, tiny_model
from actqkv_llm import Engine
tok = byte_tokenizer()
torch.manual_seed(0)
small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
extra = {}
if "COMPILE" in os.environ:
    extra["decode_compile"] = os.environ["COMPILE"] == "1"
if "PAD" in os.environ:
    extra["decode_pad_rows"] = int(os.environ["PAD"])
model = tiny_model("llama").to(os.environ.get("DEV", "cuda"), torch.float32)
ref = Engine(model, tok, progress=False, cache=False, allow_past_window=True, decode_graph=False, **small)
fast = Engine(model, tok, progress=False, cache=False, allow_past_window=True, decode_graph=True, decode_kernel=os.environ.get("KERNEL", "auto"), **small, **extra)
doc = ref.prefill(" ".join(f"word{i} is {i * 7 % 13}." for i in range(120)))
questions = ([5, 6, 7, 8], [9, 8], [11, 12, 13])[:int(os.environ.get("NR", 3))]
ref_s = [ref._session_for(doc) for _ in questions]
fast_s = [fast._session_for(doc) for _ in questions]
ref_l = [s.forward(torch.tensor(q), phase="question") for s, q in zip(ref_s, questions)]
for s, q in zip(fast_s, questions):
    s.forward(torch.tensor(q), phase="question")
graph = fast.decode_graph
if os.environ.get("EAGER"):
    graph.use_graph = False
bad = []
for step in range(40):
    toks = [int(x.argmax()) for x in ref_l]
    ref_l = [ref._decode_step(s, t) for s, t in zip(ref_s, toks)]
    rs0 = graph.rescore_steps
    out = graph.step_rows(list(zip(fast_s, toks)))
    nones = [o is None for o in out]
    out = [s.forward(torch.tensor([t]), phase="decode") if o is None else o for o, s, t in zip(out, fast_s, toks)]
    d = [float((a - b).abs().max()) for a, b in zip(out, ref_l)]
    flag = "rescore" if graph.rescore_steps > rs0 else ""
    if max(d) > 1e-3 or flag or any(nones):
        print(f"step {step:2d} {flag:7s} eager={nones} diffs " + " ".join(f"{x:.2e}" for x in d))
    if max(d) > 1e-3:
        bad.append(step)
print(f"### {os.environ.get('TAG')} bad steps {bad} replays {graph.replays} rescore_steps {graph.rescore_steps} graphs {list(graph.graphs)} segs {list(graph.segments)}")
