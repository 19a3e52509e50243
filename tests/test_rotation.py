"""Rotary positions of queries and window keys (attention/rotation.py): the Triton kernel against the
PyTorch reference (:func:`actqkv_llm.attention.rope.rotate`), compiled on a GPU and interpreted on
the CPU (``TRITON_INTERPRET=1``), and the ``prefill_kernel`` option's choice of path."""

import os
import warnings

import pytest
import torch
from interpreted import run_interpreted
from tiny_models import rope_tables

from actqkv_llm.attention.rotation import Rotation, rotate_reference


def _cases(dtype, device):
    """(x, cos, sin): what the attention rotates: a chunk's queries ``[H, T, d]`` at their positions
    (a slice of a longer table), a transposed view, one fixed angle for every token, per-execution
    -block positions ``[E, S, d]`` of padded queries ``[H, E, S, d]``, gathered windows ``[Hkv, E, W, d]``
    sharing ``[W, d]``; head sizes 64, 128 and 48 (not a power of two); fewer and more positions
    than one program's block."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape):
        return torch.randn(shape, generator=gen, device=device).to(dtype)

    cos, sin = rope_tables(400, 64, device)
    cos128, sin128 = rope_tables(300, 128, device, offset=17)
    cos48, sin48 = rope_tables(5, 48, device)
    qpos = torch.randint(0, 400, (3, 20), generator=gen, device=device)
    return [
        (rnd(4, 130, 64), cos[100:230], sin[100:230]),
        (rnd(70, 2, 128).transpose(0, 1), cos128[:70], sin128[:70]),
        (rnd(8, 33, 64), cos[64:65], sin[64:65]),
        (rnd(4, 3, 20, 64), cos[qpos], sin[qpos]),
        (rnd(2, 3, 300, 128), cos128, sin128),
        (rnd(3, 5, 48), cos48, sin48),
    ]


def _compare(dtype, device):
    from actqkv_llm.attention.rotation import rotate_triton

    for x, cos, sin in _cases(dtype, device):
        for out in {torch.float32, dtype}:
            want = rotate_reference(x, cos, sin, out)
            got = rotate_triton(x, cos, sin, out)
            assert got.dtype == out and got.shape == want.shape
            tol = 1e-5 if out == torch.float32 else 1e-2
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU runs the interpreter test)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_rotation_gives_the_reference(dtype):
    _compare(dtype, torch.device("cuda"))


def test_the_interpreted_rotation_gives_the_reference():
    """The kernel's own logic on the CPU: Triton's interpreter (set before Triton is imported, so in
    a fresh process), float32 in and out."""
    pytest.importorskip("triton")
    run_interpreted("import torch, test_rotation as t; t._compare(torch.float32, torch.device('cpu')); print('ok')")


def test_the_choice_of_path(monkeypatch):
    """``torch`` and ``auto`` without a GPU take the reference; an explicit ``triton`` that cannot run
    is an error."""
    import actqkv_llm.attention.rotation as rot

    called = []
    monkeypatch.setattr(rot, "rotate_triton", lambda *a, **k: called.append(1))
    x, cos, sin = _cases(torch.float32, torch.device("cpu"))[0]
    want = rotate_reference(x, cos, sin, torch.float32)
    if os.environ.get("TRITON_INTERPRET") != "1":
        for choice in ("torch", "auto"):
            rotation = Rotation(choice)
            for _ in range(2):     # the first call, then the decided path
                assert torch.equal(rotation(x, cos, sin), want)
        with pytest.raises(RuntimeError, match="prefill_kernel='triton'"):
            Rotation("triton")(x, cos, sin)
    # one position's query against a longer table: the reference broadcasts it, the kernel does not take it
    q = x[:, :1]
    assert torch.equal(Rotation("triton")(q, cos, sin), rotate_reference(q, cos, sin, torch.float32))
    assert not called


@pytest.mark.parametrize("agrees", [True, False])
def test_auto_keeps_the_kernel_only_where_it_gives_the_reference(monkeypatch, agrees):
    """``auto`` runs both paths the first time: a kernel that gives the reference's result serves the
    later calls; one that does not is dropped with a warning, and the reference serves (its result,
    not the kernel's, comes back every time)."""
    import actqkv_llm.attention.rotation as rot

    x, cos, sin = _cases(torch.float32, torch.device("cpu"))[0]
    want = rotate_reference(x, cos, sin, torch.bfloat16)
    calls = []

    def kernel(x, cos, sin, dtype):
        calls.append(1)
        got = rotate_reference(x, cos, sin, dtype)
        return got if agrees else got + 1

    monkeypatch.setattr("actqkv_llm.devices.triton_available", lambda device: True)
    monkeypatch.setattr(rot, "rotate_triton", kernel)
    rotation = Rotation("auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert torch.equal(rotation(x, cos, sin, torch.bfloat16), want)
    assert len(calls) == (3 if agrees else 1)         # the check's call, then every call or none
    assert any("disagrees" in str(w.message) for w in caught) != agrees
