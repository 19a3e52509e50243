"""The Triton kernels of :func:`.bound_mass.bound_mass_triton`: a batched prefill chunk's block
evidence from key bounds without the ``[rows, blocks]`` logits ever reaching memory.

Per KV head ``k`` and execution block ``e`` the rows are the group's query heads times the block's
tokens (``r = g * S + s``). A row's logit for memory block ``n`` is Quest's bound
``q+ . hi_n + q- . lo_n`` times the model's scaling; the evidence of block ``n`` is
``sum_r w_r softmax_n(logits_r)[n]`` over the blocks ``e`` may see (``n < n_avail[e]``).

Two passes over the same products: :func:`row_lse_kernel` streams every row over the visible
blocks for its log-sum-exp; :func:`block_mass_kernel` recomputes each tile of logits and adds
``w_r exp(logit - lse_r)`` over the rows. Twice the products, none of the traffic: the PyTorch path
writes and reads ``[rows, blocks]`` in float32 about five times, which at a million tokens is most
of a prefill chunk's time.

Loop bounds are compile-time constants (Triton 3.6's interpreter cannot loop over a runtime int):
the row tiles are fixed per engine, the block tiles are rounded up to a power of two
(``n_tiles_pow2``), so a growing memory compiles a handful of variants, and tiles past a row's
visible blocks are skipped. The arguments that change with the memory's size or the chunk's count
of execution blocks are not specialised (``do_not_specialize``): Triton would otherwise compile
again whenever their divisibility by 16 changes. Imported only where it runs (it imports Triton).
"""

import triton
import triton.language as tl


@triton.jit
def _rows(QP, QN, at, in_rows, D: tl.constexpr, D_PAD: tl.constexpr):
    """The positive and negative parts of ``BR`` query rows (``at``: their offsets ``[BR, 1]``)."""
    cols = tl.arange(0, D_PAD)
    mask = in_rows[:, None] & (cols < D)[None, :]
    return (tl.load(QP + at + cols[None, :], mask=mask, other=0.0),
            tl.load(QN + at + cols[None, :], mask=mask, other=0.0))


@triton.jit
def _logits(qp, qn, LO, HI, n0, n_vis, scaling, s_bn, s_bh, k,
            D: tl.constexpr, D_PAD: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr):
    """One tile of scaled bound logits ``[BR, BN]`` for the loaded rows ``qp`` / ``qn`` against
    blocks ``n0 ..`` of KV head ``k`` (-inf past the visible ones)."""
    cols = tl.arange(0, D_PAD)
    blocks = n0 + tl.arange(0, BN)
    vis = blocks < n_vis
    bmask = vis[:, None] & (cols < D)[None, :]
    hi = tl.load(HI + blocks[:, None] * s_bn + k * s_bh + cols[None, :], mask=bmask, other=0.0)
    lo = tl.load(LO + blocks[:, None] * s_bn + k * s_bh + cols[None, :], mask=bmask, other=0.0)
    if IEEE:  # float32 bounds: float32 products, not TF32 (the reference's float32 math)
        u = tl.dot(qp, tl.trans(hi), input_precision="ieee") + tl.dot(qn, tl.trans(lo), input_precision="ieee")
    else:
        u = tl.dot(qp, tl.trans(hi)) + tl.dot(qn, tl.trans(lo))
    return tl.where(vis[None, :], u * scaling, float("-inf"))


@triton.jit(do_not_specialize=["scaling", "n_e"])
def row_lse_kernel(QP, QN, LO, HI, NAVAIL, LSE, scaling, n_e,
                   s_qk, s_qe, s_qr, s_bn, s_bh, s_lk, s_le,
                   R: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, BR: tl.constexpr,
                   BN: tl.constexpr, n_tiles_pow2: tl.constexpr, IEEE: tl.constexpr):
    """One program per (KV head x execution block, tile of ``BR`` rows): each row's log-sum-exp of
    its scaled bound logits over the visible blocks (-inf where none is visible)."""
    ke = tl.program_id(0)
    k, e = ke // n_e, ke % n_e
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    in_rows = rows < R
    n_vis = tl.load(NAVAIL + e)
    qp, qn = _rows(QP, QN, k * s_qk + e * s_qe + rows[:, None] * s_qr, in_rows, D, D_PAD)
    m = tl.full([BR], float("-inf"), tl.float32)
    total = tl.zeros([BR], tl.float32)
    for t in range(0, n_tiles_pow2):
        n0 = t * BN
        if n0 < n_vis:
            u = _logits(qp, qn, LO, HI, n0, n_vis, scaling, s_bn, s_bh, k, D, D_PAD, BN, IEEE)
            new_m = tl.maximum(m, tl.max(u, 1))
            total = total * tl.exp(m - new_m) + tl.sum(tl.exp(u - new_m[:, None]), 1)
            m = new_m
    lse = tl.where(total > 0, m + tl.log(total), float("-inf"))
    tl.store(LSE + k * s_lk + e * s_le + rows, lse, mask=in_rows)


@triton.jit(do_not_specialize=["scaling", "n_e", "n_blocks", "s_oe", "s_ok"])
def block_mass_kernel(QP, QN, LO, HI, NAVAIL, LSE, W, OUT, scaling, n_e, n_blocks,
                      s_qk, s_qe, s_qr, s_bn, s_bh, s_lk, s_le, s_we, s_oe, s_ok,
                      R: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, BR: tl.constexpr,
                      BN: tl.constexpr, IEEE: tl.constexpr):
    """One program per (KV head x execution block, tile of ``BN`` blocks): each block's evidence
    ``sum_r w_r exp(logit_rn - lse_r)``; 0 for blocks the execution block may not see."""
    ke = tl.program_id(0)
    k, e = ke // n_e, ke % n_e
    n0 = tl.program_id(1) * BN
    blocks = n0 + tl.arange(0, BN)
    n_vis = tl.load(NAVAIL + e)
    acc = tl.zeros([BN], tl.float32)
    if n0 < n_vis:
        for r0 in range(0, R, BR):
            rows = r0 + tl.arange(0, BR)
            in_rows = rows < R
            qp, qn = _rows(QP, QN, k * s_qk + e * s_qe + rows[:, None] * s_qr, in_rows, D, D_PAD)
            u = _logits(qp, qn, LO, HI, n0, n_vis, scaling, s_bn, s_bh, k, D, D_PAD, BN, IEEE)
            lse = tl.load(LSE + k * s_lk + e * s_le + rows, mask=in_rows, other=float("-inf"))
            w = tl.load(W + e * s_we + rows, mask=in_rows, other=0.0)
            ok = in_rows & (lse > float("-inf"))
            safe = tl.where(ok, lse, 0.0)
            p = tl.where(ok[:, None], tl.exp(u - safe[:, None]), 0.0)
            acc += tl.sum(p * w[:, None], 0)
    tl.store(OUT + e * s_oe + k * s_ok + blocks, acc, mask=blocks < n_blocks)
