"""The Triton kernels of a batched prefill chunk's token weights (:class:`.probe.ProbeKernel`):
ActQKV's activation statistics per execution block and every token's activation bias, reading the
chunk's queries ``[H, T, d]`` (model dtype) twice instead of writing and reading ``[T, H*d]`` float32
copies about a dozen times (the PyTorch path: 0.10 s of a 32K prefill's 1.53 s of device time on
the 8B shape, H100, docs/benchmarks.md twenty-third session).

:func:`block_moments_kernel`: per execution block ``e`` and query head, the sums of ``x - shift``
and ``(x - shift)^2`` over the block's tokens (``shift``: a per-feature value near the mean, as
:meth:`ActivationStats.update_blocks` shifts). :func:`token_bias_kernel`: per token, the mean over
features of ``(q - mean_e)^2 * inv_e`` with its execution block's statistics (``inv = 1 / (var +
floor)``). The running sums across blocks (``[E, H*d]``) stay in PyTorch. Imported only where it
runs (it imports Triton).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["n_tok", "size"])
def block_moments_kernel(Q, SHIFT, S1, S2, n_tok, size, s_qh, s_qt, s_se,
                         D: tl.constexpr, D_PAD: tl.constexpr, BT: tl.constexpr):
    """One program per (execution block, query head): ``S1[e, h*D + j] = sum_t (q - shift)``,
    ``S2[...] = sum_t (q - shift)^2`` over the block's tokens ``t < n_tok``."""
    e = tl.program_id(0)
    h = tl.program_id(1)
    cols = tl.arange(0, D_PAD)
    in_cols = cols < D
    shift = tl.load(SHIFT + h * D + cols, mask=in_cols, other=0.0)
    s1 = tl.zeros([D_PAD], tl.float32)
    s2 = tl.zeros([D_PAD], tl.float32)
    t0 = e * size
    stop = tl.minimum(t0 + size, n_tok)
    while t0 < stop:
        toks = t0 + tl.arange(0, BT)
        mask = (toks < stop)[:, None] & in_cols[None, :]
        x = tl.load(Q + h * s_qh + toks[:, None] * s_qt + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.where(mask, x - shift[None, :], 0.0)
        s1 += tl.sum(x, 0)
        s2 += tl.sum(x * x, 0)
        t0 += BT
    tl.store(S1 + e * s_se + h * D + cols, s1, mask=in_cols)
    tl.store(S2 + e * s_se + h * D + cols, s2, mask=in_cols)


@triton.jit(do_not_specialize=["n_tok", "size", "n_heads"])
def token_bias_kernel(Q, MEAN, INV, OUT, n_tok, size, n_heads, s_qh, s_qt, s_se, s_oe,
                      D: tl.constexpr, D_PAD: tl.constexpr, BT: tl.constexpr):
    """One program per (execution block, tile of ``BT`` of its tokens): each token's activation bias
    against its block's statistics, ``mean_f (q_f - MEAN[e, f])^2 * INV[e, f]``; 0 past the chunk."""
    e = tl.program_id(0)
    r = tl.program_id(1) * BT + tl.arange(0, BT)
    toks = e * size + r
    in_rows = (r < size) & (toks < n_tok)
    cols = tl.arange(0, D_PAD)
    in_cols = cols < D
    mask = in_rows[:, None] & in_cols[None, :]
    acc = tl.zeros([BT], tl.float32)
    h = 0
    while h < n_heads:   # a while loop: Triton's interpreter cannot range over a runtime int
        x = tl.load(Q + h * s_qh + toks[:, None] * s_qt + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + e * s_se + h * D + cols, mask=in_cols, other=0.0)
        inv = tl.load(INV + e * s_se + h * D + cols, mask=in_cols, other=0.0)
        dev = x - mean[None, :]
        acc += tl.sum(tl.where(mask, dev * dev * inv[None, :], 0.0), 1)
        h += 1
    tl.store(OUT + e * s_oe + r, acc / (n_heads * D), mask=r < size)
