"""Full KV blocks of one layer held as 8-bit integers (``host_kv_dtype="int8"``, for offloaded
blocks): half the host memory of bf16, so the offloaded KV of a 1M-token document of the
Llama-3.1-8B shape (128 GiB in bf16) fits a host of 128 GiB.

Symmetric, absolute maximum to 127, in groups that follow the tensors' structure (KIVI, arXiv
2402.02750): a key's channels differ in scale (a few outlier channels), so keys take one scale per
block, KV head and channel; values do not, so they take one per block, KV head and token. Blocks are
quantized where they are made (the compute device) before they travel, and travel back as int8
with their scales, dequantized to the model's dtype where they are read.
"""

from __future__ import annotations

import torch

from ..devices import staged
from .blocks import flatten_blocks

INT8_MAX = 127
# Which axis of a [n, Hkv, B, d] block tensor one scale spans: keys over a block's tokens (one scale
# per channel), values over a token's channels (one scale per token).
KEY_SPAN, VALUE_SPAN = 2, 3


def quantize(x: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as int8 and float32 scales, one scale per group along axis ``span`` (kept, size 1):
    ``x ~= q * scale``, each element within half a scale step."""
    amax = x.abs().amax(dim=span, keepdim=True).float()
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))   # an all-zero group: any scale
    q = torch.round(x.float() / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def int8_bytes_per_token(kv_heads: int, head_dim: int, block_size: int) -> float:
    """Host bytes one token's keys and values of one layer take in an :class:`Int8Blocks` store: a
    byte per element, plus the keys' per-channel scales shared by a block's tokens and the values'
    per-token scale (float32)."""
    return kv_heads * (2 * head_dim + 4 * head_dim / block_size + 4)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


class Int8Blocks:
    """Blocks held as int8 with their scales in growing tensors on a storage device (the host);
    the same reads as :class:`~actqkv_llm.memory.blocks.GrowableBlocks` (units, parts, gathers),
    dequantized to ``dtype``."""

    def __init__(self, kv_heads: int, block_size: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", capacity: int = 8):
        self.shape = (kv_heads, block_size, head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.n_blocks = 0
        # keys' and values' (int8, scales)
        self._parts = [self._empty(capacity, KEY_SPAN), self._empty(capacity, VALUE_SPAN)]
        # bytes of one block's keys and values once read (what a chunk of ``read_part`` holds)
        self.block_bytes = 2 * kv_heads * block_size * head_dim * torch.empty((), dtype=dtype).element_size()

    def _empty(self, capacity: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        full = (capacity, *self.shape)
        scale = tuple(1 if i == span else s for i, s in enumerate(full))
        return (torch.empty(full, dtype=torch.int8, device=self.device),
                torch.empty(scale, dtype=torch.float32, device=self.device))

    @property
    def capacity(self) -> int:
        return self._parts[0][0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held for the blocks stored so far (int8 values and float32 scales)."""
        return sum(t[: self.n_blocks].nbytes for part in self._parts for t in part)

    def reserve(self, n: int) -> None:
        """Room for ``n`` blocks in all, allocated now (see ``GrowableBlocks.reserve``)."""
        if n > self.capacity:
            self._grow(n)

    def _grow(self, capacity: int) -> None:
        for i, span in enumerate((KEY_SPAN, VALUE_SPAN)):
            new = self._empty(capacity, span)
            for old, fresh in zip(self._parts[i], new):
                fresh[: self.n_blocks] = old[: self.n_blocks]
            self._parts[i] = new

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append blocks given as ``[n, Hkv, B, d]`` (quantized where they are, then moved)."""
        n = k.shape[0]
        if self.n_blocks + n > self.capacity:
            self._grow(max(2 * self.capacity, self.n_blocks + n))
        at = slice(self.n_blocks, self.n_blocks + n)
        for (q_store, s_store), x, span in zip(self._parts, (k, v), (KEY_SPAN, VALUE_SPAN)):
            q, scale = quantize(x, span)
            q_store[at] = q.to(self.device)
            s_store[at] = scale.to(self.device)
        self.n_blocks += n

    def _read(self, which: int, index, device: torch.device | None = None) -> torch.Tensor:
        """Keys (0) or values (1) at ``index``, dequantized on ``device`` (default: the store's): the
        int8 values and their scales travel, half the bytes of bf16."""
        q, scale = self._parts[which]
        q, scale = q[index], scale[index]
        if device is not None:
            q, scale = staged(q, device), staged(scale, device)
        return dequantize(q, scale, self.dtype)

    def read_units(self, blocks: torch.Tensor, heads: torch.Tensor, keys: bool = True, values: bool = True,
                   device: torch.device | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One KV head of each of some blocks: ``[u, B, d]`` keys and values (None where not asked),
        on ``device`` (default: the store's)."""
        index = (blocks, heads)
        return (self._read(0, index, device) if keys else None), (self._read(1, index, device) if values else None)

    def read_part(self, a: int, b: int, which: int) -> torch.Tensor:
        """Keys (``which=0``) or values (``1``) of blocks ``a..b-1`` as ``[m, Hkv, B, d]`` on the host."""
        return self._read(which, slice(a, min(b, self.n_blocks))).to("cpu")

    def device_parts(self, device: torch.device) -> None:
        """None: blocks are dequantized when read, never handed out in place."""

    def gather(self, idx: torch.Tensor, device: torch.device, keys: bool = True,
               values: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Blocks ``idx`` (``[n]``, or ``[Hkv, n]`` for per-head selection) as ``[Hkv, n*B, d]``."""
        idx = idx.to(self.device)
        hkv = self.shape[0]
        out = []
        for which, asked in ((0, keys), (1, values)):
            if not asked:
                out.append(None)
            elif idx.dim() == 2:
                n = idx.shape[1]
                got = self._read(which, (idx, torch.arange(hkv, device=self.device)[:, None]), device)
                out.append(got.view(hkv, n * got.shape[2], got.shape[3]))          # [Hkv, n, B, d] -> [Hkv, n*B, d]
            else:
                out.append(flatten_blocks(self._read(which, idx, device)))
        return out[0], out[1]
