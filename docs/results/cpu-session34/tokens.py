import os, torch
from actqkv_llm import Engine
from actqkv_llm.bench.speed import build_random_model, ARCHS
ARCHS["tiny"] = dict(ARCHS["llama-3.1-8b"], hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                     num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)
torch.manual_seed(0)
net = build_random_model("tiny", "cpu", torch.bfloat16)
eng = Engine(net, None, progress=False, cache=False, allow_past_window=True, decode_graph=True,
             prefill_kernel=os.environ.get("PK", "auto"), decode_kernel=os.environ.get("DK", "auto"))
g = torch.Generator().manual_seed(0)
doc = eng.prefill_ids(torch.randint(0, 1000, (3000,), generator=g))
qs = [torch.randint(0, 1000, (32,), generator=g).tolist() for _ in range(8)]
one = [eng.generate_ids(doc, q, max_new_tokens=40) for q in qs]
many = eng.generate_ids_many(doc, qs, max_new_tokens=40)
same = sum(a == b for x, y in zip(one, many) for a, b in zip(x, y))
print("same", same, "of", sum(map(len, one)), [sum(a == b for a, b in zip(x, y)) for x, y in zip(one, many)])
