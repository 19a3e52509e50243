"""The Triton kernel of :func:`.block_gather.gather_triton`: a batched prefill chunk's picked blocks
copied from the layer's block store into the attention's key and value buffers, the keys rotated
at their true positions on the way (memory at exact positions).

The reference reads each picked block once to gather it, then rotates the gathered keys in float32
(a cast, a roll, two products: five passes over a tensor of the picks' size) and copies keys and
values again into the buffer the attention reads: on the 8B shape at 32K on an H100 the rotation
alone was 0.19 s of a 1.9-2.1 s prefill (docs/results/h100-session23/). Here every picked block is
read once and written once, in place. One program per (KV head, picked slot). A decode step's new scoring
reads its candidates with it too, from a document's store and the session's own (static_decode.py).
Imported only where it runs (it imports Triton).
"""

import triton
import triton.language as tl


# ids' row stride unspecialised too: a decode graph's check (3 candidates) and its steps (hundreds)
# then use one compiled variant, none compiled first inside a step
@triton.jit(do_not_specialize=["n_sink", "kmax", "n_first", "s_ih"])
def gather_blocks_kernel(K, V, K2, V2, IDS, COS, SIN, KO, VO, n_sink, kmax, n_first,
                         s_kn, s_kh, s_kt, s2_kn, s2_kh, s2_kt, s_ih, s_oe, s_oh, s_ot, s_c,
                         B: tl.constexpr, B_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                         ROTATE: tl.constexpr, TWO: tl.constexpr):
    """Slot ``j`` of execution block ``e`` (program ``(h, e * kmax + j)``): block ``IDS[h, e * kmax + j]``
    of KV head ``h`` to rows ``j * B ..`` of ``KO[e, h]`` / ``VO[e, h]``; with ``ROTATE`` its keys
    as ``x * cos + roll(x, D / 2) * signed_sin`` at positions ``n_sink + block * B + t`` (float32 math).
    With ``TWO`` the blocks from ``n_first`` on are those of a second store (``K2`` / ``V2``: a
    session's own blocks after its document's), read at ``block - n_first``."""
    h = tl.program_id(0)
    slot = tl.program_id(1)
    e, j = slot // kmax, slot % kmax
    blk = tl.load(IDS + h * s_ih + slot)
    t = tl.arange(0, B_PAD)
    c = tl.arange(0, D_PAD)
    mask = (t < B)[:, None] & (c < D)[None, :]
    src = blk * s_kn + h * s_kh + t[:, None] * s_kt
    src2 = (blk - n_first) * s2_kn + h * s2_kh + t[:, None] * s2_kt
    second = ((t * 0 + blk) >= n_first)[:, None]                  # [B_PAD, 1]: in the second store
    dst = e * s_oe + h * s_oh + (j * B + t)[:, None] * s_ot + c[None, :]
    tl.store(VO + dst, _either(V, V2, src, src2, c, mask, second, TWO), mask=mask)
    k = _either(K, K2, src, src2, c, mask, second, TWO)
    if ROTATE:
        half = D // 2
        partner = tl.where(c < half, c + half, c - half)          # roll by D / 2 along the head
        kr = _either(K, K2, src, src2, partner, mask, second, TWO).to(tl.float32)
        pos = n_sink + blk * B + t
        at = pos[:, None] * s_c + c[None, :]
        cs = tl.load(COS + at, mask=mask, other=0.0)
        sn = tl.load(SIN + at, mask=mask, other=0.0)
        k = k.to(tl.float32) * cs + kr * sn
    tl.store(KO + dst, k.to(KO.dtype.element_ty), mask=mask)


@triton.jit
def _either(X, X2, src, src2, cols, mask, second, TWO: tl.constexpr):
    """Columns ``cols`` of the block at ``src`` in the first store, or at ``src2`` in the second
    where ``second`` (``TWO`` only); each load masked to the store it reads."""
    if TWO:
        a = tl.load(X + src + cols[None, :], mask=mask & (second == False), other=0.0)  # noqa: E712
        b = tl.load(X2 + src2 + cols[None, :], mask=mask & second, other=0.0)
        return tl.where(second, b, a)
    return tl.load(X + src + cols[None, :], mask=mask, other=0.0)
