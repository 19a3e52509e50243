"""A batched prefill chunk's picked blocks, written into the buffers its attention reads.

``gather_reference`` is the plain path (any device, any block store): gather from the store, rotate
the keys at their true positions where memory sits there (its rope table), copy into the buffer.
``gather_triton`` does the same in one Triton kernel (a CUDA device, blocks held on it in one
store; the CPU under ``TRITON_INTERPRET=1`` for tests). ``BlockGather`` picks one per session by
the ``prefill_kernel`` option: ``"auto"`` runs both on the first chunk of each shape and keeps the
kernel only if it gives the reference's keys and values.
"""

from __future__ import annotations

import torch

from ..devices import KernelChoice, kernel_agrees, tile_extent
from ..memory.blocks import gather_parts
from .rope import blocks_at_true_positions, rotate, same_rotation

Table = tuple[torch.Tensor, torch.Tensor]


def gather_reference(blocks, flat: torch.Tensor, table: Table | None, n_sink: int,
                     k_out: torch.Tensor, v_out: torch.Tensor) -> None:
    """Blocks ``flat`` ``[Hkv, E*kmax]`` (execution block ``e``'s picks at ``e*kmax ..``) of a block
    store into ``k_out`` / ``v_out`` ``[E, Hkv, kmax*B, d]`` (views of the attention's buffers), keys
    rotated at their true positions by ``table`` (float32 cos and signed sin ``[P, d]``; block ``i``
    starts at ``n_sink + i * B``), or as stored where ``table`` is None."""
    n_e, hkv, rows, d = k_out.shape
    kb, vb = blocks.gather(flat, k_out.device)                        # [Hkv, E*kmax*B, d]
    if table is not None:
        kb = blocks_at_true_positions(kb, flat, *table, n_sink)
    k_out.copy_(kb.view(hkv, n_e, rows, d).transpose(0, 1))
    v_out.copy_(vb.view(hkv, n_e, rows, d).transpose(0, 1))


def gather_triton(store_k: torch.Tensor, store_v: torch.Tensor, flat: torch.Tensor, table: Table | None, n_sink: int,
                  k_out: torch.Tensor, v_out: torch.Tensor) -> None:
    """:func:`gather_reference` from a store's tensors ``[N, Hkv, B, d]`` in one kernel."""
    gather_parts_triton([(store_k, store_v)], flat, table, n_sink, k_out, v_out)


def gather_parts_triton(parts: list[tuple[torch.Tensor, torch.Tensor]], flat: torch.Tensor, table: Table | None,
                        n_sink: int, k_out: torch.Tensor, v_out: torch.Tensor) -> None:
    """Blocks ``flat`` ``[Hkv or 1, E*kmax]`` of one or two stores ``[N_i, Hkv, B, d]`` (ids count the
    first store's blocks, then the second's: :meth:`KVBlocks.device_parts`) into ``k_out`` /
    ``v_out`` ``[E, Hkv, kmax*B, d]``, in one kernel, keys rotated as :func:`gather_reference` does."""
    from . import gather_kernel as kern

    if not 1 <= len(parts) <= 2:
        raise ValueError(f"one or two block stores, got {len(parts)}")
    n_e, hkv, rows, d = k_out.shape
    (store_k, store_v), (k2, v2) = parts[0], parts[-1]
    b = store_k.shape[2]
    kmax = rows // b
    if n_e == 0 or kmax == 0:
        return
    assert store_k.stride(3) == 1 and k2.stride(3) == 1 and k_out.stride(3) == 1 and k_out.stride() == v_out.stride()
    assert store_k.stride() == store_v.stride() and k2.stride() == v2.stride()
    ids = flat.to(device=k_out.device).contiguous()
    cos, sin = table if table is not None else (store_k, store_k)       # unread without rotation
    two = len(parts) == 2
    kern.gather_blocks_kernel[(hkv, n_e * kmax)](
        store_k, store_v, k2, v2, ids, cos, sin, k_out, v_out, n_sink, kmax, store_k.shape[0] if two else 1 << 62,
        store_k.stride(0), store_k.stride(1), store_k.stride(2), k2.stride(0), k2.stride(1), k2.stride(2),
        ids.stride(0) if ids.shape[0] > 1 else 0,
        k_out.stride(0), k_out.stride(1), k_out.stride(2), cos.stride(0),
        B=b, B_PAD=tile_extent(b), D=d, D_PAD=tile_extent(d), ROTATE=table is not None, TWO=two)


def candidate_reads(idx: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]],
                    block_tables: tuple[torch.Tensor, torch.Tensor] | None,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (placed as attention reads them: at their true positions where ``block_tables`` are given,
    else as stored) and values ``[Hkv, m*B, d]`` of candidate blocks ``idx`` ``[rows, m]`` from
    device-resident block stores (:func:`~actqkv_llm.memory.blocks.gather_parts`): what a new
    scoring's ``_placed_keys`` and the row's value read give, in one read of each store (~40 fewer
    device calls per layer than the two reads through ``KVBlocks.gather``). ``block_tables``: the
    rotary cos and signed sin of every block's tokens ``[n, B, d]`` (``DecodeGraph.block_tables``),
    the same entries :func:`~actqkv_llm.attention.rope.blocks_at_true_positions` indexes."""
    k, v = gather_parts(idx, parts)
    if block_tables is not None:
        cos, sin = (t[idx].view(idx.shape[0], -1, t.shape[-1]) for t in block_tables)
        k = rotate(k, cos, sin).to(dtype)
    return k, v


def gathers_agree(pairs) -> tuple[bool, str]:
    """``(keys, values)`` a kernel gathered against the reference's, for each ``(got, want)`` of
    ``pairs``: the values exactly, the keys within one rounding of the same float32 rotation (a fused
    multiply-add or not); and the largest key differences, for a warning."""
    same, diffs = True, []
    for (k_got, v_got), (k_want, v_want) in pairs:
        same = same and torch.equal(v_got, v_want) and same_rotation(k_got, k_want)
        diffs.append(f"{float((k_got.float() - k_want.float()).abs().max()):.3g}")
    return same, "largest key difference " + ", ".join(diffs)


class BlockGather(KernelChoice):
    """Which path fills a batched chunk's block buffers (``prefill_kernel``): ``"torch"`` the reference;
    ``"triton"`` the kernel wherever the blocks sit on the device in one store (an error where Triton
    cannot run); ``"auto"`` the kernel where it runs and, on the first chunk of each shape, gives the
    reference's result (the check computes both; a mismatch warns and keeps the reference)."""

    def __call__(self, blocks, flat: torch.Tensor, table: Table | None, n_sink: int,
                 k_out: torch.Tensor, v_out: torch.Tensor) -> None:
        parts = None if self.choice == "torch" else blocks.device_parts(k_out.device)
        if parts is None or len(parts) != 1:
            return gather_reference(blocks, flat, table, n_sink, k_out, v_out)
        store_k, store_v = parts[0]
        # (device, dtype, d, B, rotated); a shape's first chunk is the reference's (the check reads it)
        key = (str(k_out.device), k_out.dtype, k_out.shape[-1], store_k.shape[2], table is not None)
        first = key not in self._verdicts
        if first:
            gather_reference(blocks, flat, table, n_sink, k_out, v_out)
        use = self._use_kernel(key, k_out.device,
                               lambda: self._agrees(store_k, store_v, flat, table, n_sink, k_out, v_out))
        if first:
            return
        if use:
            gather_triton(store_k, store_v, flat, table, n_sink, k_out, v_out)
        else:
            gather_reference(blocks, flat, table, n_sink, k_out, v_out)

    @staticmethod
    def _agrees(store_k, store_v, flat, table, n_sink, k_out, v_out) -> bool:
        """The kernel against the reference's result already in ``k_out`` / ``v_out``."""
        k_got, v_got = torch.empty_like(k_out), torch.empty_like(v_out)
        return kernel_agrees("prefill_kernel", "block gather", "gathering blocks",
                             lambda: gather_triton(store_k, store_v, flat, table, n_sink, k_got, v_got),
                             lambda _: gathers_agree([((k_got, v_got), (k_out, v_out))]))
