"""When the whole input fits in the local window, every method equals the model's own attention."""

import pytest
import torch

from tiny_models import ARCHITECTURES, tiny_model

from actqkv_llm import Engine


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("method", ["actqkv", "actqkv-paper", "quest", "infllm", "acre", "full"])
def test_logits_and_greedy_tokens_match_hf(arch, method, tokenizer):
    model = tiny_model(arch)
    ids = torch.randint(0, 250, (50,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the model's own SDPA attention: the independent reference
        ref_logits = model(ids[None]).logits[0, -1].float()
        ref_tokens = model.generate(ids[None], attention_mask=torch.ones(1, 50, dtype=torch.long),
                                    max_new_tokens=8, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)[0, 50:].tolist()
    eng = Engine(model, tokenizer, method=method, progress=False, cache=False)
    assert eng.config.n_local >= 50 + 8
    doc = eng.prefill_ids(ids)
    torch.testing.assert_close(doc.last_logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert eng.generate_ids(doc, [], max_new_tokens=8) == ref_tokens


def test_sliding_layers_keep_only_their_window(tokenizer):
    """Gemma3's sliding layers see only their window even past it (the tiny one has 24 tokens)."""
    model = tiny_model("gemma3")
    ids = torch.randint(0, 250, (60,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids[None]).logits[0, -1].float()
    eng = Engine(model, tokenizer, progress=False, cache=False)
    doc = eng.prefill_ids(ids)
    torch.testing.assert_close(doc.last_logits, ref, rtol=1e-4, atol=1e-4)
    assert doc.state.memory[0].n_local <= 24 + eng.config.exec_block
