"""Fast paths on a GPU checked against the reference path (skipped without CUDA; run on the
GPU machine: ``python -m pytest -m gpu tests/test_gpu.py``)."""

import pytest
import torch

from tiny_models import tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_prefill_on_the_gpu_matches_the_reference_loop(tokenizer, arch, dtype):
    from actqkv_llm import Engine

    ids = torch.randint(0, 256, (1700,), generator=torch.Generator().manual_seed(1))
    question = torch.randint(0, 256, (5,), generator=torch.Generator().manual_seed(2))
    runs = []
    for batch in (False, True):
        model = tiny_model(arch).to("cuda", dtype)
        eng = Engine(model, tokenizer, progress=False, cache=False, batch_prefill=batch)
        doc = eng.prefill_ids(ids)
        runs.append((doc.last_logits, eng.generate_ids(doc, question, max_new_tokens=8)))
    (ref_logits, ref_tokens), (got_logits, got_tokens) = runs
    if dtype == torch.float32:
        torch.testing.assert_close(got_logits, ref_logits, atol=1e-4, rtol=1e-4)
        assert got_tokens == ref_tokens
    else:  # bf16 products in the batch, float32 in the loop: the same function within bf16 rounding
        # (a random model's logits are nearly flat, so its greedy tokens are no test of bf16 paths)
        assert float((got_logits - ref_logits).norm() / ref_logits.norm()) < 2e-2
