"""Offloaded blocks held as int8 (``host_kv_dtype="int8"``): the quantizer's error, the store's reads
against the unquantized store, and an engine that prefills, answers, saves and reloads with it."""

import pytest
import torch

from actqkv_llm.errors import CacheMismatchError
from actqkv_llm.memory import GrowableBlocks, Int8Blocks
from actqkv_llm.memory.quantized import KEY_SPAN, VALUE_SPAN, dequantize, quantize
from tiny_models import SMALL


def _blocks(n, seed=0, hkv=2, b=8, d=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, hkv, b, d), generator=g)
    x[..., 3] *= 40.0          # an outlier channel, as real keys have
    return x


@pytest.mark.parametrize("span", [KEY_SPAN, VALUE_SPAN])
def test_quantize_keeps_each_element_within_half_a_step(span):
    x = _blocks(5)
    x[1, 0] = 0.0              # an all-zero group stays zero
    q, scale = quantize(x, span)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert scale.shape[span] == 1 and scale.dim() == 4
    back = dequantize(q, scale, torch.float32)
    assert float(((back - x).abs() - scale / 2).max()) <= 1e-6
    assert torch.equal(back[1, 0], torch.zeros_like(back[1, 0]))
    # keys' scales follow channels: the outlier channel does not coarsen the others
    if span == KEY_SPAN:
        _, s = quantize(_blocks(5), span)
        assert float(s[..., 3].min()) > 10 * float(s[..., 0].max())


def test_int8_blocks_read_what_a_store_of_the_dequantized_blocks_reads():
    k, v = _blocks(7, seed=1), _blocks(7, seed=2)
    store = Int8Blocks(2, 8, 16, torch.float32, capacity=2)
    store.append(k[:3], v[:3])
    store.append(k[3:], v[3:])                 # grows past its capacity
    assert store.n_blocks == 7 and store.capacity >= 7
    plain = GrowableBlocks.from_tensors(dequantize(*quantize(k, KEY_SPAN), torch.float32),
                                        dequantize(*quantize(v, VALUE_SPAN), torch.float32))
    blocks, heads = torch.tensor([6, 0, 6, 2]), torch.tensor([1, 0, 0, 1])
    for a, b in zip(store.read_units(blocks, heads), plain.read_units(blocks, heads)):
        assert torch.equal(a, b)
    assert store.read_units(blocks, heads, keys=False)[0] is None
    for a, b in zip(store.read_units(blocks, heads, device=torch.device("cpu")), plain.read_units(blocks, heads)):
        assert torch.equal(a, b)     # to another device (the GPU test: int8 travels, dequantized there)
    for which in (0, 1):
        assert torch.equal(store.read_part(2, 6, which), (plain.keys, plain.values)[which][2:6])
    for idx in (torch.tensor([0, 4, 5]), torch.tensor([[0, 4, 5], [1, 2, 6]])):
        for a, b in zip(store.gather(idx, torch.device("cpu")), plain.gather(idx, torch.device("cpu"))):
            assert torch.equal(a, b)
    assert store.device_parts(torch.device("cpu")) is None
    # a byte per element, plus a float32 scale per channel (keys) and per token (values) of each
    # block and KV head: at block 32 and head_dim 128, 54% of bf16's bytes
    assert store.nbytes == 7 * 2 * (2 * 8 * 16 + 4 * 16 + 4 * 8)


def test_int8_offload_answers_like_the_unquantized_offload(make_engine, tmp_path):
    text = "alpha beta gamma delta " * 40
    plain = make_engine(**SMALL, offload=True, device_cache_blocks=6)
    int8 = make_engine(**SMALL, offload=True, device_cache_blocks=6, host_kv_dtype="int8")
    d1, d2 = plain.prefill(text), int8.prefill(text)
    assert all(isinstance(m.blocks.store, Int8Blocks) for m in d2.state.memory if m.n_blocks)
    assert d2.n_blocks == d1.n_blocks > 0
    # the blocks were quantized (the logits move) but only by rounding (they stay close)
    assert not torch.equal(d1.last_logits, d2.last_logits)
    torch.testing.assert_close(d2.last_logits, d1.last_logits, rtol=0.02, atol=0.02)
    assert int8.config.kv_options()["host_kv_dtype"] == "int8" and "host_kv_dtype" not in plain.config.kv_options()
    # saved, the document holds the dequantized blocks; reloaded, it answers as it did
    path = d2.save(tmp_path / "int8", kv_dtype="compute")
    loaded = int8.load(path)
    assert int8.ask(loaded, "Which words?", max_new_tokens=8) == int8.ask(d2, "Which words?", max_new_tokens=8)
    with pytest.raises(CacheMismatchError, match="kv_options"):
        plain.load(path)          # its KV is not an unquantized prefill's
