import sys, torch
sys.path.insert(0, '/work/main/tests')
from tiny_models import tiny_model
from actqkv_llm import Engine
arch = sys.argv[1]
ids = torch.randint(0, 256, (1700,), generator=torch.Generator().manual_seed(1))
res = {}
for name, dt, batch, kern in [("loop32", torch.float32, False, "torch"), ("loop16", torch.bfloat16, False, "torch"),
                              ("batch_torch", torch.bfloat16, True, "torch"), ("batch_triton", torch.bfloat16, True, "triton")]:
    model = tiny_model(arch).to("cpu", dt)
    eng = Engine(model, None, progress=False, cache=False, batch_prefill=batch, prefill_kernel=kern)
    doc = eng.prefill_ids(ids)
    res[name] = doc.last_logits.float()
ref = res["loop32"]
for k, v in res.items():
    print(arch, k, "rel vs loop32 %.4f" % float((v - ref).norm() / ref.norm()), "vs loop16 %.4f" % float((v - res["loop16"]).norm() / res["loop16"].norm()))
