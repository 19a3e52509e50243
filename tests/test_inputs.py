"""Bad input: a clear error and nothing half-done."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from actqkv_llm import ConfigError, Engine, InputError, RetrievalConfig, UnsupportedModelError


def test_empty_document(make_engine):
    eng = make_engine()
    for bad in ("", "   \n"):
        with pytest.raises(InputError, match="empty"):
            eng.prefill(bad)


def test_non_text_document(make_engine):
    eng = make_engine()
    with pytest.raises(InputError, match="decode bytes"):
        eng.prefill(b"bytes are not text")
    with pytest.raises(InputError, match="must be text"):
        eng.prefill(["a", "list"])


def test_unsupported_architecture_names_the_supported_ones(tokenizer):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300))
    with pytest.raises(UnsupportedModelError) as err:
        Engine(model, tokenizer, progress=False, cache=False)
    for name in ("llama", "qwen2", "qwen3", "gemma3", "mistral"):
        assert name in str(err.value)


@pytest.mark.parametrize("options, match", [
    (dict(block_size=0), "block_size"),
    (dict(method="magic"), "method"),
    (dict(n_local=16, exec_block=16), "n_local"),
    (dict(budget=10), "budget"),
    (dict(question_weight=-1.0), "question_weight"),
    (dict(repr_topk=99), "repr_topk"),
    (dict(n_local="big"), "n_local"),
    (dict(max_blocks=1, min_blocks=5), "max_blocks"),
    (dict(offload="sometimes"), "offload"),
    (dict(prefill_chunk=0), "prefill_chunk must be an integer >= 1 or 'auto'"),
    (dict(prefill_chunk="big"), "prefill_chunk must be an integer >= 1 or 'auto'"),
    (dict(prefill_chunk=4096.0), "prefill_chunk must be an integer >= 1 or 'auto'"),
    (dict(offload=True, host_kv_dtype="fp4"), "host_kv_dtype must be one of model, int8"),
    (dict(host_kv_dtype="int8"), "it needs offload"),
    (dict(question_rerank=0), "question_rerank must be a positive integer"),
    (dict(rerank=4, question_rerank=8), r"at most rerank \(4\)"),
    (dict(question_rerank=17), r"at most rerank \(16\)"),            # the actqkv preset's 16
])
def test_options_out_of_range(make_engine, options, match):
    with pytest.raises(ConfigError, match=match):
        make_engine(**options)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match="unknown retrieval option"):
        RetrievalConfig.for_model(8192, blok_size=4)


def test_prefill_chunk_auto_resolves_per_device(make_engine):
    """"auto": 16384 tokens per forward pass on an accelerator, 4096 on the CPU; an explicit size holds
    everywhere; a native window under 8K scales the CPU's 4096 down on every device."""
    cfg = RetrievalConfig()
    assert cfg.prefill_chunk == "auto"
    assert cfg.prefill_chunk_on(torch.device("cpu")) == 4096
    assert cfg.prefill_chunk_on(torch.device("cuda")) == cfg.prefill_chunk_on("mps") == 16384
    assert RetrievalConfig(prefill_chunk=96).prefill_chunk_on(torch.device("cuda")) == 96
    assert RetrievalConfig.for_model(2048).prefill_chunk_on(torch.device("cuda")) == 1024
    # the session runs the resolved size: a 1,200-token prefill on the CPU in 384-token pieces
    eng = make_engine(prefill_chunk=384)
    sizes = []
    eng.adapter.embed = (lambda embed: lambda ids: sizes.append(ids.shape[1]) or embed(ids))(eng.adapter.embed)
    eng.prefill_ids(torch.randint(0, 256, (1200,)))
    assert sizes == [384, 384, 384, 48]


def test_window_beyond_native_is_refused():
    with pytest.raises(ConfigError, match="native window"):
        RetrievalConfig.for_model(1024, n_local=2048, budget=4096)


def test_bad_sampling_options(make_engine):
    eng = make_engine()
    doc = eng.prefill("a small document")
    with pytest.raises(InputError, match="max_new_tokens"):
        eng.ask(doc, "q", max_new_tokens=0)
    with pytest.raises(InputError, match="top_p"):
        eng.ask(doc, "q", top_p=0)
    with pytest.raises(InputError, match="question is empty"):
        eng.ask(doc, "  ")


def test_ask_on_raw_document_is_refused(make_engine):
    eng = make_engine()
    doc = eng.prefill("raw text", chat=False)
    with pytest.raises(InputError, match="chat=True"):
        eng.ask(doc, "q")


def test_document_from_other_options_is_refused(make_engine):
    eng = make_engine()
    doc = eng.prefill("some text here")
    other = eng.with_method("infllm")
    with pytest.raises(InputError, match="other retrieval options"):
        other.ask(doc, "q")


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_the_test_run_is_offline():
    """pytest-socket (``--disable-socket`` in pyproject.toml) makes any network socket an error."""
    import socket

    from pytest_socket import SocketBlockedError

    with pytest.raises(SocketBlockedError):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
