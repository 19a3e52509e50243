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
def _tile_weights(Q, K, vis, h, t, first_window_tile, scaling, sq0, sq1, sq2, sk0, sk1,
                  G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                  TILE: tl.constexpr, T_PAD: tl.constexpr, IEEE: tl.constexpr):
    """One tile's logits for the group's query heads (the memory's query before the window's
    tiles, the window's query in them): its largest visible logit ``mx`` ``[G_PAD]`` and
    ``p = exp(logit - mx)`` ``[G_PAD, T_PAD]`` (0 at invisible slots). The same instructions on
    the same loads in both kernels below, so both see the same bits."""
    rows = tl.arange(0, G_PAD)
    cols = tl.arange(0, D_PAD)
    in_d = cols < D
    slots = tl.arange(0, T_PAD)
    which = (t >= first_window_tile).to(tl.int32)       # 0: memory's query, 1: window's query
    q = tl.load(Q + which * sq0 + h * sq1 + rows[:, None] * sq2 + cols[None, :],
                mask=(rows[:, None] < G) & in_d[None, :], other=0.0)
    pos = t * TILE + slots
    k = tl.load(K + h * sk0 + pos[:, None] * sk1 + cols[None, :], mask=vis[:, None] & in_d[None, :], other=0.0)
    if IEEE:  # float32 buffers: float32 products, not TF32 (the reference's float32 math)
        s = tl.dot(q.to(k.dtype), tl.trans(k), input_precision="ieee") * scaling
    else:
        s = tl.dot(q.to(k.dtype), tl.trans(k)) * scaling                   # [G_PAD, T_PAD]
    s = tl.where(vis[None, :], s, float("-inf"))
    mx = tl.max(s, 1)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    p = tl.exp(s - safe[:, None])
    return mx, tl.where(vis[None, :], p, 0.0)


@triton.jit
def _tile_values(V, p, vis, h, t, sv0, sv1, D: tl.constexpr, D_PAD: tl.constexpr, TILE: tl.constexpr,
                 T_PAD: tl.constexpr, IEEE: tl.constexpr):
    """``p @ v`` over one tile's visible slots ``[G_PAD, D_PAD]`` (float32 accumulation)."""
    cols = tl.arange(0, D_PAD)
    pos = t * TILE + tl.arange(0, T_PAD)
    v = tl.load(V + h * sv0 + pos[:, None] * sv1 + cols[None, :], mask=vis[:, None] & (cols < D)[None, :], other=0.0)
    if IEEE:
        return tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return tl.dot(p.to(v.dtype), v)                                        # [G_PAD, D_PAD]


@triton.jit
def tile_stats_kernel(Q, K, V, VIS, M, L, O, scaling, first_window_tile, heads_per_row, svis,
                      sq0, sq1, sq2, sk0, sk1, sv0, sv1, sm0, sm1, sm2, so0, so1, so2,
                      G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                      TILE: tl.constexpr, T_PAD: tl.constexpr, IEEE: tl.constexpr, WITH_O: tl.constexpr):
    """``WITH_O`` False: ``m`` and ``l`` only (keys read, values not; ``O`` untouched): the
    rerank's pass, before :func:`kept_values_kernel` reads the values of the tiles it keeps."""
    h = tl.program_id(0)
    t = tl.program_id(1)
    rows = tl.arange(0, G_PAD)
    cols = tl.arange(0, D_PAD)
    slots = tl.arange(0, T_PAD)
    vis = tl.load(VIS + (h // heads_per_row) * svis + t * TILE + slots, mask=slots < TILE, other=0) != 0
    mx, p = _tile_weights(Q, K, vis, h, t, first_window_tile, scaling, sq0, sq1, sq2, sk0, sk1,
                          G, G_PAD, D, D_PAD, TILE, T_PAD, IEEE)
    ok = rows < G
    tl.store(M + h * sm0 + t * sm1 + rows * sm2, mx, mask=ok)
    tl.store(L + h * sm0 + t * sm1 + rows * sm2, tl.sum(p, 1), mask=ok)
    if WITH_O:
        acc = _tile_values(V, p, vis, h, t, sv0, sv1, D, D_PAD, TILE, T_PAD, IEEE)
        tl.store(O + h * so0 + t * so1 + rows[:, None] * so2 + cols[None, :], acc, mask=ok[:, None] & (cols < D)[None, :])


@triton.jit
def _kept_list(ORDER, i, count, t0, t1, n_tiles: tl.constexpr):
    """Entries ``i`` of a selection's kept tiles listed without the dropped candidates: the sinks'
    tiles (``0 .. t0-1``), the chosen candidates in the order the choice ranked them (``count`` of
    ``ORDER``), the window's tiles (``t1 ..``). Returns the tiles' numbers and which entries exist."""
    n_list = t0 + count + (n_tiles - t1)
    ok = i < n_list
    at = tl.minimum(tl.maximum(i - t0, 0), tl.maximum(count - 1, 0))
    cand = t0 + tl.load(ORDER + at, mask=ok & (i >= t0) & (i < t0 + count), other=0)
    ts = tl.where(i < t0, i, tl.where(i < t0 + count, cand, t1 + i - t0 - count))
    return ts, ok


@triton.jit
def kept_values_kernel(Q, K, V, VIS, ORDER, COUNT, O, scaling, first_window_tile, heads_per_row, svis, t0, t1,
                       heads_per_sel, n_sel, sq0, sq1, sq2, sk0, sk1, sv0, sv1, so0, so1, so2,
                       n_tiles: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
                       D_PAD: tl.constexpr, TILE: tl.constexpr, T_PAD: tl.constexpr, IEEE: tl.constexpr):
    """``o`` of the tiles the step keeps (sinks, window, the chosen candidates: what the combine
    reads), the others' left as they are and their keys and values not read: the values' pass
    after the rerank. One program per KV head and entry of the kept tiles' list
    (:func:`_kept_list`; entries past its length do nothing), so the dropped candidates' tiles
    take no program. ``p`` as :func:`tile_stats_kernel` computed it (same code, same loads), so
    ``o`` matches the ``m`` and ``l`` of that pass bit for bit."""
    h = tl.program_id(0)
    i = tl.program_id(1)
    rows = tl.arange(0, G_PAD)
    cols = tl.arange(0, D_PAD)
    slots = tl.arange(0, T_PAD)
    row = h // heads_per_row
    sel = row * n_sel + (h % heads_per_row) // heads_per_sel
    count = tl.load(COUNT + sel)
    t, ok = _kept_list(ORDER + sel * (t1 - t0), i, count, t0, t1, n_tiles)
    t = tl.where(ok, t, 0)
    in_tile = (slots < TILE) & (tl.zeros([T_PAD], tl.int32) + ok.to(tl.int32) != 0)
    vis = tl.load(VIS + row * svis + t * TILE + slots, mask=in_tile, other=0) != 0
    mx, p = _tile_weights(Q, K, vis, h, t, first_window_tile, scaling, sq0, sq1, sq2, sk0, sk1,
                          G, G_PAD, D, D_PAD, TILE, T_PAD, IEEE)
    acc = _tile_values(V, p, vis, h, t, sv0, sv1, D, D_PAD, TILE, T_PAD, IEEE)
    okr = (rows < G) & (tl.zeros([G_PAD], tl.int32) + ok.to(tl.int32) != 0)
    tl.store(O + h * so0 + t * so1 + rows[:, None] * so2 + cols[None, :], acc, mask=okr[:, None] & (cols < D)[None, :])


@triton.jit
def tile_lse_kernel(M, L, TOT, sm0, sm1, sm2, n_tiles: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr,
                    CH: tl.constexpr):
    """Per KV head and query head: ``log sum_t l_t exp(m_t)`` over every tile (the step's softmax
    normaliser), tiles taken ``CH`` at a time in a fixed order (the same sums for any number of rows)."""
    h = tl.program_id(0)
    gs = tl.arange(0, G_PAD)
    okg = gs < G
    run_m = tl.full([G_PAD], float("-inf"), tl.float32)
    run_s = tl.zeros([G_PAD], tl.float32)
    for start in range(0, n_tiles, CH):
        ts = start + tl.arange(0, CH)
        msk = (ts < n_tiles)[:, None] & okg[None, :]
        mm = tl.load(M + h * sm0 + ts[:, None] * sm1 + gs[None, :] * sm2, mask=msk, other=float("-inf"))
        ll = tl.load(L + h * sm0 + ts[:, None] * sm1 + gs[None, :] * sm2, mask=msk, other=0.0)
        new_m = tl.maximum(run_m, tl.max(mm, 0))
        safe = tl.where(new_m == float("-inf"), 0.0, new_m)
        run_s = run_s * tl.exp(run_m - safe) + tl.sum(ll * tl.exp(mm - safe[None, :]), 0)
        run_m = new_m
    safe = tl.where(run_m == float("-inf"), 0.0, run_m)
    tot = tl.where(run_s > 0, safe + tl.log(run_s), float("-inf"))
    tl.store(TOT + h * G + gs, tot, mask=okg)


@triton.jit
def candidate_mass_kernel(M, L, TOT, OK, EDGE, MASS, t0, n_cand, sm0, sm1, sm2, heads_per_sel: tl.constexpr,
                          G: tl.constexpr, G_PAD: tl.constexpr, CH: tl.constexpr):
    """Per selection (a row's KV heads together, or one KV head) and ``CH`` candidates: each
    candidate's attention mass under full attention, ``sum_heads sum_g l exp(m - total)``; edge
    candidates +inf (always kept), unfilled ones -inf. Heads added in a fixed order."""
    p = tl.program_id(0)
    cs = tl.program_id(1) * CH + tl.arange(0, CH)
    inc = cs < n_cand
    gs = tl.arange(0, G_PAD)
    okg = gs < G
    acc = tl.zeros([CH], tl.float32)
    for j in range(0, heads_per_sel):
        h = p * heads_per_sel + j
        tot = tl.load(TOT + h * G + gs, mask=okg, other=0.0)
        msk = inc[:, None] & okg[None, :]
        at = h * sm0 + (t0 + cs)[:, None] * sm1 + gs[None, :] * sm2
        mm = tl.load(M + at, mask=msk, other=float("-inf"))
        ll = tl.load(L + at, mask=msk, other=0.0)
        acc += tl.sum(ll * tl.exp(mm - tot[None, :]), 1)
    ok = tl.load(OK + p * n_cand + cs, mask=inc, other=0) != 0
    edge = tl.load(EDGE + p * n_cand + cs, mask=inc, other=0) != 0
    mass = tl.where(edge, float("inf"), acc)
    mass = tl.where(ok, mass, float("-inf"))
    tl.store(MASS + p * n_cand + cs, mass, mask=inc)


@triton.jit
def combine_kernel(M, L, O, CHOSEN, ORDER, COUNT, OUT, WOUT, t0, t1, hkv, heads_per_sel, n_sel,
                   sm0, sm1, sm2, so0, so1, so2, n_tiles: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
                   D_PAD: tl.constexpr, CH: tl.constexpr, TRACK: tl.constexpr):
    """Per KV head (of every row) and query head: the softmax over the kept tiles (sinks, window,
    the chosen candidates) from the tiles' statistics, ``out = sum_kept exp(m - max) o / sum_kept
    exp(m - max) l``, reading only the kept tiles through their list (:func:`_kept_list`: ~100 of
    ~750 on the 8B shape, so two loop iterations of ``CH`` instead of one per ``CH`` tiles); with
    ``TRACK`` each tile's share of it (the answer's sources: every tile written, 0 where dropped).
    Entries taken ``CH`` at a time in a fixed order (the same sums for any number of rows)."""
    h = tl.program_id(0)
    g = tl.program_id(1)
    row = h // hkv
    s = (h % hkv) // heads_per_sel
    sel = row * n_sel + s
    order = ORDER + sel * (t1 - t0)
    count = tl.load(COUNT + sel)
    n_list = t0 + count + (n_tiles - t1)
    ds = tl.arange(0, D_PAD)
    okd = ds < D
    mx = float("-inf")
    for start in range(0, n_list, CH):
        ts, ok = _kept_list(order, start + tl.arange(0, CH), count, t0, t1, n_tiles)
        mm = tl.load(M + h * sm0 + ts * sm1 + g * sm2, mask=ok, other=float("-inf"))
        mx = tl.maximum(mx, tl.max(mm, 0))
    den = 0.0
    acc = tl.zeros([D_PAD], tl.float32)
    for start in range(0, n_list, CH):
        ts, ok = _kept_list(order, start + tl.arange(0, CH), count, t0, t1, n_tiles)
        mm = tl.load(M + h * sm0 + ts * sm1 + g * sm2, mask=ok, other=float("-inf"))
        ll = tl.load(L + h * sm0 + ts * sm1 + g * sm2, mask=ok, other=0.0)
        coef = tl.exp(mm - mx)
        den += tl.sum(coef * ll, 0)
        oo = tl.load(O + h * so0 + ts[:, None] * so1 + g * so2 + ds[None, :], mask=ok[:, None] & okd[None, :], other=0.0)
        acc += tl.sum(coef[:, None] * oo, 0)
    tl.store(OUT + (h * G + g) * D + ds, acc / den, mask=okd)
    if TRACK:
        chosen = CHOSEN + sel * (t1 - t0)
        for start in range(0, n_tiles, CH):
            ts = start + tl.arange(0, CH)
            cand = (ts >= t0) & (ts < t1)
            keep = (ts < n_tiles) & ((ts < t0) | (ts >= t1) | (tl.load(chosen + ts - t0, mask=cand, other=0) != 0))
            mm = tl.load(M + h * sm0 + ts * sm1 + g * sm2, mask=keep, other=float("-inf"))
            ll = tl.load(L + h * sm0 + ts * sm1 + g * sm2, mask=keep, other=0.0)
            tl.store(WOUT + (h * n_tiles + ts) * G + g, tl.exp(mm - mx) * ll / den, mask=ts < n_tiles)


@triton.jit
def choose_kernel(MASS, N_TAKE, CHOSEN, ORDER, COUNT, n_cand: tl.constexpr, hi, sel, sn, CH: tl.constexpr,
                  CI: tl.constexpr):
    """The rerank's choice without a sort: candidate ``j`` of a selection is chosen when fewer than
    ``min(n_take, hi)`` candidates rank before it, ranking by mass, larger first, ties to the
    earlier candidate (a stable descending sort's order; +inf edges first, -inf unfilled last).
    One program per selection and ``CH`` candidates, comparing them with all of the selection's
    ``CI`` at a time: the result is exact (counts; no arithmetic on the masses). Also the chosen
    ones as a list (``ORDER[rank] = j``, ranks being distinct) and its length ``COUNT``, which
    the combine reads instead of every candidate's flag."""
    p = tl.program_id(0)
    js = tl.program_id(1) * CH + tl.arange(0, CH)
    mj = tl.load(MASS + p * n_cand + js, mask=js < n_cand, other=0.0)
    rank = tl.zeros([CH], tl.int32)
    for start in range(0, n_cand, CI):
        ms = start + tl.arange(0, CI)
        inm = ms < n_cand
        mi = tl.load(MASS + p * n_cand + ms, mask=inm, other=0.0)
        before = (mi[None, :] > mj[:, None]) | ((mi[None, :] == mj[:, None]) & (ms[None, :] < js[:, None]))
        rank += tl.sum((before & inm[None, :]).to(tl.int32), 1)
    take = tl.minimum(tl.load(N_TAKE + (p // sel) * sn), hi)
    inj = js < n_cand
    tl.store(CHOSEN + p * n_cand + js, rank < take, mask=inj)
    tl.store(ORDER + p * n_cand + tl.minimum(rank, n_cand - 1), js, mask=inj & (rank < take))
    if tl.program_id(1) == 0:
        tl.store(COUNT + p, take)


@triton.jit
def place_kernel(K, KROT, V, QF, WINK, KEYS, VALS, VIS, QUERIES, AT_CAP, AT_W, AT_VIS, AT_Q,
                 sk0, sk1, sv0, sv1, hkv, feats: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, F_CH: tl.constexpr,
                 HAS_Q: tl.constexpr):
    """The new token's writes into one layer's buffers, one program per row and KV head: its key
    unrotated (the window's keys, ``AT_CAP``), rotated at its slot and its value (``AT_W``); the
    row's first head also marks the slot visible (``AT_VIS``) and, with ``HAS_Q``, keeps the row's
    query (``AT_Q``). Plain copies (cast to each buffer's dtype on store)."""
    i = tl.program_id(0)
    b = i // hkv
    h = i % hkv
    cols = tl.arange(0, D_PAD)
    ind = cols < D
    at_cap = tl.load(AT_CAP + i)
    at_w = tl.load(AT_W + i)
    tl.store(WINK + at_cap * D + cols, tl.load(K + b * sk0 + h * sk1 + cols, mask=ind), mask=ind)
    tl.store(KEYS + at_w * D + cols, tl.load(KROT + i * D + cols, mask=ind), mask=ind)
    tl.store(VALS + at_w * D + cols, tl.load(V + b * sv0 + h * sv1 + cols, mask=ind), mask=ind)
    if h == 0:
        tl.store(VIS + tl.load(AT_VIS + b), 1)
        if HAS_Q:
            at_q = tl.load(AT_Q + b)
            for f in range(0, feats, F_CH):
                fs = f + tl.arange(0, F_CH)
                tl.store(QUERIES + at_q * feats + fs, tl.load(QF + b * feats + fs, mask=fs < feats), mask=fs < feats)
