"""Session 7: are the model's dense parts batch-invariant on this GPU (a row's result the same bit
for bit alone and beside 7 others)? 8B shape, bf16, random weights."""
import torch
from actqkv_llm.bench.speed import build_random_model
net = build_random_model("llama-3.1-8b", "cuda", torch.bfloat16)
layer = net.model.layers[0]
x = torch.randn(8, 1, 4096, device="cuda", dtype=torch.bfloat16)
with torch.inference_mode():
    for name, f in (("q_proj", layer.self_attn.q_proj), ("k_proj", layer.self_attn.k_proj), ("o_proj", layer.self_attn.o_proj),
                    ("mlp", layer.mlp), ("input_norm", layer.input_layernorm), ("lm_head", net.lm_head)):
        inp = x if name != "o_proj" else x
        both = f(inp)
        same = [torch.equal(both[i:i + 1], f(inp[i:i + 1])) for i in range(8)]
        diff = max(float((both[i:i + 1].float() - f(inp[i:i + 1]).float()).abs().max()) for i in range(8))
        print(f"{name}: rows equal alone and in a batch of 8: {sum(same)}/8, max |diff| {diff:.3g}", flush=True)
