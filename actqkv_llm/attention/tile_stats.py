"""Softmax statistics of one decode query per tile of a static key buffer.

The static decode step (:mod:`.static_decode`) keeps, per layer, every key and value a step may
read in one buffer laid out in tiles of ``block_size`` slots: ``[sinks | held candidates | window]``
(each region padded to whole tiles, unused slots invisible). One pass over the buffer gives, per
KV head, tile and query head of the group, the tile's softmax statistics:

* ``m``: the largest visible logit, ``l``: ``sum exp(logit - m)``, ``o``: ``sum exp(logit - m) v``.

From these alone the step reranks the candidates (a candidate's attention mass under full
attention is ``sum_g exp(m + log l - lse)``) and attends to the kept tiles (``out = sum_kept
exp(m - M) o / sum_kept exp(m - M) l``): the flash-decoding split, with the split at the memory's
own blocks. Tiles before ``first_window_tile`` are scored with the memory's query (rotated where
memory sits), the window's tiles with the window's query (rotated at the new token's slot; the
window's keys at their slots), as the reference does.

The Triton kernel (:func:`tile_stats_triton`) reads only the visible slots (a layer's unused
candidate slots cost nothing) and replaces the step's two products over the whole buffer and its
full-width elementwise passes. :func:`tile_stats_torch` is the same contract in plain PyTorch: the
yardstick :func:`check_triton` holds the kernel to on the buffers' own shapes before any step uses
it, and the tests'. (Without the kernel the step itself takes one dense softmax instead, which
measured faster in PyTorch ops than these statistics: docs/benchmarks.md.)

The static step runs the kernel in two passes: keys only (``m`` and ``l``, for the rerank), then,
once the rerank has chosen, ``o`` of the kept tiles only (:func:`kept_values_triton`: sinks, window
and the chosen candidates, ~100 of ~800 tiles per layer on the 8B shape), so the values of the
candidates it drops are never read. The rerank's masses (:func:`candidate_mass_triton`: each head's total, then each candidate's mass
summed over the heads of a selection) and the combine (:func:`combine_triton`) are Triton kernels
too, with :func:`candidate_mass_torch` and :func:`combine_torch` as their yardsticks, and so is the
rerank's choice between them (:func:`choose_triton`: each candidate's rank counted by comparing
masses, :func:`choose_torch`'s stable sort without sorting; the same choice exactly). Their sums run
in a fixed order per program, so a decode row's results do not depend on how many rows run
beside it (PyTorch's reductions choose their strategy from the whole tensor's shape): answers
decoded together are the answers decoded alone.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..devices import tile_extent

# tiles (or candidates) a kernel program takes per loop iteration: the order its sums run in
CHUNK = 64
CHOOSE_CH, CHOOSE_CI = CHUNK // 2, 4 * CHUNK   # choose_kernel: candidates ranked per program, compared per pass
# tile_lse_kernel's tiles per loop iteration: every tile of the 8B shape's buffer (~750) at once (a
# program per KV head; with 64 a time, twelve dependent iterations)
LSE_CHUNK = 1024


class ChosenList:
    """A rerank's choice as a list (:func:`choose_triton` writes it beside the flags): per selection
    ``[rows, S]``, the chosen candidates' numbers (``order [rows, S, M]`` int32, the first ``count``
    entries valid), so the combine reads the kept tiles without scanning every candidate's flag."""

    def __init__(self, rows: int, sel: int, n_cand: int, device: torch.device | str):
        self.order = torch.zeros((rows, sel, n_cand), dtype=torch.int32, device=device)
        self.count = torch.zeros((rows, sel), dtype=torch.int32, device=device)

    def rows(self, n: int) -> "ChosenList":
        """The first ``n`` rows (views)."""
        view = ChosenList.__new__(ChosenList)
        view.order, view.count = self.order[:n], self.count[:n]
        return view

    def check(self, rows: int, sel: int, n_cand: int) -> None:
        if self.order.shape != (rows, sel, n_cand) or not self.order.is_contiguous() or not self.count.is_contiguous():
            raise ValueError(f"a chosen list of shape {tuple(self.order.shape)} does not fit {rows} x {sel} x {n_cand}")

    @classmethod
    def of(cls, chosen: torch.Tensor) -> "ChosenList":
        """The list of a choice given as flags ``[rows, S, M]`` (ascending candidate order)."""
        rows, sel, n_cand = chosen.shape
        kept = cls(rows, sel, n_cand, chosen.device)
        kept.order.copy_(torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True))
        kept.count.copy_(chosen.sum(-1))
        return kept


def tile_stats_torch(qs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                     first_window_tile: int, tile: int, scaling: float, softcap: float | None,
                     product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """qs ``[2, N, G, d]`` (memory's query, window's query); keys/values ``[N, W, d]`` with
    ``W = n_tiles x tile``; visible ``[W]`` bool, or ``[R, W]`` for ``R`` sequences whose KV heads
    follow one another along ``N`` (``N = R x Hkv``: a batch of decode rows). Returns float32
    ``m, l [N, n_tiles, G]`` and ``o [N, n_tiles, G, d]`` (``m = -inf, l = 0, o = 0`` for a tile with
    nothing visible), and with a softcap the uncapped logits' ``log sum exp`` per tile
    ``[N, n_tiles, G]`` as a fourth value (the rerank weighs candidates by uncapped logits), else None."""
    n, width, d = keys.shape
    g = qs.shape[2]
    w0 = first_window_tile * tile
    raw = torch.cat([product(qs[0], keys[:, :w0].transpose(1, 2)),
                     product(qs[1], keys[:, w0:].transpose(1, 2))], -1) * scaling       # [N, G, W]
    hidden = ~_per_head(visible, n)
    att = (torch.tanh(raw / softcap) * softcap if softcap else raw).masked_fill(hidden, float("-inf"))
    n_t = width // tile
    s = att.view(n, g, n_t, tile)
    m = s.amax(-1)                                                                       # [N, G, T]
    p = torch.exp(s - torch.where(torch.isinf(m), torch.zeros_like(m), m)[..., None])
    l = p.sum(-1)
    o = torch.einsum("hgtb,htbd->hgtd", p, values.view(n, n_t, tile, d).to(p.dtype))
    raw_lse = None
    if softcap:
        raw_lse = torch.logsumexp(raw.masked_fill(hidden, float("-inf")).view(n, g, n_t, tile), -1)
        raw_lse = raw_lse.transpose(1, 2)
    return m.transpose(1, 2), l.transpose(1, 2), o.transpose(1, 2), raw_lse


def _visibility_rows(visible: torch.Tensor, n: int) -> torch.Tensor:
    """``[W]`` or ``[R, W]`` visibility -> ``[R, W]``, checked against ``N = n`` KV heads."""
    rows = visible.reshape(-1, visible.shape[-1])
    if n % rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} visibility rows for {n} KV heads")
    return rows


def _per_head(visible: torch.Tensor, n: int) -> torch.Tensor:
    """``[W]`` or ``[R, W]`` visibility -> ``[N, 1, W]`` (each sequence's mask for its KV heads)."""
    rows = _visibility_rows(visible, n)
    return rows.repeat_interleave(n // rows.shape[0], 0)[:, None]


def tile_stats_triton(qs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                      first_window_tile: int, tile: int, scaling: float, out: tuple[torch.Tensor, ...],
                      with_values: bool = True):
    """:func:`tile_stats_torch` (without a softcap) as one Triton kernel, one program per KV head
    (of every sequence) and tile, writing into ``out = (m, l, o)`` (preallocated: the step runs inside a CUDA graph).
    Products in the keys' dtype with float32 accumulation, like the reference's bf16 products.
    ``with_values`` False: ``m`` and ``l`` only, no value read and ``o`` left as it is (the static
    step's rerank pass; :func:`kept_values_triton` then gives ``o`` of the tiles it keeps)."""
    n, width, d = keys.shape
    g = qs.shape[2]
    m, l, o = out
    rows = _check_buffers(qs, keys, values, visible, o)
    if m.stride() != l.stride():
        raise ValueError("tile_stats_triton needs m and l laid out alike")
    n_t = width // tile
    _kernels().tile_stats_kernel[(n, n_t)](
        qs, keys, values, rows, m, l, o, scaling, first_window_tile, n // rows.shape[0], rows.stride(0),
        qs.stride(0), qs.stride(1), qs.stride(2), keys.stride(0), keys.stride(1),
        values.stride(0), values.stride(1), m.stride(0), m.stride(1), m.stride(2), o.stride(0), o.stride(1), o.stride(2),
        G=g, G_PAD=tile_extent(g), D=d, D_PAD=tile_extent(d), TILE=tile, T_PAD=tile_extent(tile),
        IEEE=keys.dtype == torch.float32, WITH_O=with_values,
    )
    return m, l, o, None


def kept_values_triton(qs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                       kept: "ChosenList", most: int, first_window_tile: int, tile: int, scaling: float, t0: int,
                       t1: int, o: torch.Tensor) -> torch.Tensor:
    """``o`` (:func:`tile_stats_torch`'s third value) of the tiles a step keeps, written into ``o``
    ``[N, T, G, d]``: sinks and window (tiles outside ``t0 .. t1-1``) and the candidates ``kept``
    lists (at most ``most`` per selection); the other tiles' keys and values are not read and
    their ``o`` is left as it is (the combine reads only kept tiles). After
    :func:`tile_stats_triton` with ``with_values=False``, the two read each kept tile's keys twice
    and every other tile's values never: on the 8B shape a step reranks ~736 candidate blocks per
    layer and keeps at most ~92 of them."""
    n, width, d = keys.shape
    g = qs.shape[2]
    rows = _check_buffers(qs, keys, values, visible, o)
    n_rows, sel, n_cand = rows.shape[0], kept.order.shape[1], t1 - t0
    kept.check(n_rows, sel, n_cand)
    n_tiles = width // tile
    _kernels().kept_values_kernel[(n, t0 + min(most, n_cand) + n_tiles - t1)](
        qs, keys, values, rows, kept.order, kept.count, o, scaling, first_window_tile, n // n_rows, rows.stride(0),
        t0, t1, n // n_rows // sel, sel, qs.stride(0), qs.stride(1), qs.stride(2), keys.stride(0), keys.stride(1),
        values.stride(0), values.stride(1), o.stride(0), o.stride(1), o.stride(2),
        n_tiles=n_tiles, G=g, G_PAD=tile_extent(g), D=d, D_PAD=tile_extent(d), TILE=tile, T_PAD=tile_extent(tile),
        IEEE=keys.dtype == torch.float32,
    )
    return o


def _check_buffers(qs, keys, values, visible, o) -> torch.Tensor:
    """The visibility as rows (:func:`_visibility_rows`), after checking the unit strides the kernels assume."""
    rows = _visibility_rows(visible, keys.shape[0])
    if o.stride(-1) != 1 or keys.stride(-1) != 1 or values.stride(-1) != 1 or qs.stride(-1) != 1 or rows.stride(-1) != 1:
        raise ValueError("the tile kernels need unit strides along d")
    return rows


def candidate_mass_torch(m: torch.Tensor, l: torch.Tensor, ok: torch.Tensor, edge: torch.Tensor,
                         t0: int, t1: int) -> torch.Tensor:
    """Each held candidate's attention mass under full attention, from the tiles' statistics.

    m, l ``[N, T, G]`` (``N = rows x Hkv``); candidates are tiles ``t0 .. t1-1``; ok/edge ``[rows, S,
    M]`` bool (``S`` selections per row: 1, or one per KV head). Returns float32 ``[rows, S, M]``:
    ``sum over the selection's heads and query heads of exp(tile lse - the head's total lse)``,
    +inf for edge candidates (always kept), -inf for unfilled ones."""
    n = m.shape[0]
    rows, sel, n_cand = ok.shape
    lse = m + l.log()                      # -inf for an empty tile (m = -inf, l = 0)
    mass = torch.exp(lse[:, t0:t1] - torch.logsumexp(lse, 1, keepdim=True)).sum(-1)           # [N, M]
    mass = mass.view(rows, sel, n // rows // sel, n_cand).sum(2)
    return mass.masked_fill(edge, float("inf")).masked_fill(~ok, float("-inf"))


def kept_tiles(chosen: torch.Tensor, n: int, n_tiles: int, t0: int, t1: int) -> torch.Tensor:
    """Which tiles a step keeps, ``[N, T]`` bool for ``N`` KV heads: every tile outside the
    candidates ``t0 .. t1-1`` (sinks, window), and the candidates ``chosen`` ``[rows, S, M]`` (a
    selection's choice shared by its heads)."""
    rows, sel, n_cand = chosen.shape
    kept = torch.ones((n, n_tiles), dtype=torch.bool, device=chosen.device)
    kept[:, t0:t1] = chosen.repeat_interleave(n // rows // sel, 1).reshape(n, n_cand)
    return kept


def combine_torch(m: torch.Tensor, l: torch.Tensor, o: torch.Tensor, chosen: torch.Tensor, t0: int, t1: int,
                  track: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The softmax over the kept tiles (every tile but the candidates ``t0 .. t1-1`` not ``chosen``
    ``[rows, S, M]``) from the tiles' statistics (the flash-decoding combine). Returns float32
    ``[N, G, d]`` and, with ``track``, each tile's share of the softmax ``[N, T, G]``."""
    n, n_t, g = m.shape
    kept = kept_tiles(chosen, n, n_t, t0, t1)[..., None]
    mk = m.masked_fill(~kept, float("-inf"))
    coef = torch.exp(mk - mk.amax(1, keepdim=True))                        # 0 where not kept
    weight = coef * l
    den = weight.sum(1)                                                    # [N, G]
    out = torch.einsum("htg,htgd->hgd", coef, o) / den[..., None]
    return out, (weight / den[:, None] if track else None)


def choose_torch(mass: torch.Tensor, n_take: torch.Tensor, hi: int, ranks: torch.Tensor | None = None) -> torch.Tensor:
    """The rerank's choice: of each selection's candidates (``mass`` ``[rows, S, M]``, larger
    first, ties to the earlier candidate), the first ``min(n_take[row], hi)`` (``n_take``
    ``[rows]``), as ``[rows, S, M]`` bool. A stable sort, as the reference ranks them.
    ``ranks`` (``arange`` of at least ``min(hi, M)``, optional) spares a caller that chooses every
    step building it each time."""
    rows, sel, n_cand = mass.shape
    hi = min(hi, n_cand)
    order = mass.sort(dim=-1, descending=True, stable=True).indices[..., :hi]            # [rows, S, hi]
    ranks = torch.arange(hi, device=mass.device) if ranks is None else ranks[:hi]
    keep = (ranks < n_take[:, None])[:, None].expand(rows, sel, hi)
    return torch.zeros(mass.shape, dtype=torch.bool, device=mass.device).scatter(2, order, keep)


def choose_triton(mass: torch.Tensor, n_take: torch.Tensor, hi: int, out: torch.Tensor,
                  kept: "ChosenList") -> torch.Tensor:
    """:func:`choose_torch` as one Triton kernel (ranks counted, no sort), written into ``out``
    ``[rows, S, M]`` bool (preallocated), and the chosen candidates as a list into ``kept`` (in
    the order of their ranks: what :func:`combine_triton` reads). The same choice bit for bit: it
    compares masses and never computes with them. ``n_take`` ``[rows]`` (any stride)."""
    rows, sel, n_cand = mass.shape
    if not mass.is_contiguous() or not out.is_contiguous() or out.shape != mass.shape or out.dtype != torch.bool:
        raise ValueError("choose_triton needs a contiguous mass and a contiguous bool output of its shape")
    if n_take.shape != (rows,):
        raise ValueError(f"n_take {tuple(n_take.shape)} does not fit {rows} rows")
    kept.check(rows, sel, n_cand)
    _kernels().choose_kernel[(rows * sel, -(-n_cand // CHOOSE_CH))](
        mass, n_take, out, kept.order, kept.count, n_cand, min(hi, n_cand), sel, n_take.stride(0),
        CH=CHOOSE_CH, CI=CHOOSE_CI)
    return out


def candidate_mass_triton(m: torch.Tensor, l: torch.Tensor, ok: torch.Tensor, edge: torch.Tensor, t0: int, t1: int,
                          total: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:func:`candidate_mass_torch` as two Triton kernels (each head's total, then the candidates),
    writing into ``total [N, G]`` and ``out [rows, S, M]`` (preallocated); sums in a fixed order, so
    a row's masses do not depend on how many rows run together."""
    n, n_t, g = m.shape
    rows, sel, n_cand = ok.shape
    _check_stats(m, l)
    k = _kernels()
    k.tile_lse_kernel[(n,)](m, l, total, m.stride(0), m.stride(1), m.stride(2), n_tiles=n_t, G=g, G_PAD=tile_extent(g),
                            CH=min(LSE_CHUNK, tile_extent(n_t)))
    k.candidate_mass_kernel[(rows * sel, -(-n_cand // CHUNK))](
        m, l, total, ok, edge, out, t0, n_cand, m.stride(0), m.stride(1), m.stride(2),
        heads_per_sel=n // rows // sel, G=g, G_PAD=tile_extent(g), CH=CHUNK)
    return out


def combine_triton(m: torch.Tensor, l: torch.Tensor, o: torch.Tensor, chosen: torch.Tensor, kept: "ChosenList",
                   t0: int, t1: int, track: bool, out: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`combine_torch` as one Triton kernel (one program per KV head and query head), writing
    into ``out [N, G, d]`` and, with ``track``, ``weights [N, T, G]`` (preallocated); sums in a fixed
    order, so a row's output does not depend on how many rows run together. ``kept``: ``chosen``
    as a list (:func:`choose_triton` writes both; :meth:`ChosenList.of` makes it from ``chosen``),
    through which the kernel reads only the kept tiles' statistics."""
    n, n_t, g = m.shape
    d = o.shape[-1]
    rows, sel, n_cand = chosen.shape
    _check_stats(m, l)
    if o.stride(-1) != 1 or not out.is_contiguous() or not weights.is_contiguous() or not chosen.is_contiguous():
        raise ValueError("combine_triton needs contiguous outputs and unit strides along d")
    kept.check(rows, sel, n_cand)
    _kernels().combine_kernel[(n, g)](
        m, l, o, chosen, kept.order, kept.count, out, weights, t0, t1, n // rows, n // rows // sel, sel,
        m.stride(0), m.stride(1), m.stride(2), o.stride(0), o.stride(1), o.stride(2),
        n_tiles=n_t, G=g, D=d, D_PAD=tile_extent(d), CH=CHUNK, TRACK=track)
    return out, (weights if track else None)


def place_token_torch(k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor, q_flat: torch.Tensor | None,
                      win_k: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                      queries: torch.Tensor | None, at_cap: torch.Tensor, at_w: torch.Tensor, at_vis: torch.Tensor,
                      at_q: torch.Tensor) -> None:
    """The new token's writes into one layer's buffers (the rows' views): k/v ``[B, Hkv, 1, d]``
    (unrotated key, value), k_rot ``[B*Hkv, d]`` (key rotated at its slot), q_flat ``[B, F]``;
    win_k ``[B, Hkv, cap, d]``, keys/values ``[B, Hkv, W, d]``, visible ``[B, W]``, queries ``[B,
    cap, F]`` written at the flat indices ``at_cap``, ``at_w`` (per row and head), ``at_vis``,
    ``at_q`` (per row). Five indexed writes."""
    d = k.shape[-1]
    win_k.view(-1, d).index_copy_(0, at_cap, k.reshape(-1, d).to(win_k.dtype))
    keys.view(-1, d).index_copy_(0, at_w, k_rot.to(keys.dtype))
    values.view(-1, d).index_copy_(0, at_w, v.reshape(-1, d).to(values.dtype))
    visible.view(-1).index_fill_(0, at_vis, True)
    if queries is not None:
        queries.view(-1, queries.shape[-1]).index_copy_(0, at_q, q_flat.to(queries.dtype))


def place_token_triton(k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor, q_flat: torch.Tensor | None,
                       win_k: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                       queries: torch.Tensor | None, at_cap: torch.Tensor, at_w: torch.Tensor, at_vis: torch.Tensor,
                       at_q: torch.Tensor) -> None:
    """:func:`place_token_torch` as one Triton kernel (one program per row and KV head) instead of
    five launches per layer and step."""
    n_r, hkv, _, d = k.shape
    bufs = [win_k, keys, values, visible] + ([queries] if queries is not None else [])
    if k.stride(-1) != 1 or v.stride(-1) != 1 or not all(t.is_contiguous() for t in bufs):
        raise ValueError("place_token_triton needs contiguous buffers and unit strides along d")
    k_rot = k_rot.contiguous()
    q_flat = q_flat.contiguous() if queries is not None else None
    feats = q_flat.shape[-1] if queries is not None else 0
    _kernels().place_kernel[(n_r * hkv,)](
        k, k_rot, v, q_flat if queries is not None else k_rot, win_k, keys, values, visible,
        queries if queries is not None else win_k, at_cap, at_w, at_vis, at_q,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), hkv, feats,
        D=d, D_PAD=tile_extent(d), F_CH=256, HAS_Q=queries is not None)


def lists_the_choice(kept: ChosenList, chosen: torch.Tensor) -> bool:
    """Whether ``kept`` lists exactly the candidates ``chosen`` flags, each once."""
    if not torch.equal(kept.count.long(), chosen.sum(-1)):
        return False
    n = chosen.shape[-1]
    listed = torch.arange(n, device=chosen.device) < kept.count[..., None]
    marks = torch.zeros(chosen.shape, dtype=torch.long, device=chosen.device)
    marks.scatter_add_(-1, kept.order.long().masked_fill(~listed, 0), listed.long())
    return torch.equal(marks, chosen.long())


def _check_stats(m: torch.Tensor, l: torch.Tensor) -> None:
    if m.stride() != l.stride():
        raise ValueError("the tile statistics m and l must be laid out alike")


def _kernels():
    """The Triton kernels (:mod:`.tile_kernel`, imported on first use)."""
    from . import tile_kernel

    return tile_kernel


def check_triton(graph, strict: bool = False) -> str:
    """"triton" if the kernel gives :func:`tile_stats_torch`'s statistics (within the rounding of
    half-precision products) on random data of ``graph``'s buffer shapes, else "torch" (with a
    warning naming the difference or the error; ``strict``: a RuntimeError instead). Run once per
    decode graph, before any capture."""
    import warnings

    def refuse(why: str) -> str:
        if strict:
            raise RuntimeError(f"decode_kernel='triton': {why}")
        warnings.warn(f"{why}; decoding with PyTorch ops", RuntimeWarning, stacklevel=4)
        return "torch"

    hkv, g, d, tile = graph.hkv, graph.g_heads, graph.d, graph.bsz
    width = graph.n_tiles * tile
    gen = torch.Generator(device=graph.device).manual_seed(0)
    dev, dt = graph.device, graph.dtype
    rows = 2                           # two decode rows: each sequence reads its own visibility
    qs = torch.randn((2, rows * hkv, g, d), generator=gen, device=dev)
    keys = torch.randn((rows * hkv, width, d), generator=gen, device=dev).to(dt)
    values = torch.randn((rows * hkv, width, d), generator=gen, device=dev).to(dt)
    visible = torch.rand((rows, width), generator=gen, device=dev) < 0.5
    visible[0, : graph.w0 // 2] = False   # whole tiles with nothing visible, as unused candidate slots
    scaling = d ** -0.5
    try:
        want = tile_stats_torch(qs, keys, values, visible, graph.first_window_tile, tile, scaling, None, graph._bmm)
        out = tuple(torch.empty_like(x) for x in want[:3])
        got = tile_stats_triton(qs, keys, values, visible, graph.first_window_tile, tile, scaling, out)
    except Exception as exc:  # noqa: BLE001 - any failure of the kernel means the PyTorch path
        return refuse(f"the Triton decode kernel failed ({type(exc).__name__}: {exc})")
    m_ok = torch.equal(torch.isinf(got[0]), torch.isinf(want[0]))
    finite = ~torch.isinf(want[0])
    errs = [float((got[0][finite] - want[0][finite]).abs().max()) if finite.any() else 0.0]
    errs += [float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(got[1:3], want[1:3])]
    if not m_ok or max(errs) > 2e-2:
        return refuse(f"the Triton decode kernel disagrees with PyTorch (max |dm| {errs[0]:.3g}, relative "
                      f"dl {errs[1]:.3g}, do {errs[2]:.3g})")
    # the candidates' masses and the combine, on the PyTorch statistics
    m, l, o = want[:3]
    t0, t1, sel = graph.c0 // tile, graph.first_window_tile, graph.sel_rows
    ok = torch.rand((rows, sel, t1 - t0), generator=gen, device=dev) < 0.8
    edge = ok & (torch.rand(ok.shape, generator=gen, device=dev) < 0.1)
    chosen = ok & (torch.rand(ok.shape, generator=gen, device=dev) < 0.3)
    try:
        mass = candidate_mass_triton(m, l, ok, edge, t0, t1, torch.empty(m[:, 0].shape, device=dev),
                                     torch.empty(ok.shape, device=dev))
        out, share = combine_triton(m, l, o, chosen, ChosenList.of(chosen), t0, t1, True, torch.empty(o[:, 0].shape, device=dev),
                                    torch.empty(m.shape, device=dev))
    except Exception as exc:  # noqa: BLE001
        return refuse(f"the Triton decode kernels failed ({type(exc).__name__}: {exc})")
    want_mass = candidate_mass_torch(m, l, ok, edge, t0, t1)
    want_out, want_share = combine_torch(m, l, o, chosen, t0, t1, True)
    # the values' pass after the rerank: the one pass's o for the kept tiles (the combine reads no other)
    try:
        kept_o = kept_values_triton(qs, keys, values, visible, ChosenList.of(chosen), t1 - t0, graph.first_window_tile, tile,
                                    scaling, t0, t1, torch.zeros_like(o))
    except Exception as exc:  # noqa: BLE001
        return refuse(f"the Triton decode kernels failed ({type(exc).__name__}: {exc})")
    kept = kept_tiles(chosen, o.shape[0], o.shape[1], t0, t1)
    err_o = float((kept_o[kept] - got[2][kept]).norm() / got[2][kept].norm().clamp_min(1e-30))
    if err_o > 1e-4:
        return refuse(f"the Triton values pass disagrees with the one-pass kernel (relative o {err_o:.3g})")
    # the rerank's choice by counted ranks: the stable sort's, exactly (tied masses, edges, unfilled)
    tied = (want_mass * 8).floor().masked_fill(edge, float("inf")).masked_fill(~ok, float("-inf")).contiguous()
    n_take = torch.randint(0, graph.hi + 2, (rows,), generator=gen, device=dev)
    try:
        listed = ChosenList(*tied.shape, dev)
        picked = choose_triton(tied, n_take, graph.hi, torch.empty(tied.shape, dtype=torch.bool, device=dev), listed)
    except Exception as exc:  # noqa: BLE001
        return refuse(f"the Triton decode kernels failed ({type(exc).__name__}: {exc})")
    if not torch.equal(picked, choose_torch(tied, n_take, graph.hi)) or not lists_the_choice(listed, picked):
        return refuse("the Triton rerank choice differs from the stable sort's")
    # the new token's writes as one kernel: the five indexed writes, exactly
    cap, n_q = 4, hkv * g * d
    src = [torch.randn((rows, hkv, 1, d), generator=gen, device=dev).to(dt) for _ in range(2)]
    k_rot = torch.randn((rows * hkv, d), generator=gen, device=dev).to(dt)
    q_flat = torch.randn((rows, n_q), generator=gen, device=dev).to(dt)
    bufs = [torch.zeros((rows, hkv, cap, d), dtype=dt, device=dev), keys.view(rows, hkv, width, d).clone(),
            values.view(rows, hkv, width, d).clone(), visible.clone(), torch.zeros((rows, cap, n_q), dtype=dt, device=dev)]
    slot = torch.arange(rows, device=dev) % cap
    at = (torch.arange(rows * hkv, device=dev).view(rows, hkv) * cap + slot[:, None]).flatten()
    at_w = (torch.arange(rows * hkv, device=dev).view(rows, hkv) * width + graph.w0 + slot[:, None]).flatten()
    idx = (at, at_w, torch.arange(rows, device=dev) * width + graph.w0 + slot, torch.arange(rows, device=dev) * cap + slot)
    want_bufs = [b.clone() for b in bufs]
    try:
        place_token_triton(src[0], k_rot, src[1], q_flat, *bufs, *idx)
    except Exception as exc:  # noqa: BLE001
        return refuse(f"the Triton decode kernels failed ({type(exc).__name__}: {exc})")
    place_token_torch(src[0], k_rot, src[1], q_flat, *want_bufs, *idx)
    if not all(torch.equal(a, b) for a, b in zip(bufs, want_bufs)):
        return refuse("the Triton token writes differ from the indexed writes")
    same_inf = torch.equal(torch.isinf(mass), torch.isinf(want_mass)) and torch.equal(mass[torch.isinf(mass)], want_mass[torch.isinf(want_mass)])
    fin = ~torch.isinf(want_mass)
    errs = [float((mass[fin] - want_mass[fin]).norm() / want_mass[fin].norm().clamp_min(1e-30))]
    errs += [float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in ((out, want_out), (share, want_share))]
    if not same_inf or max(errs) > 1e-4:
        return refuse(f"the Triton decode kernels disagree with PyTorch (relative mass {errs[0]:.3g}, "
                      f"output {errs[1]:.3g}, shares {errs[2]:.3g})")
    return "triton"
