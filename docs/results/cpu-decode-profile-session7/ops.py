import time, torch, collections
from transformers import AutoModelForCausalLM, LlamaConfig
from actqkv_llm import Engine
from torch.profiler import profile, ProfilerActivity
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=32, num_attention_heads=16,
                  num_key_value_heads=4, head_dim=16, vocab_size=1000, max_position_embeddings=131072)
net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").eval()
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=False)
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 1000, (8192,), generator=g))
s = eng._session_for(doc)
logits = s.forward(torch.randint(0, 1000, (24,), generator=g), phase="question")
for step in range(40):
    tok = int(logits.argmax())
    rescore = all(st.candidates is None or st.candidates.uses_left < 1 for st in s.retrieval)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter(); logits = s.forward(torch.tensor([tok]), phase="decode"); dt = time.perf_counter() - t
    ev = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None or (e.name.startswith("aten::") and e.cpu_parent is not None and not e.cpu_parent.name.startswith("aten::"))]
    c = collections.Counter(e.name for e in ev)
    if step in (0, 31, 32) or rescore:
        print(step, "rescore" if rescore else "rerank", f"{dt*1e3:.0f} ms", "top-level aten ops", sum(c.values()), "per layer", sum(c.values()) / 32)
        print(c.most_common(40))
