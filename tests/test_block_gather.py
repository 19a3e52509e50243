"""A batched prefill chunk's picked blocks into the attention's buffers (attention/block_gather.py):
the Triton kernel against the PyTorch reference, compiled on a GPU and interpreted on the CPU
(``TRITON_INTERPRET=1``), and the ``prefill_kernel`` option's choice of path."""

import os

import pytest
import torch
from interpreted import run_interpreted
from tiny_models import rope_tables

from actqkv_llm.attention.block_gather import BlockGather, gather_reference
from actqkv_llm.memory.blocks import GrowableBlocks, StackedBlocks

# (KV heads, block size, head size, stored blocks, execution blocks, picks per execution block, sinks):
# a block size and a head size that are not powers of two, one KV head, many picks
SHAPES = [(2, 8, 64, 40, 3, 5, 4), (1, 6, 48, 17, 2, 4, 0), (3, 32, 128, 300, 4, 23, 64)]


def _case(shape, dtype, device, seed=0):
    hkv, b, d, n, n_e, kmax, n_sink = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    store = GrowableBlocks.from_tensors(torch.randn((n, hkv, b, d), generator=gen, device=device).to(dtype),
                                        torch.randn((n, hkv, b, d), generator=gen, device=device).to(dtype))
    flat = torch.randint(0, n, (hkv, n_e * kmax), generator=gen, device=device)
    return store, flat, rope_tables(n_sink + n * b, d, device), n_sink, (n_e, hkv, kmax * b, d)


def _buffers(shape, dtype, device):
    """Views into wider buffers, as the attention's ``[sinks | blocks | window]`` are."""
    n_e, hkv, rows, d = shape
    k = torch.full((n_e, hkv, rows + 7, d), float("nan"), dtype=dtype, device=device)
    v = torch.full_like(k, float("nan"))
    return k[:, :, 3:3 + rows], v[:, :, 3:3 + rows]


def _compare(dtype, device):
    """The kernel writes the reference's values exactly and its keys within one rounding of the same
    float32 rotation, rotated or copied as stored, and nothing outside its view."""
    from actqkv_llm.attention.block_gather import gather_triton

    for shape in SHAPES:
        store, flat, table, n_sink, out_shape = _case(shape, dtype, device)
        for rotated in (True, False):
            tab = table if rotated else None
            want_k, want_v = _buffers(out_shape, dtype, device)
            gather_reference(store, flat, tab, n_sink, want_k, want_v)
            got_k, got_v = _buffers(out_shape, dtype, device)
            gather_triton(store.keys, store.values, flat, table if rotated else None, n_sink, got_k, got_v)
            assert torch.equal(got_v, want_v)
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(got_k, want_k, rtol=tol, atol=tol)
            if not rotated:
                assert torch.equal(got_k, want_k)
            base = got_k._base if got_k._base is not None else got_k
            assert base[:, :, :3].isnan().all() and base[:, :, 3 + out_shape[2]:].isnan().all()


def _compare_two_stores(dtype, device):
    """Blocks of a document's store and a session's own (ids counting on from the first's), picked
    per KV head or one row for all heads (a decode step's new scoring, static_decode.py): the
    reference's buffers through the same kernel, values exactly, keys within one rounding."""
    from actqkv_llm.attention.block_gather import gather_parts_triton

    for shape in SHAPES:
        store, flat, table, n_sink, out_shape = _case(shape, dtype, device)
        n1 = store.n_blocks * 2 // 3
        first = GrowableBlocks.from_tensors(store.keys[:n1].clone(), store.values[:n1].clone())
        own = GrowableBlocks.from_tensors(store.keys[n1:].clone(), store.values[n1:].clone())
        stacked = StackedBlocks(first, own)
        parts = [(first.keys, first.values), (own.keys, own.values)]
        flat = flat.sort(-1).values           # a row's candidates ascend (the stores' reads rely on it)
        for ids in (flat, flat[:1]):          # per head; one row shared by the heads
            for rotated in (True, False):
                tab = table if rotated else None
                want_k, want_v = _buffers(out_shape, dtype, device)
                gather_reference(stacked, ids.expand(out_shape[1], -1), tab, n_sink, want_k, want_v)
                got_k, got_v = _buffers(out_shape, dtype, device)
                gather_parts_triton(parts, ids, tab, n_sink, got_k, got_v)
                assert torch.equal(got_v, want_v)
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                torch.testing.assert_close(got_k, want_k, rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU runs the interpreter test)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_gather_gives_the_reference_buffers(dtype):
    _compare(dtype, torch.device("cuda"))
    _compare_two_stores(dtype, torch.device("cuda"))


def test_the_interpreted_gather_gives_the_reference_buffers():
    """The kernel's own logic on the CPU: Triton's interpreter (set before Triton is imported, so in
    a fresh process), float32."""
    pytest.importorskip("triton")
    run_interpreted("import torch, test_block_gather as t; t._compare(torch.float32, torch.device('cpu')); "
                    "t._compare_two_stores(torch.float32, torch.device('cpu')); print('ok')")


def test_the_choice_of_path(monkeypatch):
    """``torch`` and ``auto`` without a GPU take the reference and give its buffers; an explicit
    ``triton`` that cannot run is an error; blocks stored in parts (a question's own blocks stacked
    on the document's) take the reference whatever the choice."""
    import actqkv_llm.attention.block_gather as bg

    called = []
    monkeypatch.setattr(bg, "gather_triton", lambda *a, **k: called.append(1))
    cpu = torch.device("cpu")
    store, flat, table, n_sink, out_shape = _case(SHAPES[0], torch.float32, cpu)
    want = _buffers(out_shape, torch.float32, cpu)
    gather_reference(store, flat, table, n_sink, *want)
    if os.environ.get("TRITON_INTERPRET") != "1":
        for choice in ("torch", "auto"):
            gather = BlockGather(choice)
            for _ in range(2):      # the check's call, then the decided path
                got = _buffers(out_shape, torch.float32, cpu)
                gather(store, flat, table, n_sink, *got)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        with pytest.raises(RuntimeError, match="prefill_kernel='triton'"):
            BlockGather("triton")(store, flat, table, n_sink, *_buffers(out_shape, torch.float32, cpu))
    stacked = StackedBlocks(store, GrowableBlocks(store.shape[0], store.shape[1], store.shape[2], torch.float32, cpu))
    got = _buffers(out_shape, torch.float32, cpu)
    BlockGather("triton")(stacked, flat, table, n_sink, *got)
    assert torch.equal(got[0], want[0]) and not called


@pytest.mark.parametrize("agrees", [True, False])
def test_auto_keeps_the_kernel_only_where_it_gives_the_reference(monkeypatch, agrees):
    """``auto`` runs both paths on a shape's first chunk: a kernel that gives the reference's buffers
    serves the later chunks; one that does not is dropped with a warning, and the reference serves
    (its result, not the kernel's, is in the buffers every time)."""
    import warnings

    import actqkv_llm.attention.block_gather as bg

    cpu = torch.device("cpu")
    store, flat, table, n_sink, out_shape = _case(SHAPES[0], torch.float32, cpu)
    want = _buffers(out_shape, torch.float32, cpu)
    gather_reference(store, flat, table, n_sink, *want)
    calls = []

    def kernel(store_k, store_v, ids, tab, sinks, k_out, v_out):
        calls.append(1)
        if agrees:
            gather_reference(store, ids, tab, sinks, k_out, v_out)
        else:
            k_out.zero_(), v_out.zero_()

    monkeypatch.setattr("actqkv_llm.devices.triton_available", lambda device: True)
    monkeypatch.setattr(bg, "gather_triton", kernel)
    gather = BlockGather("auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            got = _buffers(out_shape, torch.float32, cpu)
            gather(store, flat, table, n_sink, *got)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert len(calls) == (3 if agrees else 1)         # the check's call, then every chunk or none
    assert any("disagrees" in str(w.message) for w in caught) != agrees
