"""A batched prefill chunk's block evidence from key bounds: each execution block's estimate of the
attention mass every memory block would receive (``BoundScorer`` with ``token_reduce="softmax"``).

``bound_mass_torch`` is the reference (PyTorch ops, any device); ``bound_mass_triton`` computes the
same in two Triton passes without materialising the ``[rows, blocks]`` logits (CUDA, or the CPU
under ``TRITON_INTERPRET=1`` for tests). ``BoundMassKernel`` picks one per device (the
``prefill_kernel`` option).
"""

from __future__ import annotations

import torch

from ..devices import KernelChoice, kernel_agrees, tile_extent
from .score import bound_logits_parts

# logits held at once by the PyTorch path (elements of [rows, blocks]); a chunk is cut into groups of
# execution blocks below it
CHUNK_SCORE_ELEMENTS = 1 << 27
# the Triton passes' tiles (rows of queries, memory blocks) and warps per program, each pass its own:
# on an H100 (8B shape, 64 execution blocks x 4K blocks) 128 x 64 with 8 warps for the row pass and
# 64 x 128 with 4 for the block pass took both passes from 10.9 to 6.6 ms (docs/benchmarks.md,
# twenty-fourth session); 128 x 128 for the block pass exceeds its shared memory. Float32 bounds
# (products in float32, twice the bytes per tile) keep the 64 x 64 tiles both passes had before.
LSE_TILES = dict(BR=128, BN=64, num_warps=8)
MASS_TILES = dict(BR=64, BN=128, num_warps=4)
FLOAT32_TILES = dict(BR=64, BN=64, num_warps=4)


def masked_bound_logits(q_mem: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                        n_avail: torch.Tensor, kv_heads: int, dtype: torch.dtype):
    """Quest's bound logits of a batched chunk, a group of execution blocks at a time (at most
    ``CHUNK_SCORE_ELEMENTS`` logits): yields ``(slice of E, logits [E', Hkv, G, S, N])`` with -inf at
    the blocks each execution block may not see; the tensor is the caller's to change in place.
    q_mem ``[H, E, S, d]`` at the memory's rotation, bounds in ``parts``, ``n_avail [E]``."""
    h, n_e, size, d = q_mem.shape
    n = sum(lo.shape[0] for lo, _ in parts)
    hidden = torch.arange(n, device=q_mem.device)[None] >= n_avail[:, None]      # [E, N]
    step = max(1, CHUNK_SCORE_ELEMENTS // max(1, h * size * n))
    for a in range(0, n_e, step):
        e = slice(a, min(n_e, a + step))
        ne = e.stop - e.start
        u = bound_logits_parts(q_mem[:, e].reshape(h, ne * size, d), parts, dtype)
        u = u.view(kv_heads, h // kv_heads, ne, size, n).permute(2, 0, 1, 3, 4)   # [E', Hkv, G, S, N]
        yield e, u.masked_fill_(hidden[e, None, None, None], float("-inf"))


def bound_mass_torch(q_mem: torch.Tensor, weights: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                     n_avail: torch.Tensor, kv_heads: int, scaling: float, dtype: torch.dtype) -> torch.Tensor:
    """q_mem ``[H, E, S, d]`` (at the memory's rotation), weights ``[E, S]``, bounds in ``parts``
    (``[n_i, Hkv, d]`` minima and maxima), ``n_avail [E]`` blocks each execution block may see ->
    evidence ``[E, Hkv, N]`` float32: per row (query head of the group, token) the softmax over the
    visible blocks of ``scaling`` x Quest's bound, weighted and summed. Products in ``dtype``."""
    out = []
    for e, u in masked_bound_logits(q_mem, parts, n_avail, kv_heads, dtype):
        p = torch.softmax(u.mul_(scaling), -1)
        out.append(torch.einsum("ekgsn,es->ekn", p, weights[e].float()))
    return torch.cat(out)


def bound_mass_triton(q_mem: torch.Tensor, weights: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      n_avail: torch.Tensor, scaling: float) -> torch.Tensor:
    """:func:`bound_mass_torch` for one part of bounds ``lo``/``hi`` ``[N, Hkv, d]``, in two Triton
    passes (products in the bounds' dtype, float32 accumulation and softmax). An execution block
    that sees no block gets zeros (the PyTorch path: NaN; neither is read)."""
    from . import bound_mass_kernel as kern

    h, n_e, size, d = q_mem.shape
    n, hkv = lo.shape[0], lo.shape[1]
    g = h // hkv
    rows = g * size
    out = torch.empty((n_e, hkv, n), dtype=torch.float32, device=q_mem.device)
    if n == 0 or n_e == 0:
        return out
    # rows r = g * S + s of each (KV head, execution block), split into the bound's two products
    q = q_mem.to(lo.dtype).reshape(hkv, g, n_e, size, d).permute(0, 2, 1, 3, 4).reshape(hkv, n_e, rows, d)
    qp, qn = q.clamp(min=0).contiguous(), q.clamp(max=0).contiguous()
    w = weights.float().repeat(1, g).contiguous()                                  # [E, rows]
    navail = n_avail.to(device=q_mem.device, dtype=torch.int32).contiguous()
    lse = torch.empty((hkv, n_e, rows), dtype=torch.float32, device=q_mem.device)
    lo, hi = lo.contiguous(), hi.contiguous()
    ieee = lo.dtype == torch.float32
    lse_tiles, mass_tiles = (FLOAT32_TILES, FLOAT32_TILES) if ieee else (LSE_TILES, MASS_TILES)
    n_tiles = -(-n // mass_tiles["BN"])
    kern.row_lse_kernel[(hkv * n_e, -(-rows // lse_tiles["BR"]))](
        qp, qn, lo, hi, navail, lse, float(scaling), n_e,
        qp.stride(0), qp.stride(1), qp.stride(2), lo.stride(0), lo.stride(1), lse.stride(0), lse.stride(1),
        R=rows, D=d, D_PAD=tile_extent(d), IEEE=ieee, **lse_tiles)
    kern.block_mass_kernel[(hkv * n_e, n_tiles)](
        qp, qn, lo, hi, navail, lse, w, out, float(scaling), n_e, n,
        qp.stride(0), qp.stride(1), qp.stride(2), lo.stride(0), lo.stride(1), lse.stride(0), lse.stride(1),
        w.stride(0), out.stride(0), out.stride(1),
        R=rows, D=d, D_PAD=tile_extent(d), IEEE=ieee, **mass_tiles)
    return out


class BoundMassKernel(KernelChoice):
    """Which computation gives a batched chunk's evidence (``prefill_kernel``): ``"torch"`` always
    the reference; ``"triton"`` the Triton passes (an error where they cannot run); ``"auto"`` the
    Triton passes where they run and, checked once per device, dtype and head size on random
    bounds, agree with the reference, else the reference (with a warning naming why)."""

    def __call__(self, q_mem: torch.Tensor, weights: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                 n_avail: torch.Tensor, kv_heads: int, scaling: float, dtype: torch.dtype) -> torch.Tensor:
        if len(parts) == 1 and self._use_triton(q_mem, dtype, kv_heads):
            lo, hi = parts[0]
            return bound_mass_triton(q_mem, weights, lo.to(dtype), hi.to(dtype), n_avail, scaling)
        return bound_mass_torch(q_mem, weights, parts, n_avail, kv_heads, scaling, dtype)

    def _use_triton(self, q_mem: torch.Tensor, dtype: torch.dtype, kv_heads: int) -> bool:
        if self.choice == "torch":
            return False
        h, _, size, d = q_mem.shape
        g = h // kv_heads
        # decided once per shape, not on every layer and chunk
        return self._use_kernel((str(q_mem.device), dtype, d, g, size), q_mem.device,
                                lambda: self._agrees(q_mem.device, dtype, d, kv_heads, g, size))

    @staticmethod
    def _agrees(device: torch.device, dtype: torch.dtype, d: int, kv_heads: int, group: int, size: int) -> bool:
        """The Triton passes against the reference on random data of this shape: every execution
        block's evidence within the rounding of ``dtype`` products. The check's rows per program
        (``group x size``) are the prefill's, so the variant it compiles is one the prefill uses."""
        gen = torch.Generator(device=device).manual_seed(0)
        n_e, n = 3, 300
        q = torch.randn((kv_heads * group, n_e, size, d), generator=gen, device=device)
        keys = torch.randn((n, kv_heads, 8, d), generator=gen, device=device).to(dtype)
        lo, hi = keys.amin(2), keys.amax(2)
        w = torch.rand((n_e, size), generator=gen, device=device)
        avail = torch.tensor([n, n - 100, 7], device=device)
        want = bound_mass_torch(q, w, [(lo, hi)], avail, kv_heads, d ** -0.5, dtype).nan_to_num(0.0)
        tol = 1e-4 if dtype == torch.float32 else 3e-2

        def compare(got: torch.Tensor) -> tuple[bool, str]:
            return (torch.allclose(got, want, rtol=tol, atol=tol * float(w.sum(1).max())),
                    f"largest difference {float((got - want).abs().max()):.3g}")

        return kernel_agrees("prefill_kernel", "passes", "scoring prefill chunks",
                             lambda: bound_mass_triton(q, w, lo, hi, avail, d ** -0.5), compare)
