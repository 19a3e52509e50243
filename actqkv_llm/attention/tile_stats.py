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
"""

from __future__ import annotations

from typing import Callable

import torch

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


def _per_head(visible: torch.Tensor, n: int) -> torch.Tensor:
    """``[W]`` or ``[R, W]`` visibility -> ``[N, 1, W]`` (each sequence's mask for its KV heads)."""
    rows = visible.reshape(-1, visible.shape[-1])
    if n % rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} visibility rows for {n} KV heads")
    return rows.repeat_interleave(n // rows.shape[0], 0)[:, None]


def tile_stats_triton(qs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
                      first_window_tile: int, tile: int, scaling: float, out: tuple[torch.Tensor, ...]):
    """:func:`tile_stats_torch` (without a softcap) as one Triton kernel, one program per KV head
    (of every sequence) and tile, writing into ``out = (m, l, o)`` (preallocated: the step runs inside a CUDA graph).
    Products in the keys' dtype with float32 accumulation, like the reference's bf16 products."""
    import triton

    n, width, d = keys.shape
    g = qs.shape[2]
    m, l, o = out
    rows = visible.reshape(-1, width)
    if m.stride() != l.stride() or o.stride(-1) != 1 or keys.stride(-1) != 1 or values.stride(-1) != 1 \
            or qs.stride(-1) != 1 or rows.stride(-1) != 1:
        raise ValueError("tile_stats_triton needs m and l laid out alike and unit strides along d")
    if n % rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} visibility rows for {n} KV heads")
    n_t = width // tile
    _kernel()[(n, n_t)](
        qs, keys, values, rows, m, l, o, scaling, first_window_tile, n // rows.shape[0], rows.stride(0),
        qs.stride(0), qs.stride(1), qs.stride(2), keys.stride(0), keys.stride(1),
        values.stride(0), values.stride(1), m.stride(0), m.stride(1), m.stride(2), o.stride(0), o.stride(1), o.stride(2),
        G=g, G_PAD=max(16, triton.next_power_of_2(g)), D=d, D_PAD=max(16, triton.next_power_of_2(d)), TILE=tile, T_PAD=max(16, triton.next_power_of_2(tile)),
        IEEE=keys.dtype == torch.float32,
    )
    return m, l, o, None


def _kernel():
    """The Triton kernel (:mod:`.tile_kernel`, imported on first use so that Triton loads only where
    it runs; with ``TRITON_INTERPRET=1`` set before Triton is imported it runs on the CPU)."""
    from . import tile_kernel

    return tile_kernel.tile_stats_kernel


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run for tensors on ``device`` (a CUDA device and Triton installed;
    ``TRITON_INTERPRET=1`` runs it on the CPU, for tests)."""
    import os

    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


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
    return "triton"
