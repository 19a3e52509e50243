"""The Triton kernel of :func:`.rotation.rotate_triton`: rows of keys or queries rotated by
per-position rotary tables, read once in their own dtype and written once in the one asked for.

The reference (:func:`.rope.rotate`) casts to float32, multiplies, rolls, multiplies and adds
(``torch.addcmul``), then the caller casts back: five passes over float32 copies of the tensor.
In a 128K prefill of the 8B shape on an H100 those passes over the chunks' queries and window keys
were ~0.3 s of device time (docs/results/h100-session26/b/pf26.txt). Same float32 math here: the
product ``x * cos`` rounded, then one fused multiply-add of the rolled half by the signed sine, as
``addcmul`` computes it on CUDA. One program per (row, ``BLOCK_P`` positions). Imported only where it
runs (it imports Triton).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["n_pos", "s_xr", "s_xp", "s_cp"])
def rotate_rows_kernel(X, COS, SIN, OUT, n_pos, s_xr, s_xp, s_cp,
                       BLOCK_P: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr):
    """Row ``r`` of ``X`` ``[R, n_pos, D]`` (strides ``s_xr``, ``s_xp``, 1) at positions ``p`` to
    ``OUT[r, p]`` (contiguous ``[R, n_pos, D]``): ``x * cos[p] + roll(x, D / 2) * sin[p]`` in float32
    (``COS`` / ``SIN`` ``[n_pos, D]``, row stride ``s_cp``, the sine signed as :func:`.rope.signed_sin`)."""
    r = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, D_PAD)
    mask = (p < n_pos)[:, None] & (c < D)[None, :]
    half = D // 2
    partner = tl.where(c < half, c + half, c - half)          # roll by D / 2 along the head
    row = X + r.to(tl.int64) * s_xr + p[:, None].to(tl.int64) * s_xp
    x = tl.load(row + c[None, :], mask=mask, other=0.0).to(tl.float32)
    xr = tl.load(row + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    at = p[:, None] * s_cp + c[None, :]
    cs = tl.load(COS + at, mask=mask, other=0.0)
    sn = tl.load(SIN + at, mask=mask, other=0.0)
    y = tl.fma(xr, sn, x * cs)
    out = OUT + r.to(tl.int64) * n_pos * D + p[:, None].to(tl.int64) * D + c[None, :]
    tl.store(out, y.to(OUT.dtype.element_ty), mask=mask)
