import sys, torch
sys.path.insert(0, "tests")
from tiny_models import tiny_model
from conftest import *  # noqa
from actqkv_llm import Engine
ids = torch.randint(0, 256, (1700,), generator=torch.Generator().manual_seed(1))
question = torch.randint(0, 256, (5,), generator=torch.Generator().manual_seed(2))
for arch in sys.argv[1:]:
    runs = []
    for batch in (False, True):
        model = tiny_model(arch).to("cpu", torch.bfloat16)
        eng = Engine(model, None, progress=False, cache=False, batch_prefill=batch)
        doc = eng.prefill_ids(ids)
        runs.append(doc.last_logits)
    print(arch, float((runs[1] - runs[0]).norm() / runs[0].norm()))
