"""A batched prefill chunk's block evidence: the Triton passes (retrieval/bound_mass.py) against the
PyTorch reference, compiled on a GPU and interpreted on the CPU (``TRITON_INTERPRET=1``), and the
``prefill_kernel`` option's choice."""

import os

import pytest
import torch
from interpreted import run_interpreted

from actqkv_llm.config import ConfigError, RetrievalConfig
from actqkv_llm.retrieval.bound_mass import BoundMassKernel, bound_mass_torch

# (KV heads, query heads per group, execution blocks, tokens per block, head size, memory blocks):
# a head size that is not a power of two, more blocks than one tile, rows past one tile
SHAPES = [(2, 3, 3, 40, 64, 300), (1, 4, 2, 256, 128, 70), (3, 1, 4, 17, 48, 129)]


def _case(shape, dtype, device, seed=0):
    hkv, g, n_e, size, d, n = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    # not contiguous, as a chunk's padded queries can be
    q = torch.randn((n_e, hkv * g, size, d), generator=gen, device=device).transpose(0, 1)
    keys = torch.randn((n, hkv, 8, d), generator=gen, device=device).to(dtype)
    w = torch.rand((n_e, size), generator=gen, device=device)
    w[:, -3:] = 0                                   # padding tokens carry no weight
    # every block visible, fewer, a few, none (the first execution block of a document's first chunk)
    avail = torch.tensor(([n, n - 50, 7, 0] * 2)[:n_e], device=device)
    return q, w, keys.amin(2), keys.amax(2), avail, d ** -0.5


def _compare(dtype, device):
    """The Triton passes give the reference's evidence where an execution block sees blocks (within
    the rounding of ``dtype`` products), the same best blocks, zeros past what it sees and zeros
    where it sees none (the reference's NaN there is never read)."""
    from actqkv_llm.retrieval.bound_mass import bound_mass_triton

    for shape in SHAPES:
        q, w, lo, hi, avail, scaling = _case(shape, dtype, device)
        got = bound_mass_triton(q, w, lo, hi, avail, scaling)
        want = bound_mass_torch(q, w, [(lo, hi)], avail, shape[0], scaling, dtype)
        assert got.shape == want.shape and got.dtype == torch.float32
        for e, n_vis in enumerate(avail.tolist()):
            if n_vis == 0:
                assert torch.equal(got[e], torch.zeros_like(got[e]))
                continue
            assert torch.equal(got[e, :, n_vis:], torch.zeros_like(got[e, :, n_vis:]))
            if dtype == torch.float32:
                torch.testing.assert_close(got[e, :, :n_vis], want[e, :, :n_vis], atol=1e-4, rtol=1e-4)
                k = min(5, n_vis)
                assert torch.equal(got[e, :, :n_vis].topk(k, -1).indices, want[e, :, :n_vis].topk(k, -1).indices)
            else:  # bf16 logits in the reference, float32 accumulation here: within bf16 rounding
                err = (got[e, :, :n_vis] - want[e, :, :n_vis]).norm() / want[e, :, :n_vis].norm()
                assert float(err) < 3e-2
            # every row's softmax sums to one: the evidence adds up to the weights of its rows
            total = w[e].sum() * (q.shape[0] // shape[0])
            torch.testing.assert_close(got[e].sum(-1), total.expand(shape[0]).float(), rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU runs the interpreter test)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_passes_give_the_reference_evidence(dtype):
    _compare(dtype, torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled variants)")
def test_one_compiled_variant_serves_every_memory_size():
    """A memory growing from 70 to 5,000 blocks, as a document's prefill grows it, compiles each pass
    once: a variant compiled at first use costs a prefill 0.3-0.6 s per call (twenty-second session,
    where the row pass was specialised by a power of two of its block tiles)."""
    from actqkv_llm.retrieval import bound_mass_kernel as kern
    from actqkv_llm.retrieval.bound_mass import bound_mass_triton

    dev = torch.device("cuda")
    hkv, g, n_e, size, d = 2, 4, 3, 64, 128

    def compiled():
        return [len(f.device_caches[torch.cuda.current_device()][0])
                for f in (kern.row_lse_kernel, kern.block_mass_kernel)]

    before = None
    for n in (70, 300, 1000, 5000):
        q, w, lo, hi, avail, scaling = _case((hkv, g, n_e, size, d, n), torch.bfloat16, dev)
        bound_mass_triton(q, w, lo, hi, avail, scaling)
        torch.cuda.synchronize()
        before = before or compiled()
    assert compiled() == before


def test_the_interpreted_passes_give_the_reference_evidence():
    """The kernels' own logic on the CPU: Triton's interpreter (set before Triton is imported, so in
    a fresh process), float32."""
    pytest.importorskip("triton")
    run_interpreted("import torch, test_bound_mass as t; t._compare(torch.float32, torch.device('cpu')); print('ok')")


def test_the_choice_of_computation():
    """``torch`` and ``auto`` without a GPU compute the reference; an explicit ``triton`` that cannot
    run is an error; bounds in several parts (a document's blocks and a session's own) always take
    the reference."""
    q, w, lo, hi, avail, scaling = _case(SHAPES[0], torch.float32, torch.device("cpu"))
    want = bound_mass_torch(q, w, [(lo, hi)], avail, 2, scaling, torch.float32)
    if os.environ.get("TRITON_INTERPRET") != "1":
        for choice in ("torch", "auto"):
            got = BoundMassKernel(choice)(q, w, [(lo, hi)], avail, 2, scaling, torch.float32)
            assert torch.equal(got.nan_to_num(), want.nan_to_num())
        with pytest.raises(RuntimeError, match="prefill_kernel='triton'"):
            BoundMassKernel("triton")(q, w, [(lo, hi)], avail, 2, scaling, torch.float32)
    parts = [(lo[:100], hi[:100]), (lo[100:], hi[100:])]
    split = BoundMassKernel("triton")(q, w, parts, avail, 2, scaling, torch.float32)
    torch.testing.assert_close(split.nan_to_num(), want.nan_to_num())


def test_prefill_kernel_option_is_validated():
    assert RetrievalConfig().prefill_kernel == "auto"
    assert RetrievalConfig(prefill_kernel="torch").prefill_kernel == "torch"
    with pytest.raises(ConfigError, match="prefill_kernel"):
        RetrievalConfig(prefill_kernel="cuda")


def test_an_interpreted_batched_prefill_matches_the_reference_computation():
    """End to end on the CPU: a batched prefill whose chunks score with the interpreted Triton passes,
    weight their probe tokens with the interpreted bias kernels and gather their blocks with the
    interpreted gather kernel, and rotate its queries and window keys with the interpreted rotation
    kernel, gives the logits and greedy tokens of the same prefill done with PyTorch ops (float32)."""
    pytest.importorskip("triton")
    code = r"""
import torch
from tiny_models import tiny_model
from actqkv_llm import Engine
import actqkv_llm.attention.block_gather as bg
import actqkv_llm.retrieval.probe as pr
import actqkv_llm.attention.rotation as ro
gathers, biases, rotations = [], [], []
inner, inner_bias, inner_rot = bg.gather_triton, pr.chunk_bias_triton, ro.rotate_triton
bg.gather_triton = lambda *a, **k: gathers.append(1) or inner(*a, **k)
pr.chunk_bias_triton = lambda *a, **k: biases.append(1) or inner_bias(*a, **k)
ro.rotate_triton = lambda *a, **k: rotations.append(1) or inner_rot(*a, **k)
ids = torch.randint(0, 256, (900,), generator=torch.Generator().manual_seed(1))
small = dict(block_size=8, n_sink=4, n_local=64, exec_block=16, budget=4 + 64 + 8 * 4, prefill_chunk=96)
runs = []
for kernel in ("torch", "triton"):
    torch.manual_seed(0)
    eng = Engine(tiny_model("llama"), None, progress=False, cache=False, batch_prefill=True,
                 prefill_kernel=kernel, **small)
    doc = eng.prefill_ids(ids)
    runs.append((doc.last_logits, eng.generate_ids(doc, [5, 6, 7], max_new_tokens=6)))
    assert bool(gathers) == (kernel == "triton"), (kernel, len(gathers))   # the blocks' kernel ran too
    assert bool(biases) == (kernel == "triton"), (kernel, len(biases))     # and the bias kernels
    assert bool(rotations) == (kernel == "triton"), (kernel, len(rotations))   # and the rotation
torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-4, rtol=1e-4)
assert runs[1][1] == runs[0][1], runs
print('ok')
"""
    run_interpreted(code, timeout=600)
