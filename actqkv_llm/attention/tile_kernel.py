"""The Triton kernel of :func:`.tile_stats.tile_stats_triton`: per KV head and tile of a static
decode buffer, the tile's softmax statistics (``m``, ``l``, ``o``) for one group of query heads.

One program per (KV head, tile); KV heads of several sequences (decode rows) follow one
another, each sequence reading its own row of the visibility mask. Memory tiles are scored with the memory's query, the window's
tiles with the window's query. Invisible slots are masked out of the loads, so a layer's unused
candidate slots are never read. Products in the keys' dtype with float32 accumulation (float32 keys: full float32 products, not TF32).
Imported only where it runs (it imports Triton).
"""

import triton
import triton.language as tl


@triton.jit
def tile_stats_kernel(Q, K, V, VIS, M, L, O, scaling, first_window_tile, heads_per_row, svis,
                      sq0, sq1, sq2, sk0, sk1, sv0, sv1, sm0, sm1, sm2, so0, so1, so2,
                      G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                      TILE: tl.constexpr, T_PAD: tl.constexpr, IEEE: tl.constexpr):
    h = tl.program_id(0)
    t = tl.program_id(1)
    rows = tl.arange(0, G_PAD)
    cols = tl.arange(0, D_PAD)
    in_d = cols < D
    slots = tl.arange(0, T_PAD)
    which = (t >= first_window_tile).to(tl.int32)       # 0: memory's query, 1: window's query
    q = tl.load(Q + which * sq0 + h * sq1 + rows[:, None] * sq2 + cols[None, :],
                mask=(rows[:, None] < G) & in_d[None, :], other=0.0)
    pos = t * TILE + slots
    in_tile = slots < TILE
    vis = tl.load(VIS + (h // heads_per_row) * svis + pos, mask=in_tile, other=0) != 0
    k = tl.load(K + h * sk0 + pos[:, None] * sk1 + cols[None, :], mask=vis[:, None] & in_d[None, :], other=0.0)
    if IEEE:  # float32 buffers: float32 products, not TF32 (the reference's float32 math)
        s = tl.dot(q.to(k.dtype), tl.trans(k), input_precision="ieee") * scaling
    else:
        s = tl.dot(q.to(k.dtype), tl.trans(k)) * scaling                   # [G_PAD, T_PAD]
    s = tl.where(vis[None, :], s, float("-inf"))
    mx = tl.max(s, 1)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    p = tl.exp(s - safe[:, None])
    p = tl.where(vis[None, :], p, 0.0)
    v = tl.load(V + h * sv0 + pos[:, None] * sv1 + cols[None, :], mask=vis[:, None] & in_d[None, :], other=0.0)
    if IEEE:
        acc = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v)                                     # [G_PAD, D_PAD]
    ok = rows < G
    tl.store(M + h * sm0 + t * sm1 + rows * sm2, mx, mask=ok)
    tl.store(L + h * sm0 + t * sm1 + rows * sm2, tl.sum(p, 1), mask=ok)
    tl.store(O + h * so0 + t * so1 + rows[:, None] * so2 + cols[None, :], acc, mask=ok[:, None] & in_d[None, :])

