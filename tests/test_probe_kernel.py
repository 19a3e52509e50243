"""The batched chunk's activation bias in Triton kernels (retrieval/probe_kernel.py) against the
PyTorch reference, run by Triton's interpreter on the CPU; and ``prefill_kernel="auto"``'s choice."""

import warnings

import pytest
import torch

from actqkv_llm.retrieval.probe import ActivationStats, ProbeKernel, chunk_bias_torch
from interpreted import run_interpreted

pytest.importorskip("triton")


def _case(heads: int, d: int, t: int, size: int, seen: int, dtype: torch.dtype, seed: int = 0):
    """Queries ``[H, T, d]`` laid out as attention leaves them (a transposed view, not contiguous),
    statistics that saw ``seen`` earlier tokens, and the chunk's execution-block sizes."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(t, heads, d, generator=g) * 2 + 0.5).to(dtype).transpose(0, 1)
    stats = ActivationStats(heads * d, torch.device("cpu"))
    if seen:
        stats.update(torch.randn(seen, heads * d, generator=g) * 3 - 1)
    return q, stats, tuple(min(size, t - a) for a in range(0, t, size))


def test_the_kernels_give_the_reference_bias_and_statistics():
    """Both kernels, compiled by the interpreter: the bias of every token of every execution block
    and the statistics moved past the chunk, for a document's first chunk (no statistics yet: the
    shift is the first block's mean) and a later one, a ragged last block, float32 and bf16 queries,
    head sizes that are and are not powers of two. Zero on the padding, as the reference."""
    run_interpreted("""
import torch
from actqkv_llm.retrieval.probe import chunk_bias_torch, chunk_bias_triton
from test_probe_kernel import _case
for dtype in (torch.float32, torch.bfloat16):
    for heads, d, t, size, seen in ((4, 16, 100, 32, 0), (4, 16, 96, 32, 50), (3, 24, 70, 16, 10), (2, 8, 5, 16, 3)):
        q, ref, sizes = _case(heads, d, t, size, seen, dtype)
        mine = ref.clone()
        want, got = chunk_bias_torch(q, ref, sizes), chunk_bias_triton(q, mine, sizes)
        assert got.shape == want.shape == (len(sizes), sizes[0]), (got.shape, want.shape)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), float((got - want).abs().max())
        assert bool((got[-1, sizes[-1]:] == 0).all())
        assert mine.count == ref.count == seen + t
        assert torch.allclose(mine.mean, ref.mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(mine.m2, ref.m2, rtol=1e-5, atol=1e-5)
print("ok")
""")


@pytest.mark.parametrize("agrees", [True, False])
def test_auto_keeps_the_kernels_only_where_they_give_the_reference(monkeypatch, agrees):
    """``auto`` runs both paths on its first chunk: kernels that give the reference's bias and
    statistics serve the later chunks; kernels that do not are dropped with a warning. Every chunk
    returns the reference's bias and leaves the reference's statistics."""
    import actqkv_llm.retrieval.probe as probe

    calls = []

    def kernels(q, stats, sizes):
        calls.append(1)
        out = chunk_bias_torch(q, stats, sizes)
        return out if agrees else out * 1.5

    monkeypatch.setattr("actqkv_llm.devices.triton_available", lambda device: True)
    monkeypatch.setattr(probe, "chunk_bias_triton", kernels)
    chooser = ProbeKernel("auto")
    q, stats, sizes = _case(4, 16, 96, 32, 0, torch.float32)
    ref = stats.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            got = chooser(q, stats, sizes)
            want = chunk_bias_torch(q, ref, sizes)
            assert torch.equal(got, want) if not agrees else torch.allclose(got, want)
            assert stats.count == ref.count and torch.allclose(stats.mean, ref.mean)
    assert len(calls) == (3 if agrees else 1)     # the check's call, then every chunk or none
    assert any("disagrees" in str(w.message) for w in caught) != agrees


def test_torch_choice_never_runs_the_kernels(monkeypatch):
    import actqkv_llm.retrieval.probe as probe

    monkeypatch.setattr(probe, "chunk_bias_triton", lambda *a: pytest.fail("the kernels ran"))
    q, stats, sizes = _case(2, 8, 40, 16, 5, torch.float32)
    ref = stats.clone()
    assert torch.equal(ProbeKernel("torch")(q, stats, sizes), chunk_bias_torch(q, ref, sizes))
