"""Host values onto the compute device without making the host wait.

``torch.tensor(values, device="cuda")`` copies from pageable host memory, which synchronises the
stream: the host waits for every kernel queued so far before it can queue the next one, and the GPU
then idles while Python catches up. A batched prefill chunk needed seven such small tensors per
layer (1,568 waits for a 32K document on the 8B shape, 1.15 s of its 3.3 s; docs/benchmarks.md).
Staging the values in pinned memory and copying asynchronously keeps the queue full (the caching
host allocator keeps the staging buffer alive until the copy has run).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Sequence

import torch


def device_tensor(values: Sequence[int] | Sequence[float], device: torch.device,
                  dtype: torch.dtype = torch.long) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype)`` on ``device``; on CUDA staged in pinned memory and
    copied without synchronising (the same values, the same result)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def staged(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA staged in pinned memory and copied without synchronising
    (PyTorch's pinned allocator keeps the staging buffer until the copy is done)."""
    device = torch.device(device)
    if device.type != "cuda" or host.device.type != "cpu":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@functools.cache
def half_products_into_float32(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch multiplies half-precision matrices into float32 on ``device``
    (``torch.bmm(..., out_dtype=)``: CUDA, torch >= 2.9). A property of the installed build, asked
    once per device and dtype (never inside a CUDA graph capture: callers ask before capturing)."""
    if device.type != "cuda":
        return False
    x = torch.zeros((1, 1, 1), dtype=dtype, device=device)
    try:
        return torch.bmm(x, x, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def tile_extent(x: int, least: int = 16) -> int:
    """A Triton kernel block's extent for ``x`` items: the next power of two, at least ``least``
    (16: ``tl.dot``'s smallest)."""
    return max(least, 1 << max(0, (x - 1).bit_length()))


def triton_verdict(choice: str, device: torch.device, option: str) -> bool | None:
    """What a kernel option (``"auto"``, ``"triton"``, ``"torch"``) decides on ``device`` before any
    check: False where the PyTorch path runs (``"torch"``, or ``"auto"`` where Triton cannot run),
    True for an explicit ``"triton"``, None where ``"auto"`` must check the kernel against PyTorch
    first. An explicit ``"triton"`` that cannot run raises (``option`` names it)."""
    if choice == "torch":
        return False
    if not triton_available(device):
        if choice == "triton":
            raise RuntimeError(f"{option}='triton' needs Triton and a CUDA device, got {device}")
        return False
    return True if choice == "triton" else None


class KernelChoice:
    """What a kernel option (``prefill_kernel``: ``"auto"``, ``"triton"``, ``"torch"``) decided, once
    per key (device, dtype, shape ...), for a chooser of a Triton kernel or its PyTorch reference."""

    option = "prefill_kernel"

    def __init__(self, choice: str = "auto"):
        self.choice = choice
        self._verdicts: dict[tuple, bool] = {}   # key -> use the kernel

    def adopt(self, other: "KernelChoice") -> None:
        """Take ``other``'s verdicts as this one's own (sessions whose questions were read as one
        batch: the rows' rotations ran once, through the first row's chooser; each row's later calls
        then choose as they would had it read its question alone)."""
        self._verdicts.update(other._verdicts)

    def _use_kernel(self, key: tuple, device: torch.device, check: Callable[[], bool]) -> bool:
        """The verdict for ``key``: on its first ask :func:`triton_verdict`'s, or where ``"auto"`` must
        check, ``check()``'s (run that once; :func:`kernel_agrees` is its usual body)."""
        if key not in self._verdicts:
            verdict = triton_verdict(self.choice, device, self.option)
            self._verdicts[key] = check() if verdict is None else verdict
        return self._verdicts[key]


def kernel_agrees(option: str, what: str, fallback: str, run: Callable[[], Any],
                  compare: Callable[[Any], tuple[bool, str]]) -> bool:
    """``"auto"``'s check of a Triton kernel against its PyTorch reference: ``run()`` the kernel (a
    failure to compile or launch warns and returns False), then ``compare(result)`` -> ``(agrees,
    what differs)``; a disagreement warns naming the difference. ``option`` names the setting,
    ``what`` the kernel, ``fallback`` what PyTorch does instead (the warnings' words)."""
    try:
        got = run()
    except Exception as err:  # a Triton that cannot compile here: the reference serves
        warnings.warn(f"{option}='auto': the Triton {what} failed ({type(err).__name__}: {err}); "
                      f"{fallback} with PyTorch ops", RuntimeWarning, stacklevel=3)
        return False
    agrees, detail = compare(got)
    if not agrees:
        warnings.warn(f"{option}='auto': the Triton {what} disagrees with PyTorch on this device "
                      f"({detail}); {fallback} with PyTorch ops", RuntimeWarning, stacklevel=3)
    return agrees


def triton_available(device: torch.device) -> bool:
    """Whether Triton kernels can run for tensors on ``device`` (a CUDA device and Triton installed;
    ``TRITON_INTERPRET=1`` runs them on the CPU, for tests)."""
    import os

    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def free_device_bytes(device: torch.device) -> int:
    """Bytes of ``device`` memory a new allocation can use now: what the driver has free plus what
    PyTorch's caching allocator holds reserved but unallocated (freed tensors' blocks it keeps for
    reuse). The driver's figure alone misses the latter: after a 32K prefill on the 8B shape it let
    ``answer_many`` take 7 rows for 8 questions in a process's first batch and 8 in the next (a
    recapture and a 64-step tail for the eighth; H100, thirty-second session, docs/benchmarks.md)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
