"""Probe queries: one vector per KV head that stands for an execution block's queries.

ActQKV's Activation Bias: keep running per-feature mean ``m`` and variance ``v`` of a layer's
queries; token t's bias is ``b_t = mean_j (q_tj - m_j)^2 / (v_j + mean(v)/100)`` (a diagonal
Mahalanobis z-score). The probe is ``sum_t b_t q_t / sum_t b_t``, so "anchor" tokens whose
activations stand out dominate it. InfLLM's probe is the plain mean.
"""

from __future__ import annotations

import torch

from ..devices import KernelChoice, device_tensor, kernel_agrees, tile_extent

# ActQKV regularises the variance by 1/100 of its mean so quiet features cannot blow up.
VARIANCE_FLOOR_RATIO = 0.01
# tokens per program of the bias kernels
BIAS_TOKENS = 32


class ActivationStats:
    """Running per-feature mean and variance of one layer's queries (Chan et al. batched update).

    One instance per layer and per document: the published code shared one set of statistics
    across all layers and never reset it; here they are explicit state, forked per question.
    """

    def __init__(self, n_features: int, device: torch.device):
        self.count = 0
        self.mean = torch.zeros(n_features, dtype=torch.float32, device=device)
        self.m2 = torch.zeros(n_features, dtype=torch.float32, device=device)

    def update(self, q: torch.Tensor) -> None:
        """Add ``[T, F]`` query features."""
        q = q.float()
        n_b = q.shape[0]
        total = self.count + n_b
        if n_b == 1:  # one decoded token: Welford's single-sample update
            delta = q[0] - self.mean
            self.mean = self.mean + delta / total
            self.m2 = torch.addcmul(self.m2, delta, q[0] - self.mean)
        else:
            mean_b = q.mean(0)
            m2_b = ((q - mean_b) ** 2).sum(0)
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (n_b / total)
            self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / total)
        self.count = total

    def update_blocks(self, q: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``[T, F]`` query features that arrive as consecutive blocks of ``sizes`` tokens.

        Returns the mean and variance ``[E, F]`` as they stand after each block (what
        :meth:`update` block by block would leave), in one pass: sums of deviations from a shift
        near the mean, accumulated over the blocks.
        """
        q = q.float()
        n_e, size = len(sizes), sizes[0]
        shift = self.mean if self.count else q[:size].mean(0)
        x = q - shift
        pad = n_e * size - q.shape[0]
        if pad:
            x = torch.cat([x, x.new_zeros((pad, x.shape[1]))])
        x = x.view(n_e, size, -1)  # padding rows are zeros: they add nothing to the sums
        return self.advance(x.sum(1), (x * x).sum(1), shift, sizes)

    def advance(self, s1: torch.Tensor, s2: torch.Tensor, shift: torch.Tensor,
                sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update_blocks` from each block's sums of ``x - shift`` and ``(x - shift)^2``
        (``[E, F]``): the mean and variance after each block, and the statistics moved past them."""
        counts = device_tensor(sizes, s1.device, torch.float32).cumsum(0)[:, None] + self.count
        off = self.mean - shift
        s1 = (s1.cumsum(0) + self.count * off)
        s2 = (s2.cumsum(0) + self.m2 + self.count * off * off)
        means = shift + s1 / counts
        m2 = (s2 - s1 * s1 / counts).clamp_min(0)
        self.count += sum(sizes)
        self.mean, self.m2 = means[-1], m2[-1]
        return means, m2 / counts

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / max(self.count, 1)

    def bias(self, q: torch.Tensor) -> torch.Tensor:
        """Activation bias ``[T]`` of ``[T, F]`` queries against the running statistics."""
        return activation_bias(q, self.mean, self.var)

    def clone(self) -> "ActivationStats":
        other = ActivationStats.__new__(ActivationStats)
        other.count, other.mean, other.m2 = self.count, self.mean, self.m2  # replaced, never mutated
        return other


def activation_bias(q: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """ActQKV's bias of queries ``[..., T, F]`` against statistics ``[..., F]``: ``[..., T]``."""
    floor = var.mean(-1, keepdim=True) * VARIANCE_FLOOR_RATIO + 1e-12
    dev = (q.float() - mean[..., None, :]) ** 2 / (var + floor)[..., None, :]
    return dev.mean(-1)


def chunk_bias_torch(q: torch.Tensor, stats: ActivationStats, sizes: tuple[int, ...]) -> torch.Tensor:
    """Every execution block's activation bias at once (the statistics moved past each block in
    turn, as the loop has them): q ``[H, T, d]`` -> ``[E, S]``, zero on the last block's padding."""
    h, t, d = q.shape
    n_e, size = len(sizes), sizes[0]
    feats = q.permute(1, 0, 2).reshape(t, h * d).float()
    means, var = stats.update_blocks(feats, sizes)
    pad = n_e * size - t
    if pad:
        feats = torch.cat([feats, feats.new_zeros((pad, feats.shape[1]))])
    valid = torch.arange(size, device=q.device)[None] < device_tensor(sizes, q.device)[:, None]
    return activation_bias(feats.view(n_e, size, -1), means, var) * valid


def chunk_bias_triton(q: torch.Tensor, stats: ActivationStats, sizes: tuple[int, ...]) -> torch.Tensor:
    """:func:`chunk_bias_torch` in two Triton kernels (:mod:`.probe_kernel`) that read ``q`` as it is,
    and PyTorch for the running sums across blocks (``[E, H*d]``)."""
    from . import probe_kernel as kern

    h, t, d = q.shape
    n_e, size = len(sizes), sizes[0]
    if q.stride(2) != 1:
        q = q.contiguous()
    f32 = dict(dtype=torch.float32, device=q.device)
    shift = (stats.mean if stats.count else q[:, :size].float().mean(1).reshape(h * d)).contiguous()
    s1, s2 = torch.empty((n_e, h * d), **f32), torch.empty((n_e, h * d), **f32)
    tiles = dict(D=d, D_PAD=tile_extent(d), BT=BIAS_TOKENS)
    kern.block_moments_kernel[(n_e, h)](q, shift, s1, s2, t, size, q.stride(0), q.stride(1), s1.stride(0), **tiles)
    means, var = stats.advance(s1, s2, shift, sizes)
    inv = (var + var.mean(-1, keepdim=True) * VARIANCE_FLOOR_RATIO + 1e-12).reciprocal_()
    means = means.contiguous()
    out = torch.empty((n_e, size), **f32)
    kern.token_bias_kernel[(n_e, -(-size // BIAS_TOKENS))](
        q, means, inv, out, t, size, h, q.stride(0), q.stride(1), means.stride(0), out.stride(0), **tiles)
    return out


class ProbeKernel(KernelChoice):
    """Which computation gives a batched chunk's activation bias (``prefill_kernel``): ``"torch"``
    :func:`chunk_bias_torch`; ``"triton"`` :func:`chunk_bias_triton` (an error where it cannot run);
    ``"auto"`` the kernels where they run and, on the first chunk of each device, dtype and shape,
    give the reference's bias and statistics (the check runs both; the reference's result serves
    that chunk; a disagreement warns and keeps the reference)."""

    def __call__(self, q: torch.Tensor, stats: ActivationStats, sizes: tuple[int, ...]) -> torch.Tensor:
        if self.choice == "torch":
            return chunk_bias_torch(q, stats, sizes)
        checked = []   # the reference's bias, where "auto"'s check ran on this chunk

        def check() -> bool:
            before = stats.clone()
            checked.append(chunk_bias_torch(q, stats, sizes))
            return kernel_agrees("prefill_kernel", "activation bias", "weighting probe tokens",
                                 lambda: (chunk_bias_triton(q, before, sizes), before),
                                 lambda got: _same_bias(got, checked[0], stats))

        use = self._use_kernel((str(q.device), q.dtype, q.shape[0], q.shape[2]), q.device, check)
        if checked:
            return checked[0]
        return chunk_bias_triton(q, stats, sizes) if use else chunk_bias_torch(q, stats, sizes)


def _same_bias(got: tuple[torch.Tensor, ActivationStats], want: torch.Tensor,
               stats: ActivationStats) -> tuple[bool, str]:
    """The kernels' bias and statistics against the reference's (float32 sums in another order)."""
    bias, moved = got
    close = (torch.allclose(bias, want, rtol=1e-3, atol=1e-5) and moved.count == stats.count
             and torch.allclose(moved.mean, stats.mean, rtol=1e-4, atol=1e-5)
             and torch.allclose(moved.m2, stats.m2, rtol=1e-3, atol=1e-5 * max(1, stats.count)))
    return close, f"largest bias difference {float((bias - want).abs().max()):.3g}"


def _group(probe: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[H, d] query-head probe -> [Hkv, d] by averaging each KV head's query group."""
    h, d = probe.shape
    return probe.view(kv_heads, h // kv_heads, d).mean(1)


def mean_probe(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """InfLLM's probe: the mean of the block's queries. q: ``[H, T, d]`` -> ``[Hkv, d]``."""
    return _group(q.float().mean(1), kv_heads)


def activation_probe(q: torch.Tensor, kv_heads: int, stats: ActivationStats) -> torch.Tensor:
    """ActQKV's probe: queries weighted by their activation bias. q: ``[H, T, d]`` -> ``[Hkv, d]``.

    ``stats`` must already include this block's queries (so one token is not its own outlier).
    """
    return _group(weighted_mean(q, token_weights(q, stats)), kv_heads)


def weighted_mean(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_t w_t q_t`` per query head: ``[H, T, d]`` and ``[T]`` -> ``[H, d]`` (float32)."""
    return torch.einsum("t,htd->hd", w, q.float())


def token_weights(q: torch.Tensor, stats: ActivationStats | None) -> torch.Tensor:
    """How much each query token's vote counts: its share of the activation bias (ActQKV's anchor
    tokens dominate), or uniform without statistics. q ``[H, T, d]`` -> ``[T]`` summing to 1."""
    h, t, d = q.shape
    if stats is None:
        return torch.full((t,), 1.0 / t, device=q.device)
    b = stats.bias(q.permute(1, 0, 2).reshape(t, h * d))
    return b / b.sum().clamp_min(1e-12)
